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
from tilert_compiler.models.text import ConfigError, shorten, show_value
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
    "quantization": "quantization_config",
    "quantization.block": "quantization_config.weight_block_size",
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
    } | _hf_quantization(hf.get("quantization_config"), fail)


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


# quantization_config formats read (checked against transformers' FineGrainedFP8Config and
# compressed-tensors' QuantizationConfig / QuantizationArgs, see docs/fp8-checkpoints.md)
_QUANT_METHODS = ("fp8", "compressed-tensors")
_CT_STRATEGIES = ("channel", "tensor", "block")


def _hf_quantization(qc: Any, fail: Any) -> dict[str, Any]:
    """`quantization_config` as our `quantization` field ({} when absent): the FP8 weight
    format and which modules keep their stored dtype. What only the W8A8 numerics use
    (`activation_scheme`, `input_activations`, `kv_cache_scheme`) is not read: the kernel
    dequantizes the weights and keeps its activations in float32."""
    if qc is None:
        return {}
    key = "quantization_config"
    if not isinstance(qc, dict):
        raise fail(key, f"must be a mapping (got {show_value(qc)})")
    method = qc.get("quant_method")
    if method == "fp8":
        return {"quantization": _hf_fp8(qc, fail)}
    if method == "compressed-tensors":
        return {"quantization": _hf_compressed_tensors(qc, fail)}
    raise fail(
        f"{key}.quant_method",
        f"must be one of {', '.join(_QUANT_METHODS)}: FP8 checkpoints only "
        f"(got {show_value(method)})",
    )


def _hf_fp8(qc: dict[str, Any], fail: Any) -> dict[str, Any]:
    """transformers' fine-grained FP8 (Qwen3-*-FP8, DeepSeek-V3): `X.weight` e4m3 and
    `X.weight_scale_inv` per `weight_block_size` block (null: one scale per tensor)."""
    key = "quantization_config"
    fmt = qc.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise fail(
            f"{key}.fmt", f"must be 'e4m3': the only FP8 format read (got {show_value(fmt)})"
        )
    if qc.get("scale_fmt", "float") != "float":
        raise fail(
            f"{key}.scale_fmt",
            "must be 'float': power-of-two ue8m0 scales are not read "
            f"(got {show_value(qc['scale_fmt'])})",
        )
    if qc.get("modules_to_convert"):
        raise fail(
            f"{key}.modules_to_convert",
            "must be empty: only the linear projections are read as FP8 "
            f"(got {show_value(qc['modules_to_convert'])})",
        )
    ignore = qc.get("modules_to_not_convert", qc.get("ignored_layers")) or []
    block = qc.get("weight_block_size", [128, 128])  # FineGrainedFP8Config's default
    return {
        "method": "fp8",
        "format": "e4m3",
        "block": block,
        "ignore": _hf_ignore(ignore, f"{key}.modules_to_not_convert", fail),
        "source": "fp8",
    }


def _hf_compressed_tensors(qc: dict[str, Any], fail: Any) -> dict[str, Any]:
    """compressed-tensors `float-quantized` (llm-compressor's FP8 checkpoints): `X.weight`
    e4m3 and `X.weight_scale` per channel, per tensor or per block, one weight scheme."""
    key = "quantization_config"
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise fail(
            f"{key}.config_groups", f"must be a mapping of schemes (got {show_value(groups)})"
        )
    schemes = []
    for name, group in groups.items():
        where = f"{key}.config_groups.{shorten(str(name), 40)}"
        if not isinstance(group, dict):
            raise fail(where, f"must be a mapping (got {show_value(group)})")
        fmt = group.get("format") or qc.get("format")
        if fmt != "float-quantized":
            raise fail(
                f"{key}.format",
                f"must be 'float-quantized': FP8 weights only (got {show_value(fmt)})",
            )
        targets = group.get("targets")
        if targets != ["Linear"]:
            raise fail(
                f"{where}.targets",
                f"must be ['Linear']: per-module targets are not read (got {show_value(targets)})",
            )
        w = group.get("weights")
        if not isinstance(w, dict):
            raise fail(
                f"{where}.weights", f"must be a mapping: weight-only FP8 (got {show_value(w)})"
            )
        if (w.get("num_bits"), w.get("type")) != (8, "float"):
            raise fail(
                f"{where}.weights",
                "must have num_bits 8 and type 'float' (FP8 e4m3) "
                f"(got num_bits {show_value(w.get('num_bits'))}, type {show_value(w.get('type'))})",
            )
        if w.get("symmetric", True) is not True:
            raise fail(f"{where}.weights.symmetric", "must be true: zero points are not read")
        strategy = w.get("strategy")
        if strategy not in _CT_STRATEGIES:
            raise fail(
                f"{where}.weights.strategy",
                f"must be one of {', '.join(_CT_STRATEGIES)} (got {show_value(strategy)})",
            )
        block = w.get("block_structure") if strategy == "block" else None
        if strategy == "block" and block is None:
            raise fail(
                f"{where}.weights.block_structure", "is missing (needed by strategy 'block')"
            )
        schemes.append(block)
    if len(schemes) > 1:
        raise fail(f"{key}.config_groups", f"must hold one scheme (got {len(schemes)})")
    ignore = qc.get("ignore") or []
    return {
        "method": "fp8",
        "format": "e4m3",
        "block": schemes[0],
        "ignore": _hf_ignore(ignore, f"{key}.ignore", fail),
        "source": "compressed-tensors",
    }


def _hf_ignore(ignore: Any, key: str, fail: Any) -> list[str]:
    if not isinstance(ignore, list) or not all(isinstance(i, str) for i in ignore):
        raise fail(key, f"must be a list of module names (got {show_value(ignore)})")
    for i in ignore:
        if i.startswith("re:"):
            raise fail(
                key,
                f"must list module names: the pattern {show_value(i)} is not read "
                "(write the modules it matches)",
            )
    return ignore
