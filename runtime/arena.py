"""The artifact's two arenas at run time, shared by the GPU runtime and the interpreter:
the weights arena (every weight tensor flattened at its manifest offset) and the act arena
(activations and KV cache), which starts as NaN so that reading anything no task wrote
poisons the logits instead of passing silently."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from tilert_compiler.ir.precision import FP8, kernel_block, scale_cols
from tilert_compiler.models.quant import QuantWeight, dequantize, quantize
from tilert_compiler.models.text import ConfigError
from tilert_compiler.runtime.artifact import Artifact

WeightValue = torch.Tensor | QuantWeight  # a checkpoint's tensor, or its FP8 form


def pack_weights(
    art: Artifact,
    weights: Mapping[str, WeightValue] | Iterable[tuple[str, WeightValue]],
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The weights arena [manifest arenas.weights] in `dtype` on `device`: each weight of
    the manifest at its offset. `weights`: a dict, or (name, tensor) pairs as
    `models.weights.stream_weights` yields them, each copied into place as it comes (so
    the host never holds more than one). A tensor missing, of another shape, or not finite
    once in `dtype` (NaN or Inf handed in, or past bf16's range) is one ConfigError naming
    it; a name the manifest does not have is ignored, as a dict's extra keys are.

    An artifact with FP8 weights (manifest dtype fp8e4m3) packs raw: `dtype` must be
    bfloat16 (2-byte units); its FP8 tensors take a `QuantWeight` (models/quant.py) or a
    plain tensor, which is quantized with the manifest's scale block; their rows are laid
    out as ir/precision.py says. A QuantWeight where the manifest has bf16 is dequantized."""
    places = {t["name"]: t for t in art.manifest["tensors"] if t["arena"] == "weights"}
    if art.fp8 and dtype != torch.bfloat16:
        raise ConfigError(
            "weights: an artifact with FP8 weights packs its arena as raw 2-byte units "
            f"(bfloat16), not {str(dtype)[6:]}"
        )
    arena = torch.zeros(art.manifest["arenas"]["weights"], dtype=dtype, device=device)
    pairs = weights.items() if isinstance(weights, Mapping) else weights
    placed: set[str] = set()
    bar = _progress(sum(math.prod(t["shape"]) for t in places.values()), device)
    for name, w in pairs:
        t = places.get(name)
        if t is None:
            continue
        if tuple(w.shape) != tuple(t["shape"]):
            raise ConfigError(
                f"weights: '{name}' has shape {tuple(w.shape)}, the artifact expects "
                f"{tuple(t['shape'])}"
            )
        if t.get("dtype") == FP8:
            rows = fp8_rows(name, w, tuple(t["block"]), t["row_bytes"])
            seg = arena[t["offset"] : t["offset"] + t["elements"]]
            seg.view(torch.uint8).copy_(rows.reshape(-1))
        else:
            if isinstance(w, QuantWeight):
                w = dequantize(w)
            seg = arena[t["offset"] : t["offset"] + w.numel()]
            seg.copy_(w.reshape(-1))  # converts to the arena's dtype (on the device, for bf16)
            if not _finite(seg):
                raise ConfigError(
                    f"weights: tensor '{name}' holds NaN or Inf (as {str(dtype)[6:]}); "
                    "a damaged checkpoint?"
                )
        placed.add(name)
        bar.update(math.prod(t["shape"]))
    bar.close()
    missing = [n for n in places if n not in placed]
    if missing:
        raise ConfigError(f"weights: missing tensor '{missing[0]}'")
    return arena


def fp8_rows(name: str, w: WeightValue, block: tuple[int, int], row_bytes: int) -> torch.Tensor:
    """uint8 [N, row_bytes] on the CPU: each row's e4m3 values, then its scales (float32,
    one per k-block of the kernel's width: min(bk, K)), then zeros (ir/precision.py). `w`
    a QuantWeight (its own scale block may be coarser than `block`: per-tensor, say, is
    repeated) or a tensor, quantized here with `block` (models.quant.quantize)."""
    q = w if isinstance(w, QuantWeight) else quantize(w.detach().float().cpu(), block)
    n, k = q.shape
    qbk = kernel_block(k, block[1])
    bn, bk = q.block
    if not (bk >= k or bk % qbk == 0):
        raise ConfigError(
            f"weights: '{name}' has FP8 scale blocks {bn}x{bk}, the artifact applies one "
            f"scale per {qbk} columns; recompile with the checkpoint's quantization"
        )
    data = q.data.cpu().contiguous()
    scale = q.scale.cpu().float()
    nan = (data.view(torch.uint8) & 0x7F) == 0x7F  # e4m3fn's only non-finite codes
    if bool(nan.any()) or not bool(torch.isfinite(scale).all()):
        raise ConfigError(f"weights: FP8 tensor '{name}' holds NaN or Inf; a damaged checkpoint?")
    cols = torch.arange(scale_cols(k, qbk)) * qbk // bk  # the q block of each kernel block
    per_row = scale[torch.arange(n) // bn][:, cols].contiguous()  # [N, G]
    rows = torch.zeros(n, row_bytes, dtype=torch.uint8)
    rows[:, :k] = data.view(torch.uint8)
    rows[:, k : k + 4 * per_row.shape[1]] = per_row.view(torch.uint8)
    return rows


def _finite(seg: torch.Tensor, chunk: int = 1 << 24) -> bool:
    """Whether every value of `seg` is finite, checked 16 M values at a time: on the CPU
    `isfinite` of a whole 262 M-value embedding took 1.7 GB of temporaries."""
    return all(bool(torch.isfinite(seg[i : i + chunk]).all()) for i in range(0, seg.numel(), chunk))


def _progress(total: int, device: torch.device | str):
    """A tqdm bar over weight elements, on stderr when it is a terminal and the weights are
    big enough to take seconds (over 100 M parameters)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="param",
        unit_scale=True,
        desc=f"weights to {device}",
        disable=None if total > 100_000_000 else True,
        leave=False,
    )


def weights_arena(
    art: Artifact,
    weights: torch.Tensor | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The weights arena a runtime runs with: `weights` itself when it is one packed
    already (checked: arenas.weights values of `dtype` on `device`, else one ConfigError),
    otherwise `pack_weights` of it."""
    if not isinstance(weights, torch.Tensor):
        return pack_weights(art, weights, dtype, device)
    n, dev = art.manifest["arenas"]["weights"], torch.device(device)
    if weights.dtype != dtype or weights.device != dev or tuple(weights.shape) != (n,):
        raise ConfigError(
            f"weights: a packed weights arena must be {n} {str(dtype)[6:]} values on {dev} (got "
            f"{tuple(weights.shape)} {str(weights.dtype)[6:]} on {weights.device})"
        )
    return weights


def act_arena(art: Artifact, device: torch.device | str = "cpu") -> torch.Tensor:
    """The act arena [manifest arenas.act], float32, all NaN."""
    return torch.full((art.manifest["arenas"]["act"],), float("nan"), device=device)


def held_values(manifest: dict, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights as an artifact's arena holds them, for a float32 reference to run on:
    each FP8 tensor of the manifest quantized with its scale block and dequantized
    (models.quant, as pack_weights quantizes it), float32; the others as given. Replaces
    the FP8 tensors in `weights` itself (a large model's float32 weights fit the host
    once) and returns it."""
    for t in manifest["tensors"]:
        if t.get("dtype") == FP8 and t["name"] in weights:
            w = weights[t["name"]]
            q = w if isinstance(w, QuantWeight) else quantize(w.float(), tuple(t["block"]))
            weights[t["name"]] = dequantize(q)
    return weights
