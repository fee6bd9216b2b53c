"""Model weights by their Hugging Face names: the fixed name/shape list every later stage
relies on, the seeded random generator, and loading (and checking) *.safetensors folders:
the index (model.safetensors.index.json) decides which files are read; names, shapes and
dtypes are checked from the headers before anything is compiled, values for NaN and Inf
when they are loaded.

An FP8 checkpoint (`cfg.quantization` with source "fp8" or "compressed-tensors") stores
each quantized `X.weight` as e4m3 beside its scale tensor (`X.weight_scale_inv` or
`X.weight_scale`); the pair streams as one `QuantWeight` (models/quant.py) under the
weight's name. Everything else streams as stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from tilert_compiler.models.quant import (
    ACTIVATION_SUFFIXES,
    SCALE_SUFFIX,
    QuantWeight,
    dequantize,
    from_checkpoint,
    quantize,
    scale_grid,
    scale_name,
)
from tilert_compiler.models.schema import ModelConfig
from tilert_compiler.models.text import (
    ConfigError,
    ConfigTypeError,
    parse_json,
    path_kind,
    read_text,
    shorten,
    show_path,
    show_value,
)

WeightList = list[tuple[str, tuple[int, ...]]]
# a weight's Hugging Face name and its tensor (an FP8 one: its QuantWeight)
Weight = tuple[str, "torch.Tensor | QuantWeight"]

# Saved by some older checkpoints; a recomputed buffer, not a weight.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def hf_weight_names(cfg: ModelConfig) -> WeightList:
    """HF parameter names and shapes ([out, in] for matrices) in a fixed order, which is also
    the order `random_weights` draws them in."""
    h, hd, inter = cfg.hidden, cfg.head_dim, cfg.intermediate
    names: WeightList = [("model.embed_tokens.weight", (cfg.vocab, h))]
    for i in range(cfg.layers):
        p = f"model.layers.{i}"
        names += [
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.self_attn.q_proj.weight", (cfg.q_dim, h)),
            (f"{p}.self_attn.k_proj.weight", (cfg.kv_dim, h)),
            (f"{p}.self_attn.v_proj.weight", (cfg.kv_dim, h)),
            (f"{p}.self_attn.o_proj.weight", (h, cfg.q_dim)),
        ]
        if cfg.qk_norm:
            names += [
                (f"{p}.self_attn.q_norm.weight", (hd,)),
                (f"{p}.self_attn.k_norm.weight", (hd,)),
            ]
        names += [
            (f"{p}.post_attention_layernorm.weight", (h,)),
            (f"{p}.mlp.gate_proj.weight", (inter, h)),
            (f"{p}.mlp.up_proj.weight", (inter, h)),
            (f"{p}.mlp.down_proj.weight", (h, inter)),
        ]
    names.append(("model.norm.weight", (h,)))
    if not cfg.tie_embeddings:
        names.append(("lm_head.weight", (cfg.vocab, h)))
    return names


def num_params(cfg: ModelConfig) -> int:
    return sum(_numel(shape) for _, shape in hf_weight_names(cfg))


def scale_names(cfg: ModelConfig) -> dict[str, str]:
    """FP8 weight name -> the checkpoint tensor holding its scales, for a config whose
    checkpoint stores FP8 (empty for bf16 ones and for `source` "quantize")."""
    q = cfg.quantization
    if q is None:
        return {}
    pairs = ((name, scale_name(q, name)) for name, _ in hf_weight_names(cfg))
    return {name: s for name, s in pairs if s is not None}


def _scale_fits(shape: tuple[int, ...], grids: list) -> bool:
    """A stored scale's shape against the grids its weight may have (`scale_grid`): the
    grid itself, a per-channel [N], a per-tensor scalar or [1]."""
    numel = _numel(shape)
    for (gn, gk), _ in grids:
        if shape == (gn, gk) or (len(shape) <= 1 and gk == 1 and numel == gn):
            return True
        if gn * gk == 1 and numel == 1:
            return True
    return False


def _scale_wanted(weight: tuple[int, ...], grids: list) -> str:
    """What a weight's scale must be, said for a message."""
    (gn, gk), (bn, bk) = grids[0]
    if len(grids) == 1:
        return f"[{gn}, {gk}] (one scale per {bn}x{bk} block of {list(weight)})"
    return f"[{gn}, 1] (one scale per output channel) or [1] (one per tensor)"


