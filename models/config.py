"""Model descriptions: the typed, validated `ModelConfig` and `load_config`, which reads our
model.yaml, a Hugging Face config.json (file, folder or dict) or a bundled name.

Every input problem becomes one `ConfigError` line that names the source, the field and what
is allowed, so a typo in a yaml fails here and never deep inside lowering.
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import json
import math
import os
import re
import stat
import sys
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
# Text inputs: a description is a few KB (the largest HF config.json of a supported family
# is under 10 KB), so these only stop a wrong file or a crafted one: a multi-gigabyte read,
# a YAML alias bomb (1 KB that expands to billions of values), nesting that overflows the
# parser's stack.
MAX_DESCRIPTION_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_VALUES = 100_000  # values in a parsed description, aliases expanded
SHOWN_CHARS = 60  # at most this much of a value or a path is quoted in a message


class ConfigError(ValueError):
    """One-line, user-facing: names the field and what is allowed."""


class ConfigTypeError(ConfigError, TypeError):
    """A Python API argument of the wrong type (`tc.compile(42)`): a ConfigError, so it
    carries the CLI's one-line message, and a TypeError, so it reads like one."""


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
            "weights": (
                {"random": w.seed}
                if w.seed is not None
                else {"path": w.path}
                if w.path is not None
                else {"none": w.none}
            ),
            "max_seq_len": self.max_seq_len,
            "target": dataclasses.asdict(self.target),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return load_config(data)


# --------------------------------------------------------------------------- entry point


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
    cfg = _Validator(origin, base_dir, hf_names).model(raw)
    if cfg.weights.path is not None:
        # Names, shapes and dtypes from the *.safetensors headers (no tensor data is read),
        # so weights for another model are refused before compiling, not after the
        # artifact is written.
        from tilert_compiler.models.weights import weight_map  # weights.py imports us

        weight_map(cfg)
    return cfg


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


# --------------------------------------------------------------------------- reading text


def show_path(path: str | os.PathLike[str]) -> str:
    """A path for a message: one line, and at most ~200 characters (the start and the
    file name of a longer one)."""
    text = _printable(os.fspath(path) if not isinstance(path, str) else path)
    return text if len(text) <= 200 else f"{text[:120]}...{text[-60:]}"


def path_kind(path: Path, error: type[Exception] = ConfigError) -> str | None:
    """What is at `path`: "file", "dir", "other" (a device, a pipe) or None (nothing). A
    path the OS will not look at (a name over 255 characters, a NUL byte, no permission)
    is one `error` line."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise error(f"{show_path(path)}: cannot look at it ({why})") from None
    return "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"


def read_text(
    path: str | os.PathLike[str],
    what: str = "model description",
    *,
    limit: int = MAX_DESCRIPTION_BYTES,
    error: type[Exception] = ConfigError,
) -> str:
    """The UTF-8 text of a file the tool reads (a description, a config.json, an index, a
    tokenizer, an IR dump). Every way it can fail is one `error` line naming the file:
    missing, unreadable, a folder, longer than `limit` bytes, binary, or not UTF-8."""
    shown = show_path(path)
    if path_kind(Path(path), error) == "other":  # a pipe would block the read
        raise error(f"{shown}: not a regular file, not a {what}")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except IsADirectoryError:
        raise error(f"{shown}: is a folder, not a {what}") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        why = getattr(e, "strerror", None) or str(e)
        raise error(f"{shown}: cannot read ({why})") from None
    if len(data) > limit:
        raise error(
            f"{shown}: more than {_bytes(limit)}; too large for a {what} (a different file?)"
        )
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise error(f"{shown}: is UTF-16 text; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")  # an editor's BOM is harmless
    except UnicodeDecodeError as e:
        kind = "a binary file" if b"\0" in data else "another encoding (latin-1?)"
        raise error(
            f"{shown}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}): "
            f"{kind}, not a {what}; save it as UTF-8"
        ) from None
    if "\0" in text:
        raise error(f"{shown}: holds NUL bytes: a binary file (or UTF-16 text), not a {what}")
    return text


def parse_json(text: str, origin: str, *, error: type[Exception] = ConfigError) -> Any:
    """JSON with the description limits: nesting depth, value count, duplicate keys."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as e:
        raise error(f"{origin}: not valid JSON: {e.msg} at line {e.lineno}") from None
    except RecursionError:
        raise error(f"{origin}: nested deeper than {MAX_DEPTH} levels") from None
    except _Refused as e:
        raise error(f"{origin}: {e}") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise error(f"{origin}: not valid JSON: {_parse_problem(e)}") from None
    problem = _too_big(data)
    if problem:
        raise error(f"{origin}: {problem}")
    return data


