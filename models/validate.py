"""Checking a description in our model.yaml schema and building its `ModelConfig`: every
field's type and range, the shapes the kernel can tile, the weights folder. Every failure is
one `ConfigError` line `<source>: field '<name>' <what is allowed> (got <value>)`, so a typo in
a yaml fails here and never deep inside lowering.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from pathlib import Path
from typing import Any

from tilert_compiler.ir.target import KNOWN_ARCHS, Target
from tilert_compiler.models.quant import Quantization
from tilert_compiler.models.schema import DTYPES, FAMILIES, ModelConfig, RopeScaling, WeightsSpec
from tilert_compiler.models.text import (
    SHOWN_CHARS,
    ConfigError,
    path_kind,
    shorten,
    show_path,
    show_value,
)
from tilert_compiler.models.weights import found_weights

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


def checked_config(
    data: dict[str, Any], origin: str, base_dir: Path, hf_names: dict[str, str]
) -> ModelConfig:
    """`data` (our schema) checked field by field, as a ModelConfig. `origin` labels the
    messages, `base_dir` is where a relative weights path starts, `hf_names` maps our fields
    to the HF keys they came from (for a converted config.json)."""
    return _Validator(origin, base_dir, hf_names).model(data)


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
    "quantization": False,
}
_QUANT_FIELDS = ("method", "format", "block", "ignore", "source")
QUANT_SOURCES = ("fp8", "compressed-tensors", "quantize")
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
            raise self.fail(where, f"must be a mapping (got {show_value(data)})")
        for key in data:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key)[:100], allowed, n=1)
                did_you_mean = f"; did you mean '{prefix}{hint[0]}'?" if hint else ""
                # a key with a newline or control character is shown escaped: one line
                shown = shorten(key, SHOWN_CHARS) if isinstance(key, str) else show_value(key)
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
            raise self.fail(field, f"must be an integer (got {show_value(value)})")
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
            raise self.fail(field, f"must be a number (got {show_value(value)})")
        return float(value)

    def bool_(self, value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(field, f"must be true or false (got {show_value(value)})")
        return value

    def choice(self, value: Any, field: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise self.fail(field, f"must be one of {', '.join(allowed)} (got {show_value(value)})")
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
                f"(got {show_value(name)})",
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
            quantization=self.quantization(d.get("quantization")),
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
                "weights", f"must set exactly one of 'random' or 'path' (got {show_value(d)})"
            )
        if "random" in d:
            # torch.Generator seeds are unsigned 64-bit
            return WeightsSpec(seed=self.int_(d["random"], "weights.random", low=0, high=2**64 - 1))
        if "none" in d:  # what an artifact's manifest records when no weights were bound
            if not isinstance(d["none"], str):
                raise self.fail("weights.none", f"must be text (got {show_value(d['none'])})")
            return WeightsSpec(none=shorten(d["none"], 400))
        raw = d["path"]
        if not isinstance(raw, str) or not raw or "\0" in raw:
            raise self.fail("weights.path", f"must be a folder path (got {show_value(raw)})")
        path = (self.base_dir / Path(raw).expanduser()).resolve()  # relative to the yaml
        if path_kind(path) != "dir":
            raise self.fail("weights.path", f"must be an existing folder (got {show_path(path)})")
        instead = found_weights(path)
        if instead:
            raise self.fail("weights.path", f"must hold *.safetensors files ({instead})")
        return WeightsSpec(path=str(path))

    def quantization(self, d: Any) -> Quantization | None:
        """FP8 weights (models/quant.py): `method` fp8, `format` e4m3, `block` [bn, bk] or
        null (one scale per output channel or per tensor), `ignore` module names kept as
        stored, `source` where the FP8 values come from (the checkpoint's format, or
        "quantize": made from bf16)."""
        if d is None:
            return None
        self.fields(d, "quantization", _QUANT_FIELDS, ())
        self.choice(d.get("method", "fp8"), "quantization.method", ("fp8",))
        fmt = d.get("format", "e4m3")
        if fmt != "e4m3":
            raise self.fail(
                "quantization.format",
                f"must be e4m3: the kernel reads e4m3 FP8 only (got {show_value(fmt)})",
            )
        block = d.get("block")
        if block is not None:
            if not isinstance(block, list) or len(block) != 2:
                raise self.fail(
                    "quantization.block",
                    "must be [rows, cols] (e.g. [128, 128]) or null for one scale per output "
                    f"channel (got {show_value(block)})",
                )
            block = tuple(self.int_(b, "quantization.block", high=1 << 16) for b in block)
        ignore = d.get("ignore", [])
        if not isinstance(ignore, list) or not all(isinstance(i, str) and i for i in ignore):
            raise self.fail(
                "quantization.ignore",
                f"must be a list of module names, e.g. [lm_head] (got {show_value(ignore)})",
            )
        source = self.choice(d.get("source", "quantize"), "quantization.source", QUANT_SOURCES)
        return Quantization(block=block, ignore=tuple(ignore), source=source)

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
