"""The LM head's partials: what each LM-head task writes for the sample task.

Each LM-head task (a block of vocabulary rows) writes one partial of PART_HEADER floats,
then up to C candidates as (logit, row index) pairs, C the `sample_candidates` option:

- BEST, AT: the largest logit of the task's rows and its first index (greedy reads only
  these);
- SUMEXP: the sum over the task's rows of exp(z - BEST / T), z = logit / T in float32;
- BOUND: every row that is not a candidate has a logit <= BOUND (-inf: all rows are
  candidates). The candidates are the rows above the (C + 1)-th largest logit, which is
  BOUND; a task of at most C rows keeps them all;
- COUNT: how many candidates follow; ROW0, ROWS: the task's rows; LOW: their smallest
  logit.

SUMEXP on are written only when the step draws a sampled token (runtime/sampling.py
fast_draw says how the sample task merges them). Indices are exact in float32 (< 2^24).
"""

from __future__ import annotations

PART_HEADER = 8
BEST, AT, SUMEXP, BOUND, COUNT, ROW0, ROWS, LOW = range(PART_HEADER)
FIELDS = ("BEST", "AT", "SUMEXP", "BOUND", "COUNT", "ROW0", "ROWS", "LOW")
# The candidates each LM-head task keeps when no option says (Options.sample_candidates).
CANDIDATES = 64
# The sample task gathers at most this many candidates into shared memory (those that can
# be kept); more, and it passes over the whole vocabulary instead.
SAMPLE_LIST = 1024


def part_floats(cands: int) -> int:
    """Floats of one LM-head task's partial with room for `cands` candidates."""
    return PART_HEADER + 2 * cands
