"""prefetch: schedule -> schedule with the plan that keeps weights streaming.

Weights never depend on activations, so they can be requested long before a task runs.
With the weight ring (default), the kernel's producer warp copies each SM's weight chunks,
in task order, into a shared-memory ring ahead of the consumers; the kernel plan
(passes/plan.py) sizes the ring.

And with the ring, the KV cache: a decode attention split's rows of earlier steps do not
depend on the step either, so the producer asks L2 for them when its walk passes the
split (`cache_prefetch`), and the split's copies of them find L2, not HBM.

Both choices are recorded in the schedule's options (and so in its dump), where codegen
reads them.
"""

from __future__ import annotations

from dataclasses import replace

from tilert_compiler.ir.tile import Schedule


def prefetch(sched: Schedule, *, ring: bool, cache: bool) -> Schedule:
    """`ring`: the kernel streams each SM's weight rows into a shared-memory ring.
    `cache` (with `ring`): the producer asks L2 for each decode attention split's cache
    rows of earlier steps when its walk passes the task, a ring's depth ahead."""
    options = sched.options + (("weight_ring", ring), ("cache_prefetch", cache and ring))
    return replace(sched, options=options)
