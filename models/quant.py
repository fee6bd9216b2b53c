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
