"""Every compiler setting in one typed place; environment variables are read here only."""

from __future__ import annotations

import functools
import numbers
import os
import typing
from dataclasses import dataclass, fields, replace

from tilert_compiler.ir.lm_parts import CANDIDATES
from tilert_compiler.models.text import ConfigError, ConfigTypeError


@dataclass(frozen=True)
class Options:
    weight_ring: bool = True  # passes.prefetch: a producer warp streams weights into smem
    # passes.prefetch (with the ring): the producer asks L2 for each decode attention
    # split's KV cache rows of earlier steps when it passes the task.
    cache_prefetch: bool = True
    # passes.plan (the kernel plan), with the ring: the stage size in KiB (None: the plan's
    # rule) and the weight bytes (KiB) each SM's producer keeps in flight, at most, in
    # whole stages and at least one (None: the target's `copies_in_flight_bytes`; 0: no
    # cap, as many copies as the ring has stages).
    stage_kb: int | None = None
    in_flight_kb: int | None = None
    # passes.plan, with the ring: the decode program's ring stages (None: as many as fit
    # beside the largest task scratch, at most half a decoder layer's weights per SM
    # rounded up to a stage; more than fit is refused)
    ring_stages: int | None = None
    # passes.deps: activations carry their step's parity in the lowest mantissa bit and
    # consumers poll the data itself, not a counter (one round trip per hand-off). On by
    # default: measured faster on H100 (bench/NOTES.md, run S4-2: llama-3.2-1b 1.178 vs
    # 1.255 ms, qwen3-0.6b 1.003 vs 1.117, qwen3-8b 6.083 vs 6.276), parity unchanged.
    flags: bool = True
    fault_skip_task: int = -1  # debug build: this task never runs, writes or signals
    profile: bool = False  # kernel records per-task timestamps (runtime writes a trace)
    context: int = 512  # cache length the cost model assumes for attention
    # passes.tile: the split-KV factor of decode attention (None: the SMs over the kv
    # heads, with at least 16 cache rows a split at `context`)
    attn_splits: int | None = None
    dump_ir: str | None = None  # folder for per-stage IR dumps (TILERT_DUMP_IR)
    nvcc: bool = True  # build the cubin (off: source only, e.g. without a CUDA toolkit)
    wait_timeout_ms: int = 1000  # bound on each dependency wait in the kernel
    # The prefill program (passes/prefill.py): prompt tokens per chunk, a multiple of 128
    # (None: 1024, at most max_seq_len rounded up to 128; 0: none, prompts run as decode
    # steps). Its GEMMs and attention are TileLang tile programs on tensor cores.
    prefill_chunk: int | None = None
    # passes.tile: the logits each LM-head task keeps as candidates for a sampled draw
    # (ir/lm_parts.py); the sample task passes over the whole vocabulary only when the
    # kept tokens reach past them. At least 1.
    sample_candidates: int = CANDIDATES
    # models/quant.py: "fp8" stores the linear projections as FP8 e4m3 with one scale per
    # output channel (weight-only; a checkpoint's own FP8 quantization is kept as it is).
    # The prefill program's GEMMs read the FP8 rows too (tile_programs.gemm_fp8).
    quantize: str | None = None
    # passes.plan: how the decode program's FP8 GEMVs dot a row with x: "ffma" (dequantize
    # to float32 in registers, FFMA; measured on H100, bench/NOTES.md item 138) or "mma"
    # (mma.sync on tensor cores, x as two f16 parts; built for fewer instructions per
    # weight byte, item 145, not yet run on a GPU)
    fp8_gemv: str = "ffma"

    def __post_init__(self) -> None:
        # Every field against its annotation, so `stage_kb="32"` is one line here rather
        # than a TypeError deep in a pass; numpy integers are taken as ints.
        for f in fields(self):
            value, kinds = getattr(self, f.name), _field_kinds(f.name)
            if value is None and type(None) in kinds:
                continue
            if bool in kinds:
                ok = isinstance(value, bool)
            elif int in kinds:
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
                if ok:
                    object.__setattr__(self, f.name, int(value))
            else:  # str: a path
                ok = isinstance(value, (str, os.PathLike))
            if not ok:
                want = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
                raise ConfigTypeError(
                    f"option {f.name} must be {want} (got {type(value).__name__} {value!r:.40})"
                )

    def with_(self, **kw) -> Options:
        for name in sorted(set(kw) & set(RETIRED)):
            if why := retired_error(name, kw.pop(name)):
                raise ConfigError(f"{why}; drop it")
        known = {f.name for f in fields(self)}
        unknown = set(kw) - known
        if unknown:
            raise ConfigTypeError(
                f"unknown option(s) {', '.join(sorted(map(str, unknown)))}; known: "
                f"{', '.join(sorted(known))}"
            )
        return replace(self, **kw)


