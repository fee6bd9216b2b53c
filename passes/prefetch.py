"""prefetch: schedule -> schedule with the plan that keeps weights streaming.

Weights never depend on activations, so they can be requested long before a task runs.
Two plans, chosen by whether the kernel has a weight ring:

- With the ring (default), the kernel's producer warp copies each SM's weight chunks, in
  task order, into a shared-memory ring ahead of the consumers. When the consumers stall
  (attention, dependency hand-offs), the ring fills and then HBM would idle. The L2
  window keeps it busy: the producer also asks L2 for the chunks *beyond* the ring, up
  to `l2_window` bytes per SM past its copies, so the ring's copies hit L2 and the stream
  runs ahead across task and layer boundaries by ring + window. The pass sizes the
  window from the target's L2: a share of it per SM (`window_bytes`).
- Without the ring, each task asks L2 for the weights of the tasks ahead of it in its
  own list (bulk L2 prefetch before its dependency wait), up to the SM's share of L2.

And with the ring, the KV cache: a decode attention split's rows of earlier steps do not
depend on the step either, so the producer asks L2 for them when its walk passes the
split (`cache_prefetch`), and the split's copies of them find L2, not HBM.
"""

from __future__ import annotations

from dataclasses import replace

from tilert_compiler.ir.target import Target
from tilert_compiler.ir.tile import Region, Schedule
from tilert_compiler.passes.tile import W_BYTES

# The share of L2 the windows of all SMs may fill together; the rest keeps the step's
# activations and KV cache rows resident.
L2_WINDOW_SHARE = 0.5


def window_bytes(target: Target, kb: int | None = None) -> int:
    """Bytes each SM keeps requested into L2 beyond its ring: `kb` KiB if given, else the
    SMs' even split of L2_WINDOW_SHARE of L2. A multiple of 1 KiB."""
    if kb is not None:
        return max(0, kb) * 1024
    return int(target.l2_bytes * L2_WINDOW_SHARE / target.sms) // 1024 * 1024


def prefetch(
    sched: Schedule,
    target: Target,
    enabled: bool = True,
    ring: bool = True,
    window_kb: int | None = None,
    cache: bool = True,
) -> Schedule:
    """`enabled`: L2 prefetch (the window with `ring`, the per-task plan without).
    `ring`: the kernel streams each SM's weight rows into a shared-memory ring.
    `cache` (with `ring`): the producer asks L2 for each decode attention split's cache
    rows of earlier steps when its walk passes the task, a ring's depth ahead."""
    tasks = sched.program.tasks
    plan: list[tuple[Region, ...]] = [() for _ in tasks]
    window = window_bytes(target, window_kb) if enabled and ring else 0
    if enabled and not ring:
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
    options = sched.options + (
        ("l2_prefetch", enabled),
        ("weight_ring", ring),
        ("l2_window", window),
        ("cache_prefetch", cache and ring),
    )
    return replace(sched, prefetch=tuple(plan), options=options)


def _streamable(r: Region) -> bool:
    """Large enough to be worth a bulk request, and at a fixed address (not `tok` rows)."""
    fixed = all(isinstance(b, int) for lo_hi in r.box for b in lo_hi)
    return fixed and r.numel() * W_BYTES >= 4096
