"""layout: schedule -> schedule with every tensor placed in an arena.

Two arenas: `weights` (bf16 on the GPU) and `act` (f32: activations, KV cache, logits).
Offsets are in elements, aligned to 128 bytes so every row block starts on a boundary
that 16-byte vector loads and bulk copies accept. Weights are laid out in the order the
schedule first streams them.

A prefill program (rows > 1) shares the decode program's weights and KV cache: it is laid
out against that schedule (`base`), keeping the offsets of every weight and cache tensor,
and places its own activations after the decode arena, one row per token: row m of a
tensor lives `row_stride` elements after row m - 1.
"""

from __future__ import annotations

from dataclasses import replace

from tilert_compiler.ir.graph import Storage
from tilert_compiler.ir.tile import Schedule

ALIGN_BYTES = 128


def layout(sched: Schedule, base: Schedule | None = None) -> Schedule:
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
    shared: dict[str, tuple[str, int]] = {}
    if base is not None:
        sizes = dict(base.arena_sizes)
        shared = {
            n: (a, off)
            for n, a, off in base.layout
            if decls.get(n) is not None and decls[n].storage in (Storage.WEIGHT, Storage.CACHE)
        }
    first_row = sizes["act"] = _align(sizes["act"], ALIGN_BYTES // 4)
    for name in order:
        if name in shared:
            placed.append((name, *shared[name]))
            continue
        decl = decls[name]
        if base is not None and decl.storage == Storage.WEIGHT:
            raise ValueError(f"prefill: weight '{name}' is not in the decode program's layout")
        arena = "weights" if decl.storage == Storage.WEIGHT else "act"
        off = _align(sizes[arena], ALIGN_BYTES // (2 if arena == "weights" else 4))
        placed.append((name, arena, off))
        sizes[arena] = off + decl.numel
    rows = int(program.const("rows")) if "rows" in dict(program.consts) else 1
    stride = 0
    if rows > 1:  # activations repeat per token row; the cache is shared (placed in base)
        stride = _align(sizes["act"] - first_row, ALIGN_BYTES // 4)
        sizes["act"] = first_row + rows * stride
    return replace(sched, layout=tuple(placed), arena_sizes=tuple(sizes.items()), row_stride=stride)


def _align(n: int, to: int) -> int:
    return -(-n // to) * to