def parse_yaml(text: str, origin: str, *, error: type[Exception] = ConfigError) -> Any:
    """YAML (safe tags only) with the description limits: nesting depth, values with
    aliases expanded (an alias bomb is refused before it is built), duplicate keys."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problem = _too_big_node(node)
        if problem:
            raise _Refused(problem)
        return loader.construct_document(node)
    except _Refused as e:
        raise error(f"{origin}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise error(f"{origin}: not valid YAML: {shorten(problem)}{where}") from None
    except RecursionError:
        raise error(f"{origin}: nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, OverflowError) as e:  # a timestamp like 2024-13-45, a huge integer
        raise error(f"{origin}: not valid YAML: {_parse_problem(e)}") from None
    finally:
        loader.dispose()


def _parse_problem(e: Exception) -> str:
    if "integer string conversion" in str(e):  # Python's guard against quadratic int()
        limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
        return f"an integer of more than {limit} digits"
    return shorten(str(e))


class _Refused(ValueError):
    """A parsed input past a limit (depth, size, a duplicate key)."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"key {_show(key)} appears twice in one object")
        out[key] = value
    return out


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses nesting past MAX_DEPTH while composing (before recursion
    can overflow) and duplicate keys in one mapping (PyYAML keeps the last silently)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels (line {line})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        seen: set[tuple[str, str]] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in seen:
                    raise _Refused(
                        f"key {_show(key.value)} appears twice in one mapping "
                        f"(line {key.start_mark.line + 1})"
                    )
                seen.add((key.tag, key.value))
        return super().construct_mapping(node, deep=deep)


def _too_big_node(root: yaml.Node) -> str | None:
    """Why a composed YAML document is refused: more than MAX_VALUES values once aliases
    are expanded, or an alias inside its own anchor; None if it is fine. Each node is
    counted once (memoized), so a bomb costs its size in nodes, not its expansion."""
    size: dict[int, int] = {}
    active: set[int] = set()

    def count(node: yaml.Node) -> int:
        if id(node) in size:
            return size[id(node)]
        if id(node) in active:
            raise _Refused(f"an alias refers to itself (line {node.start_mark.line + 1})")
        active.add(id(node))
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(count(c) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(count(k) + count(v) for k, v in node.value)
        active.discard(id(node))
        size[id(node)] = n
        return n

    n = count(root)
    if n > MAX_VALUES:
        return f"holds {n:.3g} values once its aliases are expanded, more than {MAX_VALUES}"
    return None


def _too_big(data: Any) -> str | None:
    """Why parsed JSON is refused (deeper than MAX_DEPTH, more than MAX_VALUES values)."""
    stack, n = [(data, 1)], 0
    while stack:
        value, depth = stack.pop()
        n += 1
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if n > MAX_VALUES:
            return f"holds more than {MAX_VALUES} values"
        if isinstance(value, dict):
            stack += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]
    return None


