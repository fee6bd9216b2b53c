"""Tile level: the decode step cut into tasks.

A `Task` is one unit of work for one SM: the regions of activations it reads, the weight
regions it streams, the regions it writes, and (after `passes.deps`) the dependency
counters it waits on and the one it signals. Bounds of a region are ints, or the step's
symbols `pos` (the decoded position) and `tok` (the input token), plus an int offset.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields, replace
from decimal import Decimal

from tilert_compiler.ir.graph import Storage, TensorDecl
from tilert_compiler.ir.lm_parts import CANDIDATES
from tilert_compiler.ir.plan import KernelPlan, format_plan
from tilert_compiler.ir.target import Target

# A bound is an int, or (symbol, offset) for `symbol + offset`.
Bound = int | tuple[str, int]
SYMBOLS = ("pos", "tok")


def fmt_bound(b: Bound) -> str:
    if isinstance(b, int):
        return str(b)
    sym, off = b
    return sym if off == 0 else f"{sym}{off:+d}"


def parse_bound(s: str) -> Bound:
    s = s.strip()
    m = re.fullmatch(r"(pos|tok)([+-]\d+)?", s)
    if m:
        return (m.group(1), int(m.group(2) or 0))
    return int(s)


@dataclass(frozen=True)
class Region:
    tensor: str
    box: tuple[tuple[Bound, Bound], ...]  # [lo, hi) per dimension

    def __str__(self) -> str:
        dims = ", ".join(f"{fmt_bound(lo)}:{fmt_bound(hi)}" for lo, hi in self.box)
        return f"{self.tensor}[{dims}]"

    def numel(self) -> int:
        """Elements covered, with symbolic extents counted as their int offset difference."""
        n = 1
        for lo, hi in self.box:
            n *= _extent(lo, hi)
        return n

    def overlaps(self, other: Region) -> bool:
        """Conservative: symbolic bounds overlap unless provably disjoint."""
        if self.tensor != other.tensor:
            return False
        return all(_intervals_overlap(a, b) for a, b in zip(self.box, other.box, strict=True))


def _extent(lo: Bound, hi: Bound) -> int:
    if isinstance(lo, int) and isinstance(hi, int):
        return hi - lo
    if isinstance(lo, tuple) and isinstance(hi, tuple) and lo[0] == hi[0]:
        return hi[1] - lo[1]
    return 1  # e.g. [0, pos+1): its size depends on the step; counted once


def _intervals_overlap(a: tuple[Bound, Bound], b: tuple[Bound, Bound]) -> bool:
    (alo, ahi), (blo, bhi) = a, b
    if all(isinstance(x, int) for x in (alo, ahi, blo, bhi)):
        return alo < bhi and blo < ahi

    # Same symbol on both sides: compare offsets; an int against a symbol may overlap.
    def lt(x: Bound, y: Bound) -> bool | None:
        if isinstance(x, int) and isinstance(y, int):
            return x < y
        if isinstance(x, tuple) and isinstance(y, tuple) and x[0] == y[0]:
            return x[1] < y[1]
        if isinstance(x, int) and x == 0 and isinstance(y, tuple) and y[1] >= 1:
            return True  # 0 < pos + k for k >= 1, as pos >= 0
        return None

    first, second = lt(alo, bhi), lt(blo, ahi)
    return first is not False and second is not False


def region(tensor: str, *dims: tuple[Bound, Bound]) -> Region:
    return Region(tensor, tuple(dims))


@dataclass(frozen=True)
class Task:
    id: int
    kind: str  # the name of its task kind (ir/kinds.py KINDS)
    op: str  # the fused op this task is a tile of
    layer: int
    reads: tuple[Region, ...]  # activations and cache rows (produced this step or earlier)
    weights: tuple[Region, ...]  # weight regions streamed from HBM
    writes: tuple[Region, ...]
    args: tuple[tuple[str, int], ...] = ()  # kind-specific ints (head index, ...)
    cost: int = 0  # bytes the task moves from memory (the cost model's input)
    deps: tuple[int, ...] = ()  # ids of tasks that must finish first (after passes.deps)
    waits: tuple[tuple[int, int], ...] = ()  # (counter id, tasks signalling it per step)
    signal: int = -1  # counter this task increments when done

    def arg(self, key: str) -> int:
        return dict(self.args)[key]


@dataclass(frozen=True)
class Counter:
    name: str
    producers: int  # tasks that signal it per step


@dataclass(frozen=True)
class TileProgram:
    model: str
    tasks: tuple[Task, ...]  # in one global topological order (task id = index)
    counters: tuple[Counter, ...] = ()
    consts: tuple[tuple[str, object], ...] = ()
    tensors: tuple = ()  # graph TensorDecls still in use, carried for layout

    def with_tasks(self, tasks, **kw) -> TileProgram:
        return replace(self, tasks=tuple(tasks), **kw)

    def const(self, key: str) -> object:
        return dict(self.consts)[key]


W_BYTES = 2  # bf16 weights; an FP8 weight's rows take TensorDecl.row_units of these
A_BYTES = 4  # f32 activations and cache


def region_weight_bytes(r: Region, decl: TensorDecl) -> int:
    """Bytes a weight region streams: its rows in the arena's form (FP8 rows with scales)."""
    if decl.fp8_block is not None and len(r.box) == 2:
        return r.numel() // decl.shape[-1] * decl.row_units * W_BYTES
    return r.numel() * W_BYTES


