"""Hugging Face configs: a LlamaConfig / Qwen3Config config.json (or a dict of one) in our
model.yaml schema, its weights the *.safetensors beside it. Features the compiler does not
implement (biases, sliding windows, other activations or RoPE types) are refused here, each as
one `ConfigError` line naming the HF key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tilert_compiler.models.schema import FAMILIES
from tilert_compiler.models.text import ConfigError, show_value
from tilert_compiler.models.weights import found_weights

# Our field -> the HF config.json key it came from, so errors name what the user wrote.
HF_NAMES = {
    "hidden": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "intermediate": "intermediate_size",
    "vocab": "vocab_size",
    "tie_embeddings": "tie_word_embeddings",
    "norm_eps": "rms_norm_eps",
    "max_seq_len": "max_position_embeddings",
    "rope.theta": "rope_theta",
}
_HF_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3"}
# Defaults of transformers' LlamaConfig / Qwen3Config for keys a config.json may omit.
_HF_DEFAULTS = {
    "llama": {"rms_norm_eps": 1e-6, "max_position_embeddings": 2048},
    "qwen3": {"rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "head_dim": 128},
}
_HF_MAX_SEQ_LEN = 4096  # KV cache sized for this unless overridden; HF max positions are huge
_ROPE_THETA_DEFAULT = 10000.0  # transformers' RotaryEmbeddingConfigMixin.default_theta


def looks_like_hf(data: dict[str, Any]) -> bool:
    return "model_type" in data or "hidden_size" in data


def from_hf(hf: dict[str, Any], origin: str, folder: Path | None) -> dict[str, Any]:
    """Translate a LlamaConfig / Qwen3Config dict (either rope form) into our schema,
    rejecting features the compiler does not implement."""

    def fail(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{origin}: field '{key}' {msg}")

    family = hf.get("model_type")
    if family is None:
        archs = hf.get("architectures") or []
        archs = archs if isinstance(archs, list) else [archs]
        family = next(
            (_HF_ARCHITECTURES[a] for a in archs if isinstance(a, str) and a in _HF_ARCHITECTURES),
            None,
        )
    if family not in FAMILIES:
        raise fail("model_type", f"must be one of {', '.join(FAMILIES)} (got {show_value(family)})")
    for key in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if hf.get(key):
            raise fail(key, f"must be false: not supported (got {show_value(hf[key])})")
    if hf.get("hidden_act", "silu") != "silu":
        raise fail("hidden_act", f"must be 'silu' (got {show_value(hf['hidden_act'])})")
    layer_types = hf.get("layer_types") or []
    if not isinstance(layer_types, list):
        raise fail("layer_types", f"must be a list (got {show_value(layer_types)})")
    if any(t != "full_attention" for t in layer_types):
        raise fail("layer_types", "must all be 'full_attention': sliding windows are not supported")

    def get(key: str) -> Any:
        if key in hf and hf[key] is not None:
            return hf[key]
        if key in _HF_DEFAULTS[family]:
            return _HF_DEFAULTS[family][key]
        raise fail(key, "is missing")

    hidden, heads = get("hidden_size"), get("num_attention_heads")
    kv_heads = hf.get("num_key_value_heads") or heads
    head_dim = hf.get("head_dim") or _HF_DEFAULTS[family].get("head_dim")
    if head_dim is None and isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        head_dim = hidden // heads  # LlamaConfig's default
    max_pos = get("max_position_embeddings")
    weights: dict[str, Any] = {"none": f"the {origin} names no weights"}
    if folder is not None:
        instead = found_weights(folder.resolve())
        weights = {"none": instead} if instead else {"path": str(folder.resolve())}
    return {
        "name": _hf_name(hf, folder, family),
        "family": family,
        "hidden": hidden,
        "layers": get("num_hidden_layers"),
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "intermediate": get("intermediate_size"),
        "vocab": get("vocab_size"),
        "tie_embeddings": hf.get("tie_word_embeddings", False),  # both config classes: False
        "rope": _hf_rope(hf, max_pos, fail),
        "norm_eps": get("rms_norm_eps"),
        "qk_norm": family == "qwen3",
        "weights": weights,
        "max_seq_len": min(max_pos, _HF_MAX_SEQ_LEN) if isinstance(max_pos, int) else max_pos,
    }


def _hf_name(hf: dict[str, Any], folder: Path | None, family: str) -> str:
    # hub snapshots live in hash-named folders; `_name_or_path` holds the repo id when saved
    saved = hf.get("_name_or_path")
    if isinstance(saved, str) and saved.strip("/"):
        return _safe_name(saved.rstrip("/").rsplit("/", 1)[-1])
    return _safe_name(folder.name) if folder is not None else family


def _safe_name(name: str) -> str:
    """A folder or repo name as a model name (NAME_PATTERN): other characters become '-'."""
    name = re.sub(r"[^A-Za-z0-9._+-]", "-", name).lstrip("._+-")[:128]
    return name or "model"


def _hf_rope(hf: dict[str, Any], max_pos: Any, fail: Any) -> dict[str, Any]:
    """Both rope forms: transformers<5 (`rope_theta` + `rope_scaling`) and transformers 5
    (`rope_parameters` holding theta too). Like transformers, `rope_scaling` wins if both."""
    source = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    params = hf.get(source) or {}
    if not isinstance(params, dict):
        raise fail(source, f"must be a mapping (got {show_value(params)})")
    params = dict(params)
    theta = params.get("rope_theta", hf.get("rope_theta", _ROPE_THETA_DEFAULT))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return {"theta": theta, "scaling": None}
    if kind != "llama3":
        raise fail("rope_type", f"must be 'default' or 'llama3' (got {show_value(kind)})")
    for key in ("factor", "low_freq_factor", "high_freq_factor"):
        if key not in params:
            raise fail(f"rope_parameters.{key}", "is missing (needed by rope_type 'llama3')")
    scaling = {
        "type": "llama3",
        "factor": params["factor"],
        "low_freq_factor": params["low_freq_factor"],
        "high_freq_factor": params["high_freq_factor"],
        # transformers falls back to max_position_embeddings, so do we
        "original_max_position": params.get("original_max_position_embeddings", max_pos),
    }
    return {"theta": theta, "scaling": scaling}
