"""Sampling: one definition for the host loop, the interpreter and the kernel's sample task.

- temperature 0: greedy, the first index of the largest logit.
- Otherwise z = logits / temperature, then
  - top-k (k > 0): keep z >= the k-th largest z (ties at the threshold kept);
  - top-p (p < 1): among those, in descending order, keep every token whose strictly
    larger-ranked tokens hold less than p of the kept mass (so the top token always
    stays); as a threshold: keep z >= tau, tau the value where the inclusive mass first
    reaches p. These are Hugging Face's TopK and TopP warpers, applied in that order;
  - a draw: u = uniform(seed, pos) in [0, 1); the token is the first index, in vocabulary
    order, where the running sum of exp(z - max z) over kept tokens exceeds u times their
    total.

The draw depends only on (seed, pos), not on a generator's history, so the kernel can
sample with no state carried between steps, and a sequence generated in one launch or in
many gets the same tokens. The kernel finds the thresholds by a radix select over the
logits' bits and sums in float32; the functions here sort and sum in float64. They agree
except where a threshold or the draw falls within float32 rounding of a boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK64 = (1 << 64) - 1


class GenerationError(ValueError):
    """The request does not fit the artifact (cache length, vocabulary, parameters)."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise GenerationError(
                f"sampling needs temperature >= 0, 0 < top_p <= 1, top_k >= 0 "
                f"(got {self.temperature}, {self.top_p}, {self.top_k})"
            )
        if not 0 <= self.seed < 2**63:
            raise GenerationError(f"seed must be in [0, 2^63) (got {self.seed})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling()


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def uniform(seed: int, pos: int) -> float:
    """A uniform draw in [0, 1) for the token at cache position `pos` (24 bits, exact in
    float32; the kernel computes the same bits)."""
    h = _splitmix64(_splitmix64(seed) ^ (pos & _MASK64))
    return (h >> 40) * 2.0**-24


def scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """z = logits / temperature in float32 (IEEE division, as the kernel does)."""
    return logits.float() / torch.tensor(temperature, dtype=torch.float32)


def keep_threshold(z: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> float:
    """The smallest kept value: tokens with z >= it survive top-k, then top-p."""
    zs = torch.sort(z.double(), descending=True).values
    if 0 < top_k < zs.numel():
        zs = zs[zs >= zs[top_k - 1]]
    if top_p < 1:
        incl = torch.cumsum(torch.exp(zs - zs[0]), 0)
        j = int(torch.searchsorted(incl, top_p * incl[-1]))  # first j with incl >= target
        zs = zs[zs >= zs[min(j, zs.numel() - 1)]]
    return float(zs[-1])


def draw(z: torch.Tensor, tau: float, u: float) -> int:
    """The first index whose running kept mass exceeds u times the total."""
    zd = z.double()
    w = torch.where(zd >= tau, torch.exp(zd - zd.max()), torch.zeros_like(zd))
    run = torch.cumsum(w, 0)
    i = int(torch.searchsorted(run, u * run[-1], right=True))
    if i >= z.numel():  # u * total rounded up to total: the last kept token
        i = int(torch.nonzero(w).max())
    return i


def sample_token(logits: torch.Tensor, s: Sampling, pos: int) -> int:
    """The token drawn from `logits` [vocab] for cache position `pos` (the position the
    token will be fed at is pos + 1; the draw is keyed by the logits' own position)."""
    if s.greedy:
        return int(torch.argmax(logits))
    z = scaled(logits, s.temperature)
    return draw(z, keep_threshold(z, s.top_k, s.top_p), uniform(s.seed, pos))
