"""layout: schedule -> schedule with every tensor placed in an arena.

Two arenas: `weights` (2-byte units: bf16 values, FP8 rows as ir/precision.py lays
them out) and `act` (f32: activations, KV cache, logits).
Offsets are in elements, aligned to 128 bytes so every row block starts on a boundary
that 16-byte vector loads and bulk copies accept. Weights are laid out in the order the
schedule first streams them.
"""

from __future__ import annotations

from dataclasses import replace

from tilert_compiler.ir.graph import Storage
from tilert_compiler.ir.tile import Schedule

ALIGN_BYTES = 128


def layout(sched: Schedule) -> Schedule:
    program = sched.program
    decls = {t.name: t for t in program.tensors}
    order: list[str] = []
    seen: set[str] = set()
    for t in program.tasks:  # first use order
        for r in t.weights + t.reads + t.writes:
            if r.tensor not in seen:
                seen.add(r.tensor)
                order.append(r.tensor)
    sizes = {"weights": 0, "act": 0}
    placed: list[tuple[str, str, int]] = []
    for name in order:
        decl = decls[name]
        arena = "weights" if decl.storage == Storage.WEIGHT else "act"
        off = _align(sizes[arena], ALIGN_BYTES // (2 if arena == "weights" else 4))
        placed.append((name, arena, off))
        sizes[arena] = off + decl.arena_units  # FP8 rows: bytes and scales, in 2-byte units
    return replace(sched, layout=tuple(placed), arena_sizes=tuple(sizes.items()))


def _align(n: int, to: int) -> int:
    return -(-n // to) * to
