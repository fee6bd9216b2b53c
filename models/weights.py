"""Model weights by their Hugging Face names: the fixed name/shape list every later stage
relies on, the seeded random generator, and loading (and checking) *.safetensors folders:
the index (model.safetensors.index.json) decides which files are read; names, shapes and
dtypes are checked from the headers before anything is compiled, values for NaN and Inf
when they are loaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from tilert_compiler.models.quant import QuantWeight
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
Weight = tuple[str, torch.Tensor]  # a weight's Hugging Face name and its tensor

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
            if name not in expected:
                raise ConfigError(
                    f"{file.name}: tensor '{shown}' is not a weight of {cfg.family} "
                    f"'{cfg.name}' (a different model?)"
                )
            if name in where:
                raise ConfigError(
                    f"tensor '{shown}' is in both {where[name].name} and {file.name}; keep one, "
                    f"or add a {INDEX_FILE} that says which file holds it"
                )
            if shape != expected[name]:
                raise ConfigError(
                    f"{file.name}: tensor '{shown}' has shape {list(shape)}, the config needs "
                    f"{list(expected[name])}"
                )
            if dtype not in FLOAT_DTYPES:
                raise ConfigError(
                    f"{file.name}: tensor '{shown}' is {dtype}; weights must be floating "
                    f"point ({', '.join(FLOAT_DTYPES)}): quantized or integer checkpoints "
                    "are not supported"
                )
            where[name] = file
    if index is not None:
        for name, shard in index.items():
            if name not in where and not _ignored(name, cfg):
                what = "is missing" if name in expected else "is not a weight of the model"
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
    return {name: where[name] for name in expected}


def load_weights(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """All weights named by `hf_weight_names`, float32 on the CPU: the seeded generator, or
    the *.safetensors files of `cfg.weights.path` (checked by `weight_map`, then every value
    for NaN and Inf). A config with no weights bound is one ConfigError saying what was
    found and what to pass. Four bytes a parameter, all at once: what a float32 reference
    needs; the runtimes pack `stream_weights` instead."""
    out = {name: _finite(name, t, where).to(torch.float32) for name, t, where in _stream(cfg)}
    # hf_weight_names order, so iteration order never depends on shard layout
    return {name: out[name] for name, _ in hf_weight_names(cfg)}


def stream_weights(cfg: ModelConfig) -> Iterator[Weight]:
    """Every weight of `cfg` once, one tensor at a time and in the dtype stored (a bf16
    checkpoint's tensors stay bf16; random ones are float32), shard by shard: the host
    holds at most the shard being read (mapped) and one tensor. Names and shapes are
    checked first (`weight_map`); values are not: the consumer checks them where they land
    (`runtime.arena.pack_weights`)."""
    for name, t, _ in _stream(cfg):
        yield name, t


def _stream(cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor, str]]:
    """(name, tensor, where it came from) for stream_weights and load_weights."""
    if cfg.weights.seed is not None:
        for name, t in _random_stream(cfg):
            yield name, t, "random weights"
        return
    if cfg.weights.path is None:
        raise ConfigError(no_weights(cfg))
    where = weight_map(cfg)
    for file in dict.fromkeys(where.values()):
        names = [n for n, w in where.items() if w == file]
        try:
            for name, t in _read_tensors(file, names):
                yield name, t, file.name
        except ConfigError:
            raise
        except Exception as e:  # truncated data, an offset past the end
            raise ConfigError(
                f"{file.name}: not a readable safetensors file ({shorten(str(e))})"
            ) from None


# safetensors dtypes we read (weight_map refuses the others) and their torch dtypes
_TORCH_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
}


def _read_tensors(file: Path, names: list[str]) -> Iterator[Weight]:
    """`names` from one safetensors file, each read with one positioned read into a tensor
    of its own (the format: an 8-byte little-endian header length, a JSON header of dtype,
    shape and data offsets, then the data). Not through a memory map: the mapped pages of
    a shard count as the process's memory until it is closed, a read's pages do not."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        start = 8 + n
        for name in names:
            h = header[name]
            lo, hi = h["data_offsets"]
            dtype = _TORCH_DTYPES[h["dtype"]]
            t = torch.empty(hi - lo, dtype=torch.uint8)
            f.seek(start + lo)
            if f.readinto(t.numpy()) != hi - lo:
                raise ConfigError(f"{file.name}: tensor '{shorten(name)}' is cut short")
            yield name, t.view(dtype).reshape(h["shape"])


def check_weights(cfg: ModelConfig, weights: Any) -> None:
    """Weights handed in through the Python API (`cm.interpret(ids, weights=...)`) under
    the rules `load_weights` applies to files: every name, its shape, floating point,
    finite."""
    if not isinstance(weights, Mapping):
        raise ConfigTypeError(
            f"weights must be a dict of tensor name -> torch.Tensor (got {type(weights).__name__})"
        )
    for name, shape in hf_weight_names(cfg):
        t = weights.get(name)
        if t is None:
            raise ConfigError(f"weights: tensor '{name}' {list(shape)} is missing")
        if not isinstance(t, (torch.Tensor, QuantWeight)):
            raise ConfigTypeError(
                f"weights: '{name}' must be a torch.Tensor (got {type(t).__name__})"
            )
        if tuple(t.shape) != shape:
            raise ConfigError(
                f"weights: tensor '{name}' has shape {list(t.shape)}, the config needs "
                f"{list(shape)}"
            )
        if isinstance(t, QuantWeight):  # FP8: runtime.arena checks it as it packs it
            continue
        if not t.is_floating_point():
            raise ConfigError(f"weights: tensor '{name}' is {t.dtype}; weights must be floats")
        _finite(name, t, "weights")


def no_weights(cfg: ModelConfig) -> str:
    """What a config with no weights bound says when weights are needed."""
    return (
        f"{cfg.name} has no weights to run with ({cfg.weights.none}); pass weights "
        "(tilert-run --weights DIR; in Python a dict of tensors as weights=), or compile "
        "with random ones (--random-weights; overrides={'weights': {'random': 0}})"
    )


INDEX_FILE = "model.safetensors.index.json"
FLOAT_DTYPES = ("BF16", "F16", "F32", "F64")
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
    # the tied head is the embedding; inv_freq is a recomputed buffer
    return (name == "lm_head.weight" and cfg.tie_embeddings) or name.endswith(_IGNORED_SUFFIXES)


def _finite(name: str, t: torch.Tensor, where: str) -> torch.Tensor:
    if t.is_floating_point():
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
