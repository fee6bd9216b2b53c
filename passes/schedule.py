"""schedule: tile program -> schedule. A static list scheduler with a byte cost model.

Tasks are visited in their global topological order (task id); each goes to the SM where
it would finish first, given when that SM is free and when its dependencies finish. Each
SM runs its list in that same global order, which cannot deadlock: the lowest-numbered
unfinished task always has its dependencies done and every earlier task of its SM done.
"""

from __future__ import annotations

from tilert_compiler.ir.target import Target
from tilert_compiler.ir.tile import Schedule, TileProgram


def task_seconds(cost_bytes: int, target: Target) -> float:
    """A task streams at its SM's share of HBM bandwidth (when all SMs stream at once)."""
    rate = min(target.hbm_bytes_per_s / target.sms, target.sm_bytes_per_s)
    return target.task_overhead_s + cost_bytes / rate


def ready_at(deps, end, target: Target) -> float:
    """When a task may start: its last dependency's end plus the hand-off to this SM."""
    return max((end[d] + target.handoff_s for d in deps), default=0.0)


def schedule(program: TileProgram, target: Target) -> Schedule:
    sms = target.sms
    free = [0.0] * sms
    end: list[float] = []
    spans: list[tuple[float, float]] = []
    lists: list[list[int]] = [[] for _ in range(sms)]
    for t in program.tasks:
        ready = ready_at(t.deps, end, target)
        dur = task_seconds(t.cost, target)
        # Earliest finish; ties go to the least loaded SM, then the lowest index.
        sm = min(range(sms), key=lambda s: (max(free[s], ready), free[s], s))
        start = max(free[sm], ready)
        free[sm] = start + dur
        end.append(start + dur)
        spans.append((start, start + dur))
        lists[sm].append(t.id)
    return Schedule(program, tuple(tuple(x) for x in lists), tuple(spans))