def _bytes(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def _printable(text: str) -> str:
    """Control characters and the like escaped, so a message stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shorten(text: str, n: int = SHOWN_CHARS * 2) -> str:
    """`text` on one line (control characters escaped), cut to at most `n` characters."""
    text = " ".join(_printable(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


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
        if _looks_like_hf(source):
            return _from_hf(source, "config dict", None), "config dict", Path.cwd(), _HF_NAMES
        return dict(source), "config dict", Path.cwd(), {}
    if not isinstance(source, (str, os.PathLike)) or isinstance(source, bytes):
        raise ConfigTypeError(
            "a model is a model.yaml or config.json path, a folder, a bundled name, a dict "
            f"or a ModelConfig (got {_type_name(source)}{_value_suffix(source)})"
        )
    text = os.fspath(source)
    if not isinstance(text, str) or not text:
        raise ConfigError(f"a model path or bundled name must not be empty (got {_show(text)})")
    if "\0" in text:
        raise ConfigError(f"{show_path(text)}: a path cannot hold a NUL character")
    path = Path(text)
    kind = path_kind(path)
    if kind is None and isinstance(source, str) and os.sep not in source:
        path = _bundled_path(source)
        kind = "file"
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
        return _from_hf(data, origin, path.parent), origin, path.parent, _HF_NAMES
    return _mapping(parse_yaml(text, origin), origin), origin, path.parent, {}


def _value_suffix(value: Any) -> str:
    plain = isinstance(value, (int, float, str)) and not isinstance(value, bool)
    return f" {_show(value)}" if plain else ""


def _bundled_path(name: str) -> Path:
    path = BUNDLED_DIR / f"{name}.yaml"
    if len(name) < 100 and path.is_file():
        return path
    names = bundled_names()
    hint = difflib.get_close_matches(name[:100], names, n=1)
    did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
    raise ConfigError(
        f"{_show(name)} is neither a file nor a bundled model{did_you_mean}; "
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
    weights: dict[str, Any] = {"none": f"the {origin} names no weights"}
    if folder is not None:
        from tilert_compiler.models.weights import found_weights  # weights.py imports us

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


def show_value(value: Any) -> str:
    """A value for a message, as `_show` renders it (one line, a short prefix)."""
    return _show(value)


def _show(value: Any) -> str:
    """A value as the user wrote it, cut short so errors stay one line. Only the shown
    prefix is ever rendered: a huge or self-referencing value costs nothing."""
    parts: list[str] = []
    _render(value, parts, [SHOWN_CHARS + 1], set())
    text = " ".join(_printable("".join(parts)).split())
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _render(value: Any, out: list[str], budget: list[int], seen: set[int]) -> None:
    """Appends the rendering of `value` to `out` until `budget[0]` characters are spent."""
    if budget[0] <= 0:
        return

    def put(text: str) -> None:
        out.append(text[: budget[0]])
        budget[0] -= len(text)

    if value is None:
        put("null")
    elif isinstance(value, bool):
        put(str(value).lower())
    elif isinstance(value, int):
        # str() of an int over 4300 digits raises; such a value is its size, not its digits
        put(repr(value) if value.bit_length() < 1000 else f"<a {value.bit_length()}-bit integer>")
    elif isinstance(value, (float, str)):
        put(repr(value[: budget[0] + 2] if isinstance(value, str) else value))
    elif isinstance(value, (dict, list, tuple)):
        if id(value) in seen:
            put("...")
            return
        seen.add(id(value))
        is_dict = isinstance(value, dict)
        put("{" if is_dict else "[")
        items = value.items() if is_dict else value
        for i, item in enumerate(items):
            if budget[0] <= 0:
                return
            if i:
                put(", ")
            if is_dict:
                _render(item[0], out, budget, seen)
                put(": ")
                item = item[1]
            _render(item, out, budget, seen)
        put("}" if is_dict else "]")
        seen.discard(id(value))
    else:  # another type (a date from YAML, an object through the Python API): its name
        put(f"<{type(value).__name__}>")


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
                hint = difflib.get_close_matches(str(key)[:100], allowed, n=1)
                did_you_mean = f"; did you mean '{prefix}{hint[0]}'?" if hint else ""
                # a key with a newline or control character is shown escaped: one line
                shown = shorten(key, SHOWN_CHARS) if isinstance(key, str) else _show(key)
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
            weights=self.weights(d.get("weights")),
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
        # Random weights only when asked: a description that names none compiles, and
        # says so when it is run.
        if d is None:
            return WeightsSpec(none=f"{self.origin} names no weights")
        self.fields(d, "weights", ("random", "path", "none"), ())
        if len(d) != 1:
            raise self.fail(
                "weights", f"must set exactly one of 'random' or 'path' (got {_show(d)})"
            )
        if "random" in d:
            # torch.Generator seeds are unsigned 64-bit
            return WeightsSpec(seed=self.int_(d["random"], "weights.random", low=0, high=2**64 - 1))
        if "none" in d:  # what an artifact's manifest records when no weights were bound
            if not isinstance(d["none"], str):
                raise self.fail("weights.none", f"must be text (got {_show(d['none'])})")
            return WeightsSpec(none=shorten(d["none"], 400))
        raw = d["path"]
        if not isinstance(raw, str) or not raw or "\0" in raw:
            raise self.fail("weights.path", f"must be a folder path (got {_show(raw)})")
        path = (self.base_dir / Path(raw).expanduser()).resolve()  # relative to the yaml
        if path_kind(path) != "dir":
            raise self.fail("weights.path", f"must be an existing folder (got {show_path(path)})")
        from tilert_compiler.models.weights import found_weights  # weights.py imports us

        instead = found_weights(path)
        if instead:
            raise self.fail("weights.path", f"must hold *.safetensors files ({instead})")
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