def random_weights(cfg: ModelConfig, seed: int | None = None) -> dict[str, torch.Tensor]:
    """float32 CPU tensors from one torch.Generator(seed), drawn in `hf_weight_names` order.

    Scales keep activations O(1) so logits are not flat: matrices N(0, 1/fan_in), the
    embedding N(0, 1), norm weights 1 + 0.1 N(0, 1) (not all ones, so a kernel that skips a
    norm's weight is caught). Same config and seed, same tensors, on any machine.
    """
    return dict(_random_stream(cfg, seed))


def _random_stream(cfg: ModelConfig, seed: int | None = None) -> Iterator[Weight]:
    """random_weights one tensor at a time (the same values)."""
    seed = cfg.weights.seed if seed is None else seed
    if seed is None:
        raise ConfigError(f"{cfg.name}: random_weights needs a seed (the config names none)")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, shape in hf_weight_names(cfg):
        # randn then scale in place: one buffer per tensor, which matters at 8B x float32
        t = torch.randn(shape, generator=gen, dtype=torch.float32)
        if len(shape) == 1:
            t.mul_(0.1).add_(1.0)
        elif name != "model.embed_tokens.weight":
            t.mul_(shape[1] ** -0.5)
        yield name, t


# --------------------------------------------------------------------------- checkpoints


def found_weights(folder: Path) -> str | None:
    """None if `folder` holds safetensors weights to read (its index's shards, or
    *.safetensors); otherwise what it holds instead, said for a message."""
    index = _index(folder)
    if index is not None:
        shards = sorted(set(index.values()))
        if not any(path_kind(folder / s) == "file" for s in shards):
            return (
                f"{show_path(folder)}: {INDEX_FILE} but none of its {len(shards)} "
                f"shard(s), e.g. {shorten(shards[0])}"
            )
        return None
    if any(folder.glob("*.safetensors")):
        return None
    try:
        others = sorted(p.name for p in folder.iterdir() if p.suffix in _OTHER_FORMATS)
    except OSError as e:
        raise ConfigError(f"{show_path(folder)}: cannot list it ({e.strerror})") from None
    if not others:
        return f"{show_path(folder)}: no weight files"
    more = f" and {len(others) - 1} more" if len(others) > 1 else ""
    return (
        f"{show_path(folder)}: no *.safetensors, only {shorten(others[0])}{more} "
        "(convert to safetensors)"
    )


