"""Sampling: one definition for the host loop, the interpreter and the kernel's sample task.

- temperature 0: greedy, the first index of the largest logit. So is a temperature below
  GREEDY_BELOW (1e-30), or one that makes a logit overflow float32 when divided by it.
  Parameters are checked when a Sampling is made: finite, in range, one line if not.
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

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from tilert_compiler.ir.lm_parts import (
    AT,
    BEST,
    BOUND,
    COUNT,
    LOW,
    PART_HEADER,
    ROW0,
    ROWS,
    SAMPLE_LIST,
    SUMEXP,
    part_floats,
)

_MASK64 = (1 << 64) - 1


class GenerationError(ValueError):
    """The request does not fit the artifact (cache length, vocabulary, parameters)."""


class RequestTypeError(GenerationError, TypeError):
    """A request argument of the wrong type (a 2-D token list, a string temperature): a
    GenerationError, so it carries the one-line message, and a TypeError."""


# The kernel takes temperature and top_p as float32 and divides the logits by the
# temperature in float32. Below this temperature a logit of 3.4e8 already overflows
# (float32's largest value is 3.4e38), and long before that the draw keeps only the
# largest logit: such a temperature is greedy, on the host and in the kernel alike.
GREEDY_BELOW = 1e-30
FLOAT32_MAX = 3.4028234663852886e38
MAX_TOP_K = 2**31 - 1  # the kernel's int


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        t = _number(self.temperature, "temperature")
        if t < 0:
            raise GenerationError(
                f"temperature must be a finite number >= 0, 0 for greedy (got {_shown(t)})"
            )
        if t > FLOAT32_MAX:
            raise GenerationError(
                f"temperature must be at most 3.4e38, the kernel's float32 (got {_shown(t)})"
            )
        p = _number(self.top_p, "top_p")
        if not 0 < p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], 1 for all tokens (got {_shown(p)})")
        k = _integer(self.top_k, "top_k")
        if not 0 <= k <= MAX_TOP_K:
            raise GenerationError(f"top_k must be in [0, 2^31), 0 for all tokens (got {k})")
        seed = _integer(self.seed, "seed")
        if not 0 <= seed < 2**63:
            raise GenerationError(f"seed must be in [0, 2^63) (got {seed})")
        # plain Python numbers from here on (numpy scalars, 0-d tensors in)
        object.__setattr__(self, "temperature", t)
        object.__setattr__(self, "top_p", p)
        object.__setattr__(self, "top_k", k)
        object.__setattr__(self, "seed", seed)

    @property
    def greedy(self) -> bool:
        """Greedy: temperature 0, or one so small that dividing by it overflows."""
        return self.temperature < GREEDY_BELOW


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise RequestTypeError(f"{name} must be a number (got {type(value).__name__})")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise RequestTypeError(f"{name} must be a number (got a tensor of {value.numel()})")
        value = value.item()
    value = float(value)
    if not math.isfinite(value):
        raise GenerationError(f"{name} must be a finite number (got {_shown(value)})")
    return value


def _integer(value, name: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RequestTypeError(f"{name} must be an integer (got {type(value).__name__})")
    return int(value)


def _shown(x: float) -> str:
    return f"{x:g}"


def check_tokens(ids, vocab: int, what: str = "token_ids", *, empty: bool = False) -> list[int]:
    """`ids` as a list of ints: a flat sequence (list, tuple, 1-D tensor or array) of
    integers in [0, vocab), non-empty unless `empty`; otherwise one GenerationError line."""
    if hasattr(ids, "tolist") and not isinstance(ids, (str, bytes)):
        ids = ids.tolist()  # a tensor or an array; a 2-D one becomes nested lists
    if isinstance(ids, (str, bytes, Mapping)) or not isinstance(ids, Iterable):
        raise RequestTypeError(f"{what} must be a sequence of token ids (got {type(ids).__name__})")
    out = []
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, numbers.Integral):
            raise RequestTypeError(
                f"{what} must be a flat sequence of integers (item {i} is {type(t).__name__})"
            )
        if not 0 <= t < vocab:
            raise GenerationError(
                f"{what}: token {int(t)} is outside the vocabulary (0..{vocab - 1})"
            )
        out.append(int(t))
    if not out and not empty:
        raise GenerationError(f"{what} must hold at least one token")
    return out


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
    if not bool(torch.isfinite(z[torch.isfinite(logits)]).all()):
        return int(torch.argmax(logits))  # logits / temperature overflowed: greedy
    return draw(z, keep_threshold(z, s.top_k, s.top_p), uniform(s.seed, pos))


# ---------------------------------------------------------------- the LM head's partials
# ir/lm_parts.py has their layout; the interpreter writes and merges them with these.


def lm_head_part(y: torch.Tensor, row0: int, temperature: float, cands: int) -> torch.Tensor:
    """The partial of the LM-head task whose rows [row0, row0 + len(y)) have logits y."""
    y = y.float()
    out = torch.zeros(part_floats(cands), dtype=torch.float32)
    i = int(torch.argmax(y))
    out[BEST], out[AT] = y[i], float(row0 + i)
    out[ROW0], out[ROWS], out[LOW] = float(row0), float(y.numel()), y.min()
    z = scaled(y, temperature)
    out[SUMEXP] = float(torch.exp(z.double() - float(z[i])).sum())
    bound = float("-inf")
    if y.numel() > cands:
        bound = float(torch.sort(y, descending=True).values[cands])
    keep = torch.nonzero(y > bound).flatten()
    out[BOUND], out[COUNT] = bound, float(keep.numel())
    pairs = out[PART_HEADER : PART_HEADER + 2 * keep.numel()].view(-1, 2)
    pairs[:, 0], pairs[:, 1] = y[keep], (row0 + keep).float()
    return out


def draw_from_parts(parts: torch.Tensor, logits: torch.Tensor, s: Sampling, pos: int) -> int:
    """sample_token's draw from the LM-head partials [tasks, part_floats(C)], reading the
    logits themselves only where the partials do not settle it: what the sample task does.
    The candidates settle it when the kept tokens are all above every task's BOUND
    (fast_draw); otherwise the draw passes over the whole vocabulary, as sample_token."""
    tok = fast_draw(parts, logits, s, pos)
    return sample_token(logits, s, pos) if tok is None else tok


def fast_draw(parts: torch.Tensor, logits: torch.Tensor, s: Sampling, pos: int) -> int | None:
    """The draw from the partials, or None where they do not settle it (then the sample task
    passes over the whole vocabulary). With bound = the largest BOUND / T, the candidates
    hold every token with z > bound, so they settle the draw when the kept tokens are all
    above it:
    - temperature alone (no top-k, top-p 1): every token is kept; the SUMEXP partials say
      which task's rows the draw falls in, and only those rows are read;
    - otherwise the candidates with z > bound are gathered, with top-k (0 < k < vocab)
      only those at or above the k-th largest task maximum (k tokens reach it).
      None when more than SAMPLE_LIST are gathered, or fewer than k;
    - top-k: tau is the k-th largest gathered z;
    - top-p < 1: the mass to reach is top_p of the kept mass: the top-k tokens', or with no
      top-k the whole vocabulary's (the SUMEXP partials: exact without a pass); tau is
      where the gathered tokens at or above the top-k tau, in descending order, first reach
      it. None when they do not (the nucleus reaches past the candidates);
    - the draw: sample_token's rule over the gathered tokens with z >= tau.
    Non-finite scaled extremes (sample_token's greedy rule) also give None."""
    if s.greedy:
        return None
    vocab = logits.numel()
    z_best, z_low = scaled(parts[:, BEST], s.temperature), scaled(parts[:, LOW], s.temperature)
    if not (torch.isfinite(z_best).all() and torch.isfinite(z_low).all()):
        return None
    zmax = float(z_best.max())
    u = uniform(s.seed, pos)
    part_mass = parts[:, SUMEXP].double() * torch.exp(z_best.double() - zmax)
    top_k = s.top_k if 0 < s.top_k < vocab else 0
    if not top_k and s.top_p >= 1:  # every token kept: the task, then its rows
        run = torch.cumsum(part_mass, 0)
        target = u * float(run[-1])
        j = min(int(torch.searchsorted(run, target, right=True)), parts.shape[0] - 1)
        lo, n = int(parts[j, ROW0]), int(parts[j, ROWS])
        w = torch.exp(scaled(logits[lo : lo + n], s.temperature).double() - zmax)
        inner = float(run[j - 1]) if j else 0.0
        i = int(torch.searchsorted(inner + torch.cumsum(w, 0), target, right=True))
        return lo + min(i, int(torch.nonzero(w).max()))
    bound = float(scaled(parts[:, BOUND].max(), s.temperature))
    lo = -math.inf
    if top_k and top_k <= parts.shape[0]:
        lo = float(torch.sort(z_best, descending=True).values[top_k - 1])
    counts = parts[:, COUNT].long().tolist()
    cand = torch.cat(
        [parts[j, PART_HEADER : PART_HEADER + 2 * n].view(-1, 2) for j, n in enumerate(counts)]
    )
    cz = scaled(cand[:, 0], s.temperature).double()
    gathered = (cz > bound) & (cz >= lo)
    cand, cz = cand[gathered], cz[gathered]
    if cz.numel() > SAMPLE_LIST or cz.numel() < top_k:
        return None
    mass = torch.exp(cz - zmax)
    tau = float(torch.sort(cz, descending=True).values[top_k - 1]) if top_k else -math.inf
    if s.top_p < 1:
        pool = cz >= tau
        exact = top_k or bound == -math.inf  # the pool holds every kept token
        total = float(mass[pool].sum()) if exact else float(part_mass.sum())
        zs, order = torch.sort(cz[pool], descending=True)
        incl = torch.cumsum(mass[pool][order], 0)
        j = int(torch.searchsorted(incl, s.top_p * total))  # first j with incl >= target
        if j >= zs.numel():
            if not exact:
                return None  # the nucleus reaches past the candidates
            j = zs.numel() - 1  # rounding: every pooled token is kept
        tau = max(tau, float(zs[j]))
    kept = torch.nonzero(cz >= tau).flatten()
    kept = kept[torch.argsort(cand[kept, 1])]  # vocabulary order
    run = torch.cumsum(mass[kept], 0)
    i = int(torch.searchsorted(run, u * float(run[-1]), right=True))
    if i >= kept.numel():  # u * total rounded up to total: the last kept token of mass
        i = int(torch.nonzero(mass[kept]).max())
    return int(cand[kept[i], 1])
