"""Model descriptions (model.yaml, Hugging Face configs, bundled models), their weights, and
the transformers reference that every numerical test compares against."""

from tilert_compiler.models.config import bundled_names, describe, load_config
from tilert_compiler.models.schema import ModelConfig, RopeScaling, WeightsSpec
from tilert_compiler.models.text import ConfigError
from tilert_compiler.models.weights import (
    hf_weight_names,
    load_weights,
    num_params,
    random_weights,
)

# reference.py imports transformers (seconds to import); it stays an explicit import:
# `from tilert_compiler.models.reference import hf_model, reference_logits`.

__all__ = [
    "ConfigError",
    "ModelConfig",
    "RopeScaling",
    "WeightsSpec",
    "bundled_names",
    "describe",
    "hf_weight_names",
    "load_config",
    "load_weights",
    "num_params",
    "random_weights",
]