def weight_map(cfg: ModelConfig) -> dict[str, Path]:
    """Which file holds each weight of `cfg`, from the headers of `cfg.weights.path` (no
    tensor data is read): the index decides which files are read, when there is one.
    Refuses, naming the tensor and file: a tensor in two files, a tensor the index puts in
    another file or does not list, a shard the index names that is not there, a tensor that
    is not a weight of the model, a shape the config does not have, a dtype that is not
    floating point, and a weight no file holds."""
    folder = Path(cfg.weights.path or "")
    index = _index(folder)
    if index is not None:
        files = [folder / s for s in sorted(set(index.values()))]
        absent = [f.name for f in files if path_kind(f) != "file"]
        if absent:
            raise ConfigError(
                f"{INDEX_FILE} names {shorten(absent[0])}, which is not in {show_path(folder)}"
                + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else "")
            )
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(found_weights(folder) or f"{show_path(folder)}: no weight files")
    expected = dict(hf_weight_names(cfg))
    scales = scale_names(cfg)
    scale_of = {s: w for w, s in scales.items()}  # scale tensor -> its FP8 weight
    q = cfg.quantization
    where: dict[str, Path] = {}
    for file in files:
        for name, (dtype, shape) in _header(file).items():
            shown = shorten(name)
            if _ignored(name, cfg):
                continue
            if index is not None and index.get(name) != file.name:
                if name not in index:
                    raise ConfigError(
                        f"{file.name}: tensor '{shown}' is not listed in {INDEX_FILE}"
                    )
                raise ConfigError(
                    f"{file.name}: tensor '{shown}' is here too, but {INDEX_FILE} puts it "
                    f"in {shorten(index[name])}: a tensor in two shards"
                )
            if name not in expected and name not in scale_of:
                raise ConfigError(
                    f"{file.name}: tensor '{shown}' is not a weight of {cfg.family} "
                    f"'{cfg.name}' (a different model?)"
                )
            if name in where:
                raise ConfigError(
                    f"tensor '{shown}' is in both {where[name].name} and {file.name}; keep one, "
                    f"or add a {INDEX_FILE} that says which file holds it"
                )
            if name in scale_of:
                _check_scale(file, name, dtype, shape, expected[scale_of[name]], q.block)
            elif shape != expected[name]:
                raise ConfigError(
                    f"{file.name}: tensor '{shown}' has shape {list(shape)}, the config needs "
                    f"{list(expected[name])}"
                )
            else:
                _check_dtype(file, name, dtype, cfg, fp8=name in scales)
            where[name] = file
    if index is not None:
        for name, shard in index.items():
            if name not in where and not _ignored(name, cfg):
                known = name in expected or name in scale_of
                what = "is missing" if known else "is not a weight of the model"
                raise ConfigError(
                    f"{shorten(shard)}: tensor '{shorten(name)}' {what}, but {INDEX_FILE} "
                    "puts it there"
                )
    missing = [n for n in expected if n not in where]
    if missing:
        raise ConfigError(
            f"{show_path(folder)}: tensor '{missing[0]}' {list(expected[missing[0]])} is missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    missing = [s for s in scales.values() if s not in where]
    if missing:
        raise ConfigError(
            f"{show_path(folder)}: tensor '{missing[0]}' is missing: the scales of the FP8 "
            f"weight '{scale_of[missing[0]]}' (quantization source '{q.source}')"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    # each FP8 weight's scale right after it
    out: dict[str, Path] = {}
    for name in expected:
        out[name] = where[name]
        if name in scales:
            out[scales[name]] = where[scales[name]]
    return out


def _check_dtype(file: Path, name: str, dtype: str, cfg: ModelConfig, *, fp8: bool) -> None:
    """A weight's stored dtype against the config: e4m3 where the quantization says the
    checkpoint holds FP8, a float type everywhere else."""
    shown, q = shorten(name), cfg.quantization
    if fp8 and dtype == "F8_E4M3":
        return
    if fp8 and dtype == "F8_E5M2":
        raise ConfigError(
            f"{file.name}: tensor '{shown}' is F8_E5M2; the quantization config promises "
            "e4m3 (F8_E4M3), the only FP8 format read"
        )
    if fp8 and dtype in FLOAT_DTYPES:
        raise ConfigError(
            f"{file.name}: tensor '{shown}' is {dtype}, but the quantization config stores it "
            "as FP8 e4m3; if the checkpoint keeps this module unquantized, list it in the "
            "config's ignore list (quantization_config 'ignore' / 'modules_to_not_convert')"
        )
    if not fp8 and dtype.startswith("F8_"):
        if q is None:
            why = "the config has no quantization (a config.json without quantization_config)"
        elif q.source == "quantize":
            why = "the config quantizes bf16 weights itself (quantization source 'quantize')"
        else:
            why = (
                "the quantization config keeps it as stored (not a linear projection, or "
                "in its ignore list) and FP8 has no scales here"
            )
        raise ConfigError(f"{file.name}: tensor '{shown}' is {dtype}, but {why}")
    if dtype not in FLOAT_DTYPES:
        raise ConfigError(
            f"{file.name}: tensor '{shown}' is {dtype}; weights must be floating "
            f"point ({', '.join(FLOAT_DTYPES)}): integer checkpoints are not supported"
        )


def _check_scale(
    file: Path,
    name: str,
    dtype: str,
    shape: tuple[int, ...],
    weight: tuple[int, ...],
    block: tuple[int, int] | None,
) -> None:
    grids = scale_grid((weight[0], weight[1]), block)
    if not _scale_fits(shape, grids):
        raise ConfigError(
            f"{file.name}: tensor '{shorten(name)}' has shape {list(shape)}, its FP8 weight "
            f"needs {_scale_wanted(weight, grids)}"
        )
    if dtype not in SCALE_DTYPES:
        raise ConfigError(
            f"{file.name}: tensor '{shorten(name)}' is {dtype}; scales must be "
            f"{', '.join(SCALE_DTYPES)}"
        )


def load_weights(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """All weights named by `hf_weight_names`, float32 on the CPU: the seeded generator, or
    the *.safetensors files of `cfg.weights.path` (checked by `weight_map`, then every value
    for NaN and Inf). A config with no weights bound is one ConfigError saying what was
    found and what to pass. Four bytes a parameter, all at once: what a float32 reference
    needs; the runtimes pack `stream_weights` instead. FP8 weights come dequantized
    (`quant.dequantize`: the values the checkpoint means)."""
    out = {name: _float32(_finite(name, t, where)) for name, t, where in _stream(cfg)}
    # hf_weight_names order, so iteration order never depends on shard layout
    return {name: out[name] for name, _ in hf_weight_names(cfg)}


def stream_weights(cfg: ModelConfig) -> Iterator[Weight]:
    """Every weight of `cfg` once, one tensor at a time and in the dtype stored (a bf16
    checkpoint's tensors stay bf16; random ones are float32), shard by shard: the host
    holds at most the shard being read (mapped) and one tensor. Names and shapes are
    checked first (`weight_map`); values are not: the consumer checks them where they land
    (`runtime.arena.pack_weights`). An FP8 checkpoint's quantized weights come as
    `QuantWeight`s, each read with its scale tensor (the scale as a float32 grid); random
    weights for such a config are quantized the same way (`quant.quantize`, the
    checkpoint's block or one scale per output channel)."""
    for name, t, _ in _stream(cfg):
        yield name, t


def _stream(cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor | QuantWeight, str]]:
    """(name, tensor, where it came from) for stream_weights and load_weights."""
    scales = scale_names(cfg)
    if cfg.weights.seed is not None:
        block = cfg.quantization.block if cfg.quantization is not None else None
        for name, t in _random_stream(cfg):
            yield name, quantize(t, block) if name in scales else t, "random weights"
        return
    if cfg.weights.path is None:
        raise ConfigError(no_weights(cfg))
    where = weight_map(cfg)
    stored = set(scales.values())
    with ExitStack() as stack:
        shards: dict[Path, _Shard] = {}

        def shard(file: Path) -> _Shard:
            if file not in shards:
                shards[file] = stack.enter_context(_Shard(file))
            return shards[file]

        for file in dict.fromkeys(where.values()):
            for name in [n for n, w in where.items() if w == file and n not in stored]:
                t = shard(file).read(name)
                if name in scales:
                    s = scales[name]
                    t = _quant_weight(name, t, shard(where[s]).read(s), s, cfg)
                yield name, t, file.name


def _quant_weight(
    name: str, data: torch.Tensor, scale: torch.Tensor, scale_name: str, cfg: ModelConfig
) -> QuantWeight:
    """An FP8 weight and its scale tensor (shapes checked by `weight_map`) as a QuantWeight."""
    q = from_checkpoint(data, scale, cfg.quantization.block)
    if q is None:  # weight_map checked the header; the data disagrees with it
        raise ConfigError(f"tensor '{shorten(scale_name)}' does not fit '{shorten(name)}'")
    return q


# safetensors dtypes we read (weight_map refuses the others) and their torch dtypes
_TORCH_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
}


class _Shard:
    """One safetensors file open for reading tensors by name, each with one positioned
    read into a tensor of its own (the format: an 8-byte little-endian header length, a
    JSON header of dtype, shape and data offsets, then the data). Not through a memory
    map: the mapped pages of a shard count as the process's memory until it is closed, a
    read's pages do not."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.f = open(file, "rb")  # noqa: SIM115 (closed by __exit__)
        try:
            n = int.from_bytes(self.f.read(8), "little")
            self.header = json.loads(self.f.read(n))
        except Exception as e:
            self.f.close()
            raise self._unreadable(e) from None
        self.start = 8 + n

    def __enter__(self) -> _Shard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()

    def _unreadable(self, e: Exception) -> ConfigError:
        return ConfigError(f"{self.file.name}: not a readable safetensors file ({shorten(str(e))})")

    def read(self, name: str) -> torch.Tensor:
        try:
            h = self.header[name]
            lo, hi = h["data_offsets"]
            dtype = _TORCH_DTYPES[h["dtype"]]
            t = torch.empty(hi - lo, dtype=torch.uint8)
            self.f.seek(self.start + lo)
            got = self.f.readinto(t.numpy())
            if got == hi - lo:
                return t.view(dtype).reshape(h["shape"])
        except Exception as e:  # truncated data, an offset past the end
            raise self._unreadable(e) from None
        raise ConfigError(f"{self.file.name}: tensor '{shorten(name)}' is cut short")


def check_weights(cfg: ModelConfig, weights: Any) -> None:
    """Weights handed in through the Python API (`cm.interpret(ids, weights=...)`) under
    the rules `load_weights` applies to files: every name, its shape, floating point,
    finite."""
    if not isinstance(weights, Mapping):
        raise ConfigTypeError(
            f"weights must be a dict of tensor name -> torch.Tensor (got {type(weights).__name__})"
        )
    fp8 = cfg.quantization is not None
    for name, shape in hf_weight_names(cfg):
        t = weights.get(name)
        if t is None:
            raise ConfigError(f"weights: tensor '{name}' {list(shape)} is missing")
        if isinstance(t, QuantWeight):
            if not (fp8 and cfg.quantization.quantizes(name)):
                raise ConfigError(
                    f"weights: '{name}' is a QuantWeight (FP8), but the config does not "
                    "quantize it; hand it in as a float tensor"
                )
            _check_quant_weight(name, t, shape)
            _finite(name, t, "weights")
            continue
        if not isinstance(t, torch.Tensor):
            raise ConfigTypeError(
                f"weights: '{name}' must be a torch.Tensor (got {type(t).__name__})"
            )
        if tuple(t.shape) != shape:
            raise ConfigError(
                f"weights: tensor '{name}' has shape {list(t.shape)}, the config needs "
                f"{list(shape)}"
            )
        if not t.is_floating_point():
            raise ConfigError(f"weights: tensor '{name}' is {t.dtype}; weights must be floats")
        if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            raise ConfigError(
                f"weights: tensor '{name}' is {t.dtype}; an FP8 weight is handed in as a "
                "QuantWeight (its e4m3 values and their scales)"
            )
        _finite(name, t, "weights")


def _check_quant_weight(name: str, q: QuantWeight, shape: tuple[int, ...]) -> None:
    """A QuantWeight handed in through the Python API: e4m3 data of the weight's shape, a
    float32 scale grid that fits its block."""
    if not isinstance(q.data, torch.Tensor) or q.data.dtype != torch.float8_e4m3fn:
        got = getattr(q.data, "dtype", type(q.data).__name__)
        raise ConfigError(f"weights: '{name}' data is {got}; FP8 weights are float8_e4m3fn")
    if tuple(q.data.shape) != shape:
        raise ConfigError(
            f"weights: tensor '{name}' has shape {list(q.data.shape)}, the config needs "
            f"{list(shape)}"
        )
    block = q.block
    if not (
        isinstance(block, tuple)
        and len(block) == 2
        and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)
    ):
        raise ConfigError(f"weights: '{name}' block must be two positive integers (got {block})")
    grid = [-(-shape[0] // block[0]), -(-shape[1] // block[1])]
    scale = q.scale
    if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32:
        got = getattr(scale, "dtype", type(scale).__name__)
        raise ConfigError(f"weights: '{name}' scales are {got}; they must be float32")
    if list(scale.shape) != grid:
        raise ConfigError(
            f"weights: '{name}' scales have shape {list(scale.shape)}, block {list(block)} of "
            f"{list(shape)} needs {grid}"
        )


def no_weights(cfg: ModelConfig) -> str:
    """What a config with no weights bound says when weights are needed."""
    return (
        f"{cfg.name} has no weights to run with ({cfg.weights.none}); pass weights "
        "(tilert-run --weights DIR; in Python a dict of tensors as weights=), or compile "
        "with random ones (--random-weights; overrides={'weights': {'random': 0}})"
    )


INDEX_FILE = "model.safetensors.index.json"
FLOAT_DTYPES = ("BF16", "F16", "F32", "F64")
SCALE_DTYPES = ("F32", "BF16", "F16")  # an FP8 weight's scales
MAX_INDEX_BYTES = 64 << 20  # llama-3.1-405b's index is ~100 KB
# Weight files in formats we do not read, named when a folder has no safetensors.
_OTHER_FORMATS = (".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".npz")


def _index(folder: Path) -> dict[str, str] | None:
    """model.safetensors.index.json's weight_map (tensor -> shard file), None if absent."""
    path = folder / INDEX_FILE
    if path_kind(path) is None:
        return None
    data = parse_json(read_text(path, "safetensors index", limit=MAX_INDEX_BYTES), INDEX_FILE)
    wm = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wm, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in wm.items()
    ):
        raise ConfigError(
            f"{INDEX_FILE}: field 'weight_map' must be a mapping of tensor names to file names"
        )
    for shard in wm.values():
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise ConfigError(
                f"{INDEX_FILE}: shard {show_value(shard)} must be a file name in the same folder"
            )
    return wm


