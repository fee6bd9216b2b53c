"""Model descriptions: `load_config`, which reads our model.yaml, a Hugging Face config.json
(file, folder or dict), a bundled name or a ModelConfig into a checked `ModelConfig`.

Reading (models/text.py), HF translation (models/hf.py) and the field checks
(models/validate.py) each live apart; this file is the entry point that runs them in order,
then checks a weights folder's headers against the result (models/weights.py).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

from tilert_compiler.models.hf import HF_NAMES, from_hf, looks_like_hf
from tilert_compiler.models.schema import ModelConfig
from tilert_compiler.models.text import (
    SHOWN_CHARS,
    ConfigError,
    ConfigTypeError,
    parse_json,
    parse_yaml,
    path_kind,
    read_text,
    shorten,
    show_path,
    show_value,
)
from tilert_compiler.models.validate import checked_config
from tilert_compiler.models.weights import num_params, weight_map

# What users import from here (the classes are defined with what they belong to).
__all__ = [
    "BUNDLED_DIR",
    "ConfigError",
    "ConfigTypeError",
    "ModelConfig",
    "bundled_names",
    "describe",
    "hub_folder",
    "load_config",
]

BUNDLED_DIR = Path(__file__).parent / "bundled"


def load_config(
    source: str | os.PathLike[str] | dict[str, Any] | ModelConfig,
    *,
    overrides: dict[str, Any] | None = None,
) -> ModelConfig:
    """Read and validate a model description.

    `source` is our model.yaml, a dict in its schema, a Hugging Face config.json (or a dict of
    one), a folder holding model.yaml or config.json, a bundled name ("llama-3.2-1b"), or a
    ModelConfig (validated again). `overrides` (our schema) is merged in before validation,
    e.g. {"target": {"sms": 8}} or {"weights": {"random": 0}}.
    """
    if overrides is not None and not isinstance(overrides, dict):
        raise ConfigTypeError(
            f"overrides must be a dict in the model.yaml schema (got {_type_name(overrides)})"
        )
    raw, origin, base_dir, hf_names = _read_source(source)
    if overrides:
        raw = _merge(raw, overrides)
    cfg = checked_config(raw, origin, base_dir, hf_names)
    if cfg.weights.path is not None:
        # Names, shapes and dtypes from the *.safetensors headers (no tensor data is read),
        # so weights for another model are refused before compiling, not after the
        # artifact is written.
        weight_map(cfg)
    return cfg


def bundled_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))


def describe(cfg: ModelConfig) -> str:
    """One line: shapes, rope, size in parameters and bf16 bytes, FP8 weights, target."""
    n = num_params(cfg)
    rope = f"rope {cfg.rope_theta:g}"
    if cfg.rope_scaling is not None:
        rope += f" {cfg.rope_scaling.kind} x{cfg.rope_scaling.factor:g}"
    fp8, q = "", cfg.quantization
    if q is not None:
        scales = (
            "scale per row or tensor" if q.block is None else f"{q.block[0]}x{q.block[1]} blocks"
        )
        fp8 = f", {q.method} {q.fmt} weights ({scales}, from {q.source})"
    return (
        f"{cfg.name}: {cfg.family}, {cfg.layers} layers, hidden {cfg.hidden}, "
        f"heads {cfg.heads}/{cfg.kv_heads}x{cfg.head_dim}, mlp {cfg.intermediate}, "
        f"vocab {cfg.vocab}, {'tied' if cfg.tie_embeddings else 'untied'}, {rope}"
        f"{', qk-norm' if cfg.qk_norm else ''}, {_si(n)} params ({_si(2 * n)}B {cfg.dtype}){fp8}, "
        f"max_seq_len {cfg.max_seq_len}, {cfg.target.arch} x{cfg.target.sms} SMs"
    )


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


# --------------------------------------------------------------------------- sources


def _read_source(
    source: str | os.PathLike[str] | dict[str, Any] | ModelConfig,
) -> tuple[dict[str, Any], str, Path, dict[str, str]]:
    """-> (dict in our schema, label for messages, folder relative paths resolve against,
    our field name -> HF key for messages about converted HF configs)."""
    if isinstance(source, ModelConfig):
        source = source.to_dict()
    if isinstance(source, dict):
        if looks_like_hf(source):
            return from_hf(source, "config dict", None), "config dict", Path.cwd(), HF_NAMES
        return dict(source), "config dict", Path.cwd(), {}
    if not isinstance(source, (str, os.PathLike)) or isinstance(source, bytes):
        raise ConfigTypeError(
            "a model is a model.yaml or config.json path, a folder, a bundled name, a dict "
            f"or a ModelConfig (got {_type_name(source)}{_value_suffix(source)})"
        )
    text = os.fspath(source)
    if not isinstance(text, str) or not text:
        raise ConfigError(
            f"a model path or bundled name must not be empty (got {show_value(text)})"
        )
    if "\0" in text:
        raise ConfigError(f"{show_path(text)}: a path cannot hold a NUL character")
    path = Path(text)
    kind = path_kind(path)
    if kind is None and isinstance(source, str) and os.sep not in source:
        path = _bundled_path(source)
        kind = "file"
    elif kind is None and isinstance(source, str) and is_hub_id(source):
        path, kind = hub_folder(source), "dir"
    if kind == "dir":
        folder = path
        path = next(
            (folder / n for n in ("model.yaml", "config.json") if path_kind(folder / n) == "file"),
            None,
        )
        if path is None:
            raise ConfigError(f"{show_path(folder)}: holds neither model.yaml nor config.json")
    elif kind is None:
        raise ConfigError(f"{show_path(path)}: no such file")
    elif kind == "other":
        raise ConfigError(f"{show_path(path)}: not a regular file")
    origin = shorten(path.name, SHOWN_CHARS)
    text = read_text(path)
    if path.suffix == ".json":
        data = _mapping(parse_json(text, origin), origin)
        return from_hf(data, origin, path.parent), origin, path.parent, HF_NAMES
    return _mapping(parse_yaml(text, origin), origin), origin, path.parent, {}


# "owner/name" as the Hub spells a repository (a local path to nothing also looks like
# this; it is tried as a hub id only once the OS has found no such file).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
# What a model needs from its hub repository: configs, tokenizer, weights.
_HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt"]


def is_hub_id(text: str) -> bool:
    return _HUB_ID.fullmatch(text) is not None and ".." not in text


def hub_folder(repo_id: str, error: type[Exception] = ConfigError) -> Path:
    """The local snapshot folder of a Hugging Face Hub model ("meta-llama/Llama-3.2-1B"),
    from huggingface_hub's cache (HF_HUB_CACHE) without asking the Hub. A model not cached
    yet is downloaded (configs, tokenizer, *.safetensors) unless HF_HUB_OFFLINE is set;
    either way a model that cannot be had is one `error` line naming the id."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    except Exception as e:  # an id the Hub's own checks refuse
        raise error(f"{repo_id}: not a Hugging Face model id ({shorten(str(e))})") from None
    where = f"no such file, nor a model in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    if constants.HF_HUB_OFFLINE:
        raise error(
            f"{repo_id}: {where}; HF_HUB_OFFLINE is set, so it is not downloaded "
            f"(`hf download {repo_id}` where the Hub is reachable, or pass a local folder)"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except Exception as e:  # no network, gated, no such repository
        why = shorten((str(e).strip().splitlines() or [type(e).__name__])[0])
        raise error(f"{repo_id}: {where}, and downloading it failed ({why})") from None


def _value_suffix(value: Any) -> str:
    plain = isinstance(value, (int, float, str)) and not isinstance(value, bool)
    return f" {show_value(value)}" if plain else ""


def _bundled_path(name: str) -> Path:
    path = BUNDLED_DIR / f"{name}.yaml"
    if len(name) < 100 and path.is_file():
        return path
    names = bundled_names()
    hint = difflib.get_close_matches(name[:100], names, n=1)
    did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
    raise ConfigError(
        f"{show_value(name)} is neither a file nor a bundled model{did_you_mean}; "
        f"bundled: {', '.join(names)}"
    )


def _mapping(data: Any, origin: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: must be a mapping of fields (got {type(data).__name__})")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; `weights` is replaced whole because its keys are one-of (random | path)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "weights":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
