"""The kernel plan: the one kernel's thread roles and shared-memory budget, and what each
task kind needs of it.

passes/plan.py makes the plan (the `plan` stage, after `layout`); it rides in the
schedule (`Schedule.plan`), prints as `plan NAME = VALUE` lines of the schedule's text,
parses back, and codegen renders the kernel from it. ir/verify.py's `verify_plan` checks
an (edited) plan against the task kinds and the target.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from tilert_compiler.ir.precision import row_bytes

if TYPE_CHECKING:
    from tilert_compiler.ir.tasktable import Variant

STAGE_BYTES = 32 * 1024  # one ring stage: a chunk of whole weight rows
STATIC_SMEM_RESERVE = 2048  # the kernel's static shared memory (barriers, reductions)
SAMPLE_BINS = 2048  # radix-select histogram of the sample task (digits of 11, 11, 10 bits)

# The FFMA GEMV holds a lane's part of x in registers (8 floats per 8-column group it
# takes) when that part is at most this many floats; bigger parts (K = 4096 with one
# K-slice: 128) are read from shared memory for every row, as before. The compiler lowers
# the bound, one GEMV shape at a time, while ptxas reports spills (relieve_registers).
X_REGS = 64
# The decode attention's combine loads a thread's partials in one batch when they are at
# most PART_BATCH_ONE, else PART_BATCH at a time; the compiler lowers the batch (to
# PART_BATCH_LEAST at most) while ptxas reports spills.
PART_BATCH_ONE, PART_BATCH, PART_BATCH_LEAST = 24, 16, 8

# Decode attention takes a split's cache rows in blocks of at most this many (online
# softmax across blocks): its shared memory is sized by the block, not by max_seq_len, and
# what that leaves goes to the weight ring. 48 holds a split's rows up to context ~750 at
# 16 splits in one block (bench/NOTES.md item 90).
ATTN_BLOCK_ROWS = 48


@dataclass(frozen=True)
class KernelPlan:
    """Thread roles and the shared-memory budget of the kernel."""

    threads: int
    consumers: int  # threads that run tasks; the rest (one warp) feed the weight ring
    ring: bool
    stage_bytes: int
    stages: int
    scratch_floats: int  # per-task scratch after the ring (input vector, partial sums)
    # Bulk copies the producer keeps in flight (its copy of chunk c waits until chunk
    # c - in_flight landed); the ring's depth when not capped.
    in_flight: int = 0
    # A GEMV lane holds its part of x in registers when it is at most this many floats
    x_regs: int = X_REGS
    # The attention combine loads its partials this many per thread at a time (when
    # they are more than PART_BATCH_ONE)
    part_batch: int = PART_BATCH
    # The dispatch loop keeps the SM's task-list bounds in shared memory (a register pair
    # less for the whole launch)
    lean_dispatch: bool = False
    # Thread 0 copies the error word into shared memory by cp.async at each task's start,
    # rather than holding its load in a register across the task
    error_copy: bool = False
    # FP8 GEMVs dot their rows on tensor cores (mma.sync, x as two f16 parts), not by FFMA
    # (Options.fp8_gemv; codegen/cuda/gemv_fp8.cuh)
    fp8_mma: bool = False

    @property
    def smem_bytes(self) -> int:
        """Dynamic shared memory: the ring, then the task scratch."""
        return self.stages * self.stage_bytes + 4 * self.scratch_floats


def rows_per_chunk(k: int, stage_bytes: int, qbk: int = 0) -> int:
    """Weight rows of K columns (bf16, or FP8 with scale k-blocks of qbk) in one ring
    stage; at least one."""
    return max(1, stage_bytes // row_bytes(k, qbk))


def variant_row_bytes(v: Variant) -> int:
    """Bytes of one weight row of a GEMV variant (bf16, or FP8 with its scales)."""
    return row_bytes(v.get("K"), dict(v.static).get("QBK", 0))


def x_part_floats(v: Variant, consumer_warps: int, stage_bytes: int) -> int | None:
    """Floats of x one lane of an FFMA GEMV takes (the template's 8 * kJ in stream_rows),
    or None for a kind without weight rows."""
    if "K" not in dict(v.static):
        return None
    k = v.get("K")
    groups = rows_per_chunk(k, stage_bytes, dict(v.static).get("QBK", 0))  # a row per item
    split = 1 if groups >= consumer_warps else consumer_warps // groups
    groups_per_lane = -(-(k // 8) // split)  # 8-column groups of one K-slice
    return 8 * -(-groups_per_lane // 32)


def format_plan(plan: KernelPlan) -> list[str]:
    """The plan as indented lines of a schedule's text: a comment with its shared memory,
    then one `plan NAME = VALUE` line per field (ir/parse.py reads them back)."""
    lines = [
        f"  # kernel plan: {plan.stages} ring stages of {plan.stage_bytes} bytes + "
        f"{plan.scratch_floats} scratch floats = {plan.smem_bytes} bytes of shared memory"
    ]
    return lines + [f"  plan {f.name} = {getattr(plan, f.name)!r}" for f in fields(plan)]
