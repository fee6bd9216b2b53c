"""FP8 weight-only quantization: the one form every FP8 source is brought to.

Checkpoints ship FP8 weights three ways (block-wise 128x128 `weight_scale_inv`,
compressed-tensors per-channel or per-tensor `weight_scale`, or none: `--quantize fp8`
makes per-output-channel scales from bf16). All three become a `QuantWeight`: e4m3 values
and a float32 grid of scales, one scale per (bn x bk) block of the [N, K] matrix, so that

    W[n, k] ~= float(data[n, k]) * scale[n // bn, k // bk]

Per-tensor is the grid [1, 1] with block (N, K); per output channel [N, 1] with (1, K);
block-wise [ceil(N/128), ceil(K/128)] with (128, 128). The activations stay in the
kernel's own precision (float32 in registers): only the weights are dequantized, the
kernel and the interpreter alike (`dequantize` is the rule both follow).

`Quantization.block` says what the checkpoint promises for the whole model; each
`QuantWeight` carries the block it actually has. `block=None` promises scales that do not
change along K: one per output channel ([N, 1], block (1, K)) or one per tensor ([1, 1],
block (N, K), which compressed-tensors' `strategy: "tensor"` and an HF fp8 config with
`weight_block_size: null` ship). Both arrive as they are stored; `per_channel` turns a
per-tensor weight into the per-channel form without loss for a consumer that wants one.

Both checkpoint formats multiply: W ~= fp8 * scale. For the HF format this holds despite
the name `weight_scale_inv` (checked in transformers 5.25,
`transformers/integrations/finegrained_fp8.py`: `_dequantize_fp8_weight` does
`weight.mul_(weight_scale_inv)`, `Fp8Dequantize._dequantize_one` returns `q * s` per block,
and `Fp8Quantize` stores `weight_scale_inv = 1 / (448 / amax) = amax / 448`). For
compressed-tensors (`compressors/quantized_compressors/naive_quantized.py`, whose
`FloatQuantizationCompressor` is the `float-quantized` format, decompresses with
`quantization/lifecycle/forward.py` `dequantize`: `x_q * scale`, after `quantize` divided
by it) `weight_scale` is the same kind of factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_MAX = 448.0  # the largest finite e4m3 value

# the linear projections that take FP8; embeddings, norms and the LM head stay as stored
QUANTIZABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Quantization:
    """A model's weight quantization. `block`: the scale block (bn, bk), None for one
    scale per output channel. `ignore`: weight names (or their module prefixes) kept as
    stored, as compressed-tensors' `ignore` list says. `source`: where the FP8 values come
    from: "fp8" (the HF block-wise format), "compressed-tensors", or "quantize" (made
    from bf16 when compiling or loading)."""

    method: str = "fp8"
    fmt: str = "e4m3"
    block: tuple[int, int] | None = None
    ignore: tuple[str, ...] = ()
    source: str = "quantize"

    def quantizes(self, name: str) -> bool:
        """Whether the weight `name` (an HF tensor name) is stored as FP8."""
        module = name.removesuffix(".weight")
        if not name.endswith(".weight") or module.rsplit(".", 1)[-1] not in QUANTIZABLE:
            return False
        return not any(module == i or module.startswith(i + ".") for i in self.ignore)


@dataclass(frozen=True)
class QuantWeight:
    """An FP8 weight: `data` float8_e4m3fn [N, K], `scale` float32 [ceil(N/bn),
    ceil(K/bk)] for `block` (bn, bk)."""

    data: torch.Tensor
    scale: torch.Tensor
    block: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)


def expand_scale(q: QuantWeight) -> torch.Tensor:
    """The scale of every element, float32 [N, K]."""
    n, k = q.shape
    bn, bk = q.block
    return q.scale.repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)[:, :k]


def dequantize(q: QuantWeight) -> torch.Tensor:
    """float32 [N, K]: each e4m3 value times its block's scale, in float32."""
    return q.data.float() * expand_scale(q)


def quantize(w: torch.Tensor, block: tuple[int, int] | None = None) -> QuantWeight:
    """`w` [N, K] as FP8 e4m3 with one scale per `block` (None: per output channel): each
    block's absolute maximum maps to 448 (a zero block gets scale 1)."""
    w = w.float()
    n, k = w.shape
    bn, bk = block or (1, k)
    gn, gk = -(-n // bn), -(-k // bk)
    padded = torch.zeros(gn * bn, gk * bk)
    padded[:n, :k] = w.abs()
    amax = padded.reshape(gn, bn, gk, bk).amax(dim=(1, 3))
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    data = (w / expand_scale(QuantWeight(w, scale, (bn, bk)))).to(torch.float8_e4m3fn)
    return QuantWeight(data, scale, (bn, bk))


# The scale tensor stored beside each FP8 `X.weight`, by `Quantization.source`.
SCALE_SUFFIX = {"fp8": "weight_scale_inv", "compressed-tensors": "weight_scale"}
# Tensors a checkpoint may store for the W8A8 numerics it was made for (a static activation
# scale per linear): read past, never used; only the weights are quantized here.
ACTIVATION_SUFFIXES = (".input_scale", ".activation_scale")


def scale_name(q: Quantization, name: str) -> str | None:
    """The checkpoint tensor holding the scales of the FP8 weight `name`; None when the
    weight is not stored as FP8 (not quantized, or `source` "quantize": bf16 on disk)."""
    suffix = SCALE_SUFFIX.get(q.source)
    if suffix is None or not q.quantizes(name):
        return None
    return name.removesuffix("weight") + suffix


def scale_grid(
    shape: tuple[int, int], block: tuple[int, int] | None
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The (grid, block) pairs a stored scale of weight `shape` [N, K] may have under the
    promise `block`: the one grid of that block, or for None per channel then per tensor."""
    n, k = shape
    if block is not None:
        bn, bk = block
        return [((-(-n // bn), -(-k // bk)), (bn, bk))]
    return [((n, 1), (1, k)), ((1, 1), (n, k))]


def from_checkpoint(
    data: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None
) -> QuantWeight | None:
    """A stored FP8 weight and its scale tensor as a QuantWeight (the scale as a float32
    grid), or None when the scale's shape fits none of `scale_grid`'s. A per-channel scale
    may be stored [N, 1] or [N], a per-tensor one as a scalar, [1] or [1, 1]."""
    numel = scale.numel()
    for (gn, gk), blk in scale_grid(tuple(data.shape), block):
        flat_ok = scale.dim() <= 1 and gk == 1 and numel == gn
        if tuple(scale.shape) == (gn, gk) or flat_ok or (numel == 1 == gn * gk):
            return QuantWeight(data, scale.float().reshape(gn, gk), blk)
    return None


def per_channel(q: QuantWeight) -> QuantWeight:
    """A weight whose scales do not change along K (per tensor or per channel) as one
    scale per output channel: grid [N, 1], block (1, K). The same values."""
    n, k = q.shape
    if q.block[1] < k:
        raise ValueError(f"a block of {q.block} changes scale along K={k}: not per channel")
    return QuantWeight(q.data, expand_scale(q)[:, :1].contiguous(), (1, k))