class Tiling:
    """A tile program being built (passes/tile.py): the tasks, counters and tensors the
    task kinds' tiling rules (ir/kinds.py `tile`) added so far, and what the rules read.
    `context`: the cache length the cost model assumes for attention; `splits`: the
    split-KV factor (None: attention's own choice); `candidates`: the logits each LM-head
    task keeps for a sampled draw (ir/lm_parts.py)."""

    def __init__(
        self,
        tensors,
        target: Target,
        *,
        context: int,
        splits: int | None,
        candidates: int = CANDIDATES,
    ):
        self.target, self.context, self.splits = target, context, splits
        self.candidates = candidates
        self.shape = {t.name: t.shape for t in tensors}
        self.storage: dict[str, Storage] = {t.name: t.storage for t in tensors}
        self.decls: dict[str, TensorDecl] = {t.name: t for t in tensors}
        self.tasks: list[Task] = []
        self.counters: list[Counter] = []  # e.g. the arrival counters of split attention
        self.tensors: list[TensorDecl] = []  # tensors the tasks introduce (partials)

    def add(self, op, reads, weights, writes, cost_extra=0, cost=None, **args) -> None:
        """A task of `op` (its kind is the op's). Its cost: the bytes of its regions (bf16
        or FP8 weights, f32 the rest) plus `cost_extra`, unless `cost` is given."""
        if cost is None:
            cost = sum(region_weight_bytes(r, self.decls[r.tensor]) for r in weights)
            cost += sum(r.numel() for r in reads + writes) * A_BYTES + cost_extra
        self.tasks.append(
            Task(
                len(self.tasks),
                str(op.kind),
                op.name,
                op.layer,
                tuple(reads),
                tuple(weights),
                tuple(writes),
                tuple(args.items()),
                cost,
            )
        )

    def row_blocks(self, n: int, align: int = 8) -> list[tuple[int, int]]:
        """Split [0, n) into at most one block per SM, each a multiple of `align` rows."""
        per = -(-n // self.target.sms)
        per = -(-per // align) * align
        return [(r, min(r + per, n)) for r in range(0, n, per)]


def vec(name: str, lo: int, hi: int) -> Region:
    """Elements [lo, hi) of a vector."""
    return region(name, (lo, hi))


def rows(name: str, lo: int, hi: int, k: int) -> Region:
    """Rows [lo, hi) of a matrix of k columns."""
    return region(name, (lo, hi), (0, k))


@dataclass(frozen=True)
class Schedule:
    """Schedule level: which SM runs which tasks, in what order, where each tensor lives,
    and (after the `plan` stage) the kernel plan that runs them."""

    program: TileProgram
    sm_lists: tuple[tuple[int, ...], ...]  # per SM: task ids in global order
    predicted: tuple[tuple[float, float], ...]  # per task: (start, end) seconds, cost model
    # Always empty: the per-task L2 prefetch plan went with option l2_prefetch. Kept until
    # the task table's prefetch column goes (codegen/serialize.py still reads it).
    prefetch: tuple[tuple[Region, ...], ...] = ()
    layout: tuple[tuple[str, str, int], ...] = ()  # (tensor, arena, element offset)
    arena_sizes: tuple[tuple[str, int], ...] = ()  # (arena, elements)
    options: tuple[tuple[str, object], ...] = field(default=())
    plan: KernelPlan | None = None  # the kernel's roles and shared memory (stage `plan`)

    def sm_of(self) -> dict[int, int]:
        return {t: sm for sm, ts in enumerate(self.sm_lists) for t in ts}

    def offset(self, tensor: str) -> int:
        return {n: off for n, _, off in self.layout}[tensor]


# ---------------------------------------------------------------- text form
#
# One line per task, every field in the text, so `ir.parse.parse(format_program(p)) == p`
# and the same for schedules. Lines are `key=value` tokens in a fixed order (stable diffs);
# `ir/parse.py` is the inverse and documents the grammar.


def format_us(seconds: float) -> str:
    """Seconds as microseconds, exactly: repr's shortest round-trip digits with the decimal
    point moved six places, so the text reads in us and parses back to the same float."""
    return format(Decimal(repr(seconds)).scaleb(6), "f")


def format_task_ids(ids: tuple[int, ...]) -> str:
    """`t3, t7..t130`: ascending runs of three or more as ranges (a GEMV waits on every
    tile of the op before it; 128 ids would fill a screen)."""
    out, i = [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        if j - i >= 2:
            out.append(f"t{ids[i]}..t{ids[j]}")
            i = j + 1
        else:
            out.append(f"t{ids[i]}")
            i += 1
    return ", ".join(out)


def format_regions(rs: tuple[Region, ...]) -> str:
    return "(" + ", ".join(str(r) for r in rs) + ")"


def format_task(
    t: Task,
    sm: int | None = None,
    span: tuple[float, float] | None = None,
) -> str:
    parts = [
        f"t{t.id} = {t.kind} {t.op} layer={t.layer}",
        f"reads={format_regions(t.reads)}",
        f"weights={format_regions(t.weights)}",
        f"writes={format_regions(t.writes)}",
        "args=(" + ", ".join(f"{k}={v}" for k, v in t.args) + ")",
        f"cost={t.cost}",
    ]
    if t.deps:
        parts.append(f"deps=({format_task_ids(t.deps)})")
    if t.waits:
        parts.append("waits=(" + ", ".join(f"c{c}>={n}" for c, n in t.waits) + ")")
    if t.signal >= 0:
        parts.append(f"signal=c{t.signal}")
    parts += [f"{k}={v!r}" for k, v in extra_fields(t)]
    if sm is not None:
        parts.append(f"sm={sm}")
    if span is not None:
        parts.append(f"at={format_us(span[0])}us..{format_us(span[1])}us")
    return " ".join(parts)


# Fields with their own syntax; any other field (one a later pass adds) is printed
# generically as `name=repr(value)` when it differs from its default, so it round-trips.
PRINTED_FIELDS = {
    "Task": frozenset("id kind op layer reads weights writes args cost deps waits signal".split()),
    "TileProgram": frozenset("model tasks counters consts tensors".split()),
    "Schedule": frozenset(
        "program sm_lists predicted prefetch layout arena_sizes options plan".split()
    ),
}


def extra_fields(obj: object) -> list[tuple[str, object]]:
    known = PRINTED_FIELDS[type(obj).__name__]
    out = []
    for f in fields(obj):  # type: ignore[arg-type]
        if f.name in known:
            continue
        value = getattr(obj, f.name)
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if value != default:
            out.append((f.name, value))
    return out


def _program_lines(p: TileProgram) -> list[str]:
    """Everything of a program except its tasks, as indented lines."""
    lines = [f"  const {k} = {v!r}" for k, v in p.consts]
    for d in p.tensors:
        shape = "x".join(str(n) for n in d.shape)
        lines.append(
            f"  tensor {d.name} [{shape}] {d.storage.value} layer={d.layer}{d.precision()}"
        )
    lines += [f"  field {k} = {v!r}" for k, v in extra_fields(p)]
    lines += [f"  counter c{i} {c.name} producers={c.producers}" for i, c in enumerate(p.counters)]
    return lines


def format_program(p: TileProgram) -> str:
    lines = [f"tile {p.model}", *_program_lines(p)]
    lines += ["  " + format_task(t) for t in p.tasks]
    return "\n".join(lines) + "\n"


def format_schedule(s: Schedule) -> str:
    p = s.program
    lines = [f"schedule {p.model} sms={len(s.sm_lists)}"]
    lines += [f"  option {k} = {v!r}" for k, v in s.options]
    lines += format_plan(s.plan) if s.plan is not None else []
    lines += [f"  schedule-field {k} = {v!r}" for k, v in extra_fields(s)]
    lines += _program_lines(p)
    lines += [f"  arena {a} elements={n}" for a, n in s.arena_sizes]
    lines += [f"  buffer {n} {a} @{off}" for n, a, off in s.layout]
    for sm, ts in enumerate(s.sm_lists):
        lines.append(f"  sm {sm}:" + "".join(f" t{t}" for t in ts))
    sm_of = s.sm_of()
    for t in p.tasks:
        span = s.predicted[t.id] if s.predicted else None
        lines.append("  " + format_task(t, sm_of.get(t.id), span))
    return "\n".join(lines) + "\n"