def _header(file: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """tensor name -> (dtype, shape), from a safetensors header."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            out = {}
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                s = f.get_slice(name)
                out[name] = (s.get_dtype(), tuple(s.get_shape()))
            return out
    except Exception as e:  # safetensors raises its own error type for a bad header
        raise ConfigError(
            f"{file.name}: not a readable safetensors file ({shorten(str(e))})"
        ) from None


def _ignored(name: str, cfg: ModelConfig) -> bool:
    # the tied head is the embedding; inv_freq is a recomputed buffer; an FP8 checkpoint's
    # activation scales serve W8A8 numerics, not these weight-only ones
    return (
        (name == "lm_head.weight" and cfg.tie_embeddings)
        or name.endswith(_IGNORED_SUFFIXES)
        or (_fp8_stored(cfg) and name.endswith(ACTIVATION_SUFFIXES))
    )


def _fp8_stored(cfg: ModelConfig) -> bool:
    """Whether the checkpoint itself holds FP8 weights and their scales."""
    return cfg.quantization is not None and cfg.quantization.source in SCALE_SUFFIX


def _float32(t: torch.Tensor | QuantWeight) -> torch.Tensor:
    return dequantize(t) if isinstance(t, QuantWeight) else t.to(torch.float32)


def _finite(name: str, t: torch.Tensor | QuantWeight, where: str) -> torch.Tensor | QuantWeight:
    if isinstance(t, QuantWeight):
        _finite(f"{name} (its scales)", t.scale, where)
        _finite(name, t.data, where)
        return t
    if t.dtype == torch.float8_e4m3fn:  # no Inf; NaN is S.1111.111 (isfinite has no fp8)
        bad = (t.view(torch.uint8) & 0x7F) == 0x7F
        if bool(bad.any()):
            raise ConfigError(
                f"{where}: tensor '{shorten(name)}' holds NaN ({int(bad.sum())} of "
                f"{t.numel()} FP8 values); a damaged checkpoint?"
            )
    elif t.is_floating_point():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            n = int(bad.sum())
            raise ConfigError(
                f"{where}: tensor '{shorten(name)}' holds NaN or Inf ({n} of {t.numel()} values); "
                "a damaged checkpoint?"
            )
    return t


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
