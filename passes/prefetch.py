"""prefetch: schedule -> schedule with an L2 weight-prefetch plan per task.

Weights never depend on activations, so before a task waits for its inputs its SM asks
the memory system for the weights of the tasks ahead of it in its own list (bulk L2
prefetch), up to the SM's share of L2. The loads after the wait then hit L2 instead of
waiting on HBM, and the stream runs ahead across op and layer boundaries.
"""

from __future__ import annotations

from dataclasses import replace

from tilert_compiler.ir.target import Target
from tilert_compiler.ir.tile import Region, Schedule
from tilert_compiler.passes.tile import W_BYTES


def prefetch(sched: Schedule, target: Target, enabled: bool = True, ring: bool = True) -> Schedule:
    """`enabled`: the L2 plan below. `ring`: the kernel also streams each SM's weight rows,
    in task order, into a shared-memory ring ahead of the consumers (codegen sizes it)."""
    tasks = sched.program.tasks
    plan: list[tuple[Region, ...]] = [() for _ in tasks]
    if enabled:
        budget = target.l2_bytes // (2 * target.sms)  # half of L2, split evenly across SMs
        for ids in sched.sm_lists:
            issued = 0  # index in `ids` up to which weights were already requested
            for i, tid in enumerate(ids):
                issued = max(issued, i)
                regs: list[Region] = []
                ahead = 0
                j = issued
                while j < len(ids):
                    nxt = tasks[ids[j]]
                    size = sum(r.numel() for r in nxt.weights) * W_BYTES
                    if j > i and ahead + size > budget:
                        break
                    regs += [r for r in nxt.weights if _streamable(r)]
                    ahead += size
                    j += 1
                issued = j
                plan[tid] = tuple(regs)
    options = sched.options + (("l2_prefetch", enabled), ("weight_ring", ring))
    return replace(sched, prefetch=tuple(plan), options=options)


def _streamable(r: Region) -> bool:
    """Large enough to be worth a bulk request, and at a fixed address (not `tok` rows)."""
    fixed = all(isinstance(b, int) for lo_hi in r.box for b in lo_hi)
    return fixed and r.numel() * W_BYTES >= 4096