# Options measured as losers and removed; commit 41e7d7c is the last that has them. Per
# name: the behaviour the compiler now always has, and why the other one went. Old dumps
# record every option, so a retired one at that value is accepted and ignored.
RETIRED: dict[str, tuple[object, str]] = {
    "l2_prefetch": (False, "L2 prefetch of upcoming weights measured up to 19 % slower on H100"),
    "l2_window_kb": (None, "it sized the L2 window of the removed option l2_prefetch"),
    "mma_gemv": (False, "GEMVs on tensor cores measured 1.05-1.28x slower on H100"),
    "fine_deps": (True, "its ablation, one counter per op, measured no gain"),
}
LAST_COMMIT_WITH_RETIRED = "41e7d7c"


def retired_error(name: str, value: object) -> str | None:
    """Why the retired option `name` cannot be `value` (one line to build an error on), or
    None when `value` is the behaviour kept."""
    kept, why = RETIRED[name]
    if value == kept and type(value) is type(kept):
        return None
    return (
        f"option {name} was removed ({why}; the last commit with it is {LAST_COMMIT_WITH_RETIRED})"
    )


@functools.cache
def _field_kinds(name: str) -> tuple[type, ...]:
    hint = typing.get_type_hints(Options)[name]
    return typing.get_args(hint) or (hint,)


# TILERT_* switches: these words, any case; empty or unset is the default.
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_flag(name: str) -> bool | None:
    """A boolean environment variable: None when unset or empty, else its value; anything
    but 1/0, true/false, yes/no or on/off is one ConfigError line."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(
        f"environment variable {name} must be 1 or 0 (or true/false) (got {raw!r:.40})"
    )


def from_env(base: Options | None = None) -> Options:
    """Options with the TILERT_* environment variables applied: TILERT_DUMP_IR (a folder),
    and the switches TILERT_NO_CACHE_PREFETCH, TILERT_NO_WEIGHT_RING and TILERT_FLAGS (1/0,
    true/false; a TILERT_NO_* set to 0 keeps the feature on). TILERT_L2_PREFETCH and
    TILERT_MMA_GEMV set to 1 are refused: their options were removed."""
    if base is not None and not isinstance(base, Options):
        raise ConfigTypeError(
            f"options must be a tilert_compiler.Options (got {type(base).__name__}); "
            "keyword arguments set single options"
        )
    o = base or Options()
    env = os.environ
    if env.get("TILERT_DUMP_IR") and o.dump_ir is None:
        o = replace(o, dump_ir=env["TILERT_DUMP_IR"])
    switches = {
        "TILERT_NO_CACHE_PREFETCH": ("cache_prefetch", True),
        "TILERT_NO_WEIGHT_RING": ("weight_ring", True),
        "TILERT_FLAGS": ("flags", False),  # e.g. the GPU tests in either mode
    }
    for var, (field, negated) in switches.items():
        value = env_flag(var)
        if value is not None:
            o = replace(o, **{field: value != negated})
    for var, field in (("TILERT_L2_PREFETCH", "l2_prefetch"), ("TILERT_MMA_GEMV", "mma_gemv")):
        value = env_flag(var)
        if value is not None and (why := retired_error(field, value)):
            raise ConfigError(f"environment variable {var}: {why}; unset it")
    return o
