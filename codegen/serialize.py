"""Schedule -> TaskTable: each task's regions become element offsets into the arenas.

A task's variant statics and argument values are its kind's (ir/kinds.py `statics_of`,
`args_of`); here: the records, waits, weight stream and SM lists around them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tilert_compiler.ir.kinds import KINDS, NO_OFFSET
from tilert_compiler.ir.tasktable import (
    F_ARG0,
    F_KIND,
    F_LAYER,
    F_NSTREAM,
    F_NWAIT,
    F_SIGNAL,
    F_STREAM,
    F_WAIT,
    RECORD,
    TaskTable,
    Variant,
)
from tilert_compiler.ir.tile import Region, Schedule, Task


def _strides(shape: tuple[int, ...]) -> list[int]:
    out, s = [], 1
    for d in reversed(shape):
        out.append(s)
        s *= d
    return out[::-1]


class _Offsets:
    """Where a laid-out schedule put things (ir/kinds.py `Placed`): what the kinds'
    `statics_of` and `args_of` read."""

    def __init__(self, sched: Schedule):
        self.base = {n: off for n, _, off in sched.layout}
        self.decl = {t.name: t for t in sched.program.tensors}
        self._tasks: dict[str, list[Task]] = {}
        for t in sched.program.tasks:
            self._tasks.setdefault(t.op, []).append(t)
        self._of_op: dict[tuple[str, Callable], object] = {}

    def of_op(self, op: str, f: Callable[[list[Task]], Any]) -> Any:
        """f of every task of `op`, computed once per op."""
        if (op, f) not in self._of_op:
            self._of_op[op, f] = f(self._tasks[op])
        return self._of_op[op, f]

    def strides(self, tensor: str) -> list[int]:
        """Arena units per step of each dimension: an FP8 weight's rows are row_units apart
        (its e4m3 bytes and scales, ir/precision.py)."""
        d = self.decl[tensor]
        return [d.row_units, 1] if d.fp8_block is not None else _strides(d.shape)

    def start(self, r: Region) -> int:
        """Element offset of the region's first element; symbolic bounds count as 0 (the
        kernel adds `pos` or `tok` times that dimension's stride)."""
        off = self.base[r.tensor]
        for (lo, _), stride in zip(r.box, self.strides(r.tensor), strict=True):
            if isinstance(lo, int):
                off += lo * stride
        return off

    def units(self, r: Region) -> int:
        """Arena units of a region of whole rows (its elements but for FP8 rows)."""
        d = self.decl[r.tensor]
        return r.numel() // d.shape[-1] * d.row_units if d.fp8_block is not None else r.numel()

    def check_contiguous(self, t: Task, regions) -> None:
        """Row blocks of stacked weights must be one run in the arena (layout keeps them so)."""
        for a, b in zip(regions, regions[1:], strict=False):
            if self.start(a) + self.units(a) != self.start(b):
                raise ValueError(f"task t{t.id}: {a} and {b} are not adjacent in the arena")


def _stream_entries(t: Task, o: _Offsets) -> list[tuple[int, int, int]]:
    """The weight row blocks a GEMV task consumes, in order; adjacent blocks merge."""
    if not KINDS[t.kind].streams:
        return []
    out: list[list[int]] = []
    for r in t.weights:
        if len(r.box) != 2:  # norm gammas are read directly, not streamed
            continue
        start, n, k = o.start(r), o.units(r), o.decl[r.tensor].row_units
        if out and out[-1][0] + out[-1][1] == start and out[-1][2] == k:
            out[-1][1] += n
        else:
            out.append([start, n, k])
    return [tuple(e) for e in out]


def serialize(sched: Schedule) -> TaskTable:
    prog = sched.program
    consts = dict(prog.consts)
    o = _Offsets(sched)
    variants: list[Variant] = []
    index: dict[Variant, int] = {}
    records = np.full((len(prog.tasks), RECORD), NO_OFFSET, dtype=np.int64)
    waits: list[tuple[int, int]] = []
    stream: list[tuple[int, int, int]] = []
    for t in prog.tasks:
        kind = KINDS[t.kind]
        v = Variant(kind.name, kind.statics_of(t, consts, o))
        if v not in index:
            index[v] = len(variants)
            variants.append(v)
        rec = records[t.id]
        rec[F_KIND], rec[F_LAYER], rec[F_SIGNAL] = index[v], t.layer, t.signal
        rec[F_NWAIT], rec[F_WAIT] = len(t.waits), len(waits)
        waits += list(t.waits)
        rows = _stream_entries(t, o)
        rec[F_NSTREAM], rec[F_STREAM] = len(rows), len(stream)
        stream += rows
        args = kind.args_of(t, o)
        assert tuple(args) == kind.args, (v.kind, tuple(args))
        # a bf16 GEMV leaves out QBK, its last static (the template's default)
        assert tuple(n for n, _ in v.static) == kind.statics[: len(v.static)], v
        for j, val in enumerate(args.values()):
            rec[F_ARG0 + j] = val
    sm_start = np.zeros(len(sched.sm_lists) + 1, dtype=np.int32)
    for s, ids in enumerate(sched.sm_lists):
        sm_start[s + 1] = sm_start[s] + len(ids)
    sm_tasks = np.array([t for ids in sched.sm_lists for t in ids], dtype=np.int32)
    return TaskTable(
        records,
        np.array(waits, dtype=np.int64).reshape(-1, 2),
        np.array(stream, dtype=np.int64).reshape(-1, 3),
        sm_start,
        sm_tasks,
        variants,
    )
