"""Model descriptions: the typed, validated `ModelConfig` and `load_config`, which reads our
model.yaml, a Hugging Face config.json (file, folder or dict) or a bundled name.

Every input problem becomes one `ConfigError` line that names the source, the field and what
is allowed, so a typo in a yaml fails here and never deep inside lowering.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tilert_compiler.ir.target import KNOWN_ARCHS, Target

FAMILIES = ("llama", "qwen3")
DTYPES = ("bf16",)
MAX_SEQ_LEN_LIMIT = 32768
# Upper bounds far above any real decoder (llama-3.1-405b: hidden 16384, 126 layers, MLP
# 53248; vocabularies reach 262144), so a typo such as an extra zero fails here at once
# instead of after minutes of tiling or gigabytes of coverage counts.
SIZE_LIMITS = {
    "hidden": 1 << 16,
    "layers": 1024,
    "heads": 1024,
    "kv_heads": 1024,
    "intermediate": 1 << 18,
    "vocab": 1 << 20,
}
MAX_SMS = 1024  # the schedule has one list per SM; GPUs today have at most ~150
# Names become folder names (build/<name>/) and a comment in the CUDA source.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
BUNDLED_DIR = Path(__file__).parent / "bundled"


class ConfigError(ValueError):
    """One-line, user-facing: names the field and what is allowed."""


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
    """Where weights come from: the seeded generator (`seed`) or a folder of *.safetensors
    (`path`, absolute). Exactly one is set."""

    seed: int | None = None
    path: str | None = None


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
    weights: WeightsSpec = WeightsSpec(seed=0)
    max_seq_len: int = 1024  # KV-cache capacity in tokens
    target: Target = Target()

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        """Our yaml schema, plain types only; `from_dict(cfg.to_dict()) == cfg`."""
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
            "weights": {"random": w.seed} if w.path is None else {"path": w.path},
            "max_seq_len": self.max_seq_len,
            "target": dataclasses.asdict(self.target),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return load_config(data)


# --------------------------------------------------------------------------- entry point


def load_config(
    source: str | os.PathLike[str] | dict[str, Any], *, overrides: dict[str, Any] | None = None
) -> ModelConfig:
    """Read and validate a model description.

    `source` is our model.yaml, a dict in its schema, a Hugging Face config.json (or a dict of
    one), a folder holding model.yaml or config.json, or a bundled name ("llama-3.2-1b").
    `overrides` (our schema) is merged in before validation, e.g. {"target": {"sms": 8}}.
    """
    raw, origin, base_dir, hf_names = _read_source(source)
    if overrides:
        raw = _merge(raw, overrides)
    cfg = _Validator(origin, base_dir, hf_names).model(raw)
    if cfg.weights.path is not None:
        _check_weight_headers(cfg)
    return cfg


def _check_weight_headers(cfg: ModelConfig) -> None:
    """Names and shapes in the *.safetensors headers (no tensor data is read) against the
    config, so weights for another model are refused before compiling, not after the
    artifact is written. Mirrors the rules of `weights.load_weights`."""
    from safetensors import safe_open

    from tilert_compiler.models.weights import hf_weight_names  # weights.py imports us

    expected = dict(hf_weight_names(cfg))
    found: set[str] = set()
    for file in sorted(Path(cfg.weights.path or "").glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}  # noqa: SIM118
        except Exception as e:  # safetensors raises its own error type for a bad header
            raise ConfigError(f"{file.name}: not a readable safetensors file ({e})") from None
        for name, shape in shapes.items():
            if (name == "lm_head.weight" and cfg.tie_embeddings) or name.endswith(
                "rotary_emb.inv_freq"
            ):
                continue  # the tied head is the embedding; inv_freq is a recomputed buffer
            if name not in expected:
                raise ConfigError(
                    f"{file.name}: tensor '{name}' is not a weight of {cfg.family} "
                    f"'{cfg.name}' (a different model?)"
                )
            if tuple(shape) != expected[name]:
                raise ConfigError(
                    f"{file.name}: tensor '{name}' has shape {list(shape)}, the config needs "
                    f"{list(expected[name])}"
                )
            found.add(name)
    missing = [n for n in expected if n not in found]
    if missing:
        raise ConfigError(
            f"{cfg.weights.path}: tensor '{missing[0]}' {list(expected[missing[0]])} is missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )


def bundled_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))


def describe(cfg: ModelConfig) -> str:
    """One line: shapes, rope, size in parameters and bf16 bytes, target."""
    from tilert_compiler.models.weights import num_params  # weights.py imports this module

    n = num_params(cfg)
    rope = f"rope {cfg.rope_theta:g}"
    if cfg.rope_scaling is not None:
        rope += f" {cfg.rope_scaling.kind} x{cfg.rope_scaling.factor:g}"
    return (
        f"{cfg.name}: {cfg.family}, {cfg.layers} layers, hidden {cfg.hidden}, "
        f"heads {cfg.heads}/{cfg.kv_heads}x{cfg.head_dim}, mlp {cfg.intermediate}, "
        f"vocab {cfg.vocab}, {'tied' if cfg.tie_embeddings else 'untied'}, {rope}"
        f"{', qk-norm' if cfg.qk_norm else ''}, {_si(n)} params ({_si(2 * n)}B {cfg.dtype}), "
        f"max_seq_len {cfg.max_seq_len}, {cfg.target.arch} x{cfg.target.sms} SMs"
    )


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


# --------------------------------------------------------------------------- sources


def _read_source(
    source: str | os.PathLike[str] | dict[str, Any],
) -> tuple[dict[str, Any], str, Path, dict[str, str]]:
    """-> (dict in our schema, label for messages, folder relative paths resolve against,
    our field name -> HF key for messages about converted HF configs)."""
    if isinstance(source, dict):
        if _looks_like_hf(source):
            return _from_hf(source, "config dict", None), "config dict", Path.cwd(), _HF_NAMES
        return dict(source), "config dict", Path.cwd(), {}
    path = Path(source)
    if not path.exists() and isinstance(source, str) and os.sep not in source:
        path = _bundled_path(source)
    if path.is_dir():
        folder = path
        path = next(
            (folder / n for n in ("model.yaml", "config.json") if (folder / n).is_file()), None
        )
        if path is None:
            raise ConfigError(f"{folder}: holds neither model.yaml nor config.json")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    origin = path.name
    text = path.read_text()
    if path.suffix == ".json":
        data = _parse(text, origin, as_json=True)
        return _from_hf(data, origin, path.parent), origin, path.parent, _HF_NAMES
    return _parse(text, origin), origin, path.parent, {}


def _bundled_path(name: str) -> Path:
    path = BUNDLED_DIR / f"{name}.yaml"
    if path.is_file():
        return path
    names = bundled_names()
    hint = difflib.get_close_matches(name, names, n=1)
    did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
    raise ConfigError(
        f"'{name}' is neither a file nor a bundled model{did_you_mean}; bundled: {', '.join(names)}"
    )


def _parse(text: str, origin: str, *, as_json: bool = False) -> dict[str, Any]:
    # JSON gets its own parser: PyYAML would read JSON's `1e-05` as a string (YAML 1.1).
    try:
        data = json.loads(text) if as_json else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{origin}: not valid JSON: {e.msg} at line {e.lineno}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"{origin}: not valid YAML: {problem}{where}") from None
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


# --------------------------------------------------------------------------- Hugging Face

# Our field -> the HF config.json key it came from, so errors name what the user wrote.
_HF_NAMES = {
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


def _looks_like_hf(data: dict[str, Any]) -> bool:
    return "model_type" in data or "hidden_size" in data


def _from_hf(hf: dict[str, Any], origin: str, folder: Path | None) -> dict[str, Any]:
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
        raise fail("model_type", f"must be one of {', '.join(FAMILIES)} (got {_show(family)})")
    for key in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if hf.get(key):
            raise fail(key, f"must be false: not supported (got {_show(hf[key])})")
    if hf.get("hidden_act", "silu") != "silu":
        raise fail("hidden_act", f"must be 'silu' (got {_show(hf['hidden_act'])})")
    layer_types = hf.get("layer_types") or []
    if not isinstance(layer_types, list):
        raise fail("layer_types", f"must be a list (got {_show(layer_types)})")
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
    has_weights = folder is not None and any(folder.glob("*.safetensors"))
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
        "weights": {"path": str(folder.resolve())} if has_weights else {"random": 0},
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
        raise fail(source, f"must be a mapping (got {_show(params)})")
    params = dict(params)
    theta = params.get("rope_theta", hf.get("rope_theta", _ROPE_THETA_DEFAULT))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return {"theta": theta, "scaling": None}
    if kind != "llama3":
        raise fail("rope_type", f"must be 'default' or 'llama3' (got {_show(kind)})")
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


# --------------------------------------------------------------------------- validation


def _show(value: Any) -> str:
    """A value as the user wrote it, cut short so errors stay one line."""
    text = "null" if value is None else repr(value) if not isinstance(value, bool) else str(value)
    text = text.lower() if isinstance(value, bool) else text
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


_FIELDS = {
    # field: required?
    "name": True,
    "family": True,
    "hidden": True,
    "layers": True,
    "heads": True,
    "kv_heads": True,
    "head_dim": True,
    "intermediate": True,
    "vocab": True,
    "tie_embeddings": True,
    "rope": True,
    "norm_eps": True,
    "qk_norm": False,
    "dtype": False,
    "weights": False,
    "max_seq_len": False,
    "target": False,
}
_SCALING_FIELDS = ("type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position")
_TARGET_FIELDS = tuple(f.name for f in dataclasses.fields(Target))


class _Validator:
    """Checks one dict in our schema and builds the ModelConfig; every failure is one line
    `<source>: field '<name>' <what is allowed> (got <value>)`."""

    def __init__(self, origin: str, base_dir: Path, hf_names: dict[str, str]) -> None:
        self.origin = origin
        self.base_dir = base_dir
        self.hf_names = hf_names

    def fail(self, field: str, msg: str) -> ConfigError:
        label = f"'{field}'"
        if field in self.hf_names:
            label += f" (from '{self.hf_names[field]}')"
        return ConfigError(f"{self.origin}: field {label} {msg}")

    # -- field readers

    def fields(
        self, data: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...]
    ) -> None:
        prefix = f"{where}." if where else ""
        if not isinstance(data, dict):
            raise self.fail(where, f"must be a mapping (got {_show(data)})")
        for key in data:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                did_you_mean = f"; did you mean '{prefix}{hint[0]}'?" if hint else ""
                # a key with a newline or control character is shown escaped: one line
                shown = key if isinstance(key, str) and key.isprintable() else _show(key)
                raise self.fail(
                    f"{prefix}{shown}",
                    f"is not a known field{did_you_mean} (allowed: {', '.join(allowed)})",
                )
        for key in required:
            if key not in data:
                raise self.fail(f"{prefix}{key}", "is missing")

    def int_(self, value: Any, field: str, *, low: int = 1, high: int | None = None) -> int:
        # bool is a subclass of int; `heads: true` is a mistake, not 1
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(field, f"must be an integer (got {_show(value)})")
        if value < low or (high is not None and value > high):
            what = "a positive integer" if low == 1 else f"an integer >= {low}"
            if high is not None:
                what = f"an integer in [{low}, {high}]"
            raise self.fail(field, f"must be {what} (got {value})")
        return value

    def float_(self, value: Any, field: str) -> float:
        # PyYAML reads `1e-5` (no dot) as a string; accept numeric strings rather than trip
        # every user on a YAML 1.1 quirk.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise self.fail(field, f"must be a number (got {_show(value)})")
        return float(value)

    def bool_(self, value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(field, f"must be true or false (got {_show(value)})")
        return value

    def choice(self, value: Any, field: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise self.fail(field, f"must be one of {', '.join(allowed)} (got {_show(value)})")
        return value

    # -- sections

    def model(self, d: dict[str, Any]) -> ModelConfig:
        required = tuple(k for k, req in _FIELDS.items() if req)
        self.fields(d, "", tuple(_FIELDS), required)
        name = d["name"]
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise self.fail(
                "name",
                "must be letters, digits and . _ + - (up to 128, not starting with a symbol) "
                f"(got {_show(name)})",
            )
        family = self.choice(d["family"], "family", FAMILIES)
        hidden = self.int_(d["hidden"], "hidden", high=SIZE_LIMITS["hidden"])
        layers = self.int_(d["layers"], "layers", high=SIZE_LIMITS["layers"])
        heads = self.int_(d["heads"], "heads", high=SIZE_LIMITS["heads"])
        kv_heads = self.int_(d["kv_heads"], "kv_heads", high=SIZE_LIMITS["kv_heads"])
        head_dim = self.int_(d["head_dim"], "head_dim", low=8, high=256)
        intermediate = self.int_(
            d["intermediate"], "intermediate", high=SIZE_LIMITS["intermediate"]
        )
        vocab = self.int_(d["vocab"], "vocab", high=SIZE_LIMITS["vocab"])
        for field, value in (("hidden", hidden), ("intermediate", intermediate)):
            if value % 8:
                raise self.fail(field, f"must be a multiple of 8 (got {value})")
        if head_dim % 8:
            raise self.fail(
                "head_dim",
                f"must be a multiple of 8: the kernel reads heads as 16-byte vectors and "
                f"RoPE rotates pairs (got {head_dim})",
            )
        if heads % kv_heads:
            raise self.fail("heads", f"({heads}) must be a multiple of 'kv_heads' ({kv_heads})")
        if family == "llama" and hidden % heads:
            # transformers' LlamaConfig refuses this, and it is our oracle
            raise self.fail(
                "hidden", f"({hidden}) must be a multiple of 'heads' ({heads}) for family llama"
            )
        tie = self.bool_(d["tie_embeddings"], "tie_embeddings")
        theta, scaling = self.rope(d["rope"])
        eps = self.float_(d["norm_eps"], "norm_eps")
        if not 0 < eps < 1:
            raise self.fail("norm_eps", f"must be in (0, 1) (got {eps:g})")
        qk_norm = family == "qwen3"  # a property of the family, not a free choice
        if "qk_norm" in d and self.bool_(d["qk_norm"], "qk_norm") != qk_norm:
            raise self.fail("qk_norm", f"must be {str(qk_norm).lower()} for family {family}")
        return ModelConfig(
            name=name,
            family=family,
            hidden=hidden,
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate=intermediate,
            vocab=vocab,
            tie_embeddings=tie,
            rope_theta=theta,
            rope_scaling=scaling,
            norm_eps=eps,
            qk_norm=qk_norm,
            dtype=self.choice(d.get("dtype", "bf16"), "dtype", DTYPES),
            weights=self.weights(d.get("weights", {"random": 0})),
            max_seq_len=self.int_(
                d.get("max_seq_len", 1024), "max_seq_len", high=MAX_SEQ_LEN_LIMIT
            ),
            target=self.target(d.get("target", {})),
        )

    def rope(self, d: Any) -> tuple[float, RopeScaling | None]:
        self.fields(d, "rope", ("theta", "scaling"), ("theta",))
        theta = self.float_(d["theta"], "rope.theta")
        if theta <= 0:
            raise self.fail("rope.theta", f"must be > 0 (got {theta:g})")
        s = d.get("scaling")
        if s is None:
            return theta, None
        self.fields(s, "rope.scaling", _SCALING_FIELDS, _SCALING_FIELDS)
        self.choice(s["type"], "rope.scaling.type", ("llama3",))
        factor = self.float_(s["factor"], "rope.scaling.factor")
        low = self.float_(s["low_freq_factor"], "rope.scaling.low_freq_factor")
        high = self.float_(s["high_freq_factor"], "rope.scaling.high_freq_factor")
        original = self.int_(
            s["original_max_position"], "rope.scaling.original_max_position", high=1 << 24
        )
        if factor < 1:
            raise self.fail("rope.scaling.factor", f"must be >= 1 (got {factor:g})")
        if low <= 0:
            raise self.fail("rope.scaling.low_freq_factor", f"must be > 0 (got {low:g})")
        if high <= low:
            raise self.fail(
                "rope.scaling.high_freq_factor",
                f"({high:g}) must be greater than 'low_freq_factor' ({low:g})",
            )
        return theta, RopeScaling("llama3", factor, low, high, original)

    def weights(self, d: Any) -> WeightsSpec:
        self.fields(d, "weights", ("random", "path"), ())
        if len(d) != 1:
            raise self.fail(
                "weights", f"must set exactly one of 'random' or 'path' (got {_show(d)})"
            )
        if "random" in d:
            # torch.Generator seeds are unsigned 64-bit
            return WeightsSpec(seed=self.int_(d["random"], "weights.random", low=0, high=2**64 - 1))
        raw = d["path"]
        if not isinstance(raw, str) or not raw:
            raise self.fail("weights.path", f"must be a folder path (got {_show(raw)})")
        path = (self.base_dir / Path(raw).expanduser()).resolve()  # relative to the yaml
        if not path.is_dir():
            raise self.fail("weights.path", f"must be an existing folder (got {path})")
        if not any(path.glob("*.safetensors")):
            raise self.fail("weights.path", f"must hold *.safetensors files ({path} has none)")
        return WeightsSpec(path=str(path))

    def target(self, d: Any) -> Target:
        self.fields(d, "target", _TARGET_FIELDS, ())
        values: dict[str, Any] = {}
        # Target is hardware as data and grows fields; each is checked by its default's type.
        for key, default in dataclasses.asdict(Target()).items():
            field, value = f"target.{key}", d.get(key, default)
            if key == "arch":
                values[key] = self.choice(value, field, KNOWN_ARCHS)
            elif isinstance(default, int):
                values[key] = self.int_(value, field, high=MAX_SMS if key == "sms" else None)
            else:
                values[key] = self.float_(value, field)
                if values[key] <= 0:
                    raise self.fail(field, f"must be > 0 (got {values[key]:g})")
        threads = values["threads_per_block"]
        if threads % 32 or threads > 1024:
            raise self.fail(
                "target.threads_per_block", f"must be a multiple of 32 up to 1024 (got {threads})"
            )
        return Target(**values)
