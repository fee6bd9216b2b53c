"""The model description as types: `ModelConfig` (a dense Llama / Qwen3 decoder, its
weights' source and its target) and the frozen records it holds. `to_dict` writes our
model.yaml schema; `load_config` (models/config.py) reads it back, checked by
models/validate.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tilert_compiler.ir.target import Target
from tilert_compiler.models.quant import Quantization

FAMILIES = ("llama", "qwen3")
DTYPES = ("bf16",)


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3 frequency scaling: long wavelengths divided by `factor`, short ones kept,
    a smooth ramp between `low_freq_factor` and `high_freq_factor`."""

    kind: str  # only "llama3"
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position: int


@dataclass(frozen=True)
class WeightsSpec:
    """Where weights come from: the seeded generator (`seed`), a folder of *.safetensors
    (`path`, absolute), or nowhere (`none`: what was found instead, e.g. "only
    pytorch_model.bin"). Exactly one is set. Random weights come only when asked for (the
    bundled descriptions ask; elsewhere `--random-weights`), so a folder without loadable
    weights compiles (the kernel needs only the config) but does not run."""

    seed: int | None = None
    path: str | None = None
    none: str | None = None

    @property
    def bound(self) -> bool:
        return self.seed is not None or self.path is not None


@dataclass(frozen=True)
class ModelConfig:
    """A dense decoder (Llama / Qwen3 shape) plus how to build and where to run it."""

    name: str
    family: str  # "llama" | "qwen3"
    hidden: int
    layers: int
    heads: int  # query heads
    kv_heads: int
    head_dim: int
    intermediate: int  # MLP width
    vocab: int
    tie_embeddings: bool  # lm_head shares embed_tokens
    rope_theta: float
    rope_scaling: RopeScaling | None
    norm_eps: float
    qk_norm: bool  # per-head RMSNorm on q and k before RoPE (qwen3)
    dtype: str = "bf16"
    weights: WeightsSpec = WeightsSpec(none="no weights named")
    max_seq_len: int = 1024  # KV-cache capacity in tokens
    target: Target = Target()
    quantization: Quantization | None = None  # FP8 weights (models/quant.py); None: as dtype

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        """Our yaml schema, plain types only; `load_config(cfg.to_dict()) == cfg`."""
        s = self.rope_scaling
        scaling = None
        if s is not None:
            scaling = {
                "type": s.kind,
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position": s.original_max_position,
            }
        w = self.weights
        q = self.quantization
        quant = {}
        if q is not None:  # written only when set: bf16 descriptions read as before
            quant["quantization"] = {
                "method": q.method,
                "format": q.fmt,
                "block": list(q.block) if q.block is not None else None,
                "ignore": list(q.ignore),
                "source": q.source,
            }
        return {
            "name": self.name,
            "family": self.family,
            "hidden": self.hidden,
            "layers": self.layers,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "intermediate": self.intermediate,
            "vocab": self.vocab,
            "tie_embeddings": self.tie_embeddings,
            "rope": {"theta": self.rope_theta, "scaling": scaling},
            "norm_eps": self.norm_eps,
            "qk_norm": self.qk_norm,
            "dtype": self.dtype,
            "weights": (
                {"random": w.seed}
                if w.seed is not None
                else {"path": w.path}
                if w.path is not None
                else {"none": w.none}
            ),
            "max_seq_len": self.max_seq_len,
            "target": dataclasses.asdict(self.target),
        } | quant
