"""Text -> IR: the parser for the tile and schedule text printed by `ir/tile.py`.

`parse(format_program(p)) == p` and `parse(format_schedule(s)) == s`, exactly: a dump is
data, so tests can be small hand-written IR files and a user can edit a dump and compile
from it (`tilert-compile --from-ir FILE`). Task kinds are looked up by name in
ir/kinds.py KINDS and `args` are generic `name=int` pairs, so new kinds and arguments need
no parser change.

Grammar, one statement per line (blank lines and `#` comments are skipped):

    tile MODEL                              or    schedule MODEL sms=N
      option NAME = LITERAL                 schedule: a pass option (a Python literal)
      plan NAME = LITERAL                   schedule: a field of the kernel plan (ir/plan.py)
      schedule-field NAME = LITERAL         schedule: a field without its own syntax
      const NAME = LITERAL                  model scalars
      tensor NAME [D0xD1..] STORAGE layer=L [fp8e4m3=BNxBK]   FP8 weights: scale block
      field NAME = LITERAL                  program: a field without its own syntax
      counter cI NAME producers=N           I counts 0, 1, 2, ...
      arena NAME elements=N                 schedule, after layout
      buffer TENSOR ARENA @OFFSET           schedule, after layout
      sm I: tA tB ...                       schedule: SM I's task list, in run order
      tI = KIND OP layer=L reads=(R, ..) weights=(R, ..) writes=(R, ..) args=(k=v, ..)
           cost=BYTES deps=(tA, tB..tC, ..) waits=(cI>=N, ..) signal=cI NAME=LITERAL ..
           sm=I at=STARTus..ENDus                           (all on one line)
    R = TENSOR[lo:hi, ..]; a bound is an int, or pos/tok plus an int offset (pos+1).

A task's `key=value` tokens may come in any order; all but `layer` may be left out
(defaults: empty, cost 0, no signal). In a schedule, the `sm I:` lines decide which SM
runs what; a task's `sm=` is a note that must agree with them, or, where there are no
`sm I:` lines at all, decides on its own (lists then run in task id order).

Leading `# key: value` comments are a dump's metadata (`parse_dump`): the stage it was
taken after, the model config and the options, so a dump compiles on its own.
"""

from __future__ import annotations

import ast
import re
from dataclasses import MISSING, fields
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import TypeVar

from tilert_compiler.ir.graph import Storage, TensorDecl
from tilert_compiler.ir.kinds import KINDS
from tilert_compiler.ir.plan import KernelPlan
from tilert_compiler.ir.precision import FP8
from tilert_compiler.ir.tile import SYMBOLS, Bound, Counter, Region, Schedule, Task, TileProgram

E = TypeVar("E", bound=Enum)


class ParseError(ValueError):
    """One line: `origin:line: what is wrong`."""


_TASK_FIELDS = {f.name for f in fields(Task)}
_PROGRAM_FIELDS = {f.name for f in fields(TileProgram)}
_SCHEDULE_FIELDS = {f.name for f in fields(Schedule)}
_PLAN_FIELDS = {f.name: f for f in fields(KernelPlan)}
_BOUND = re.compile(rf"({'|'.join(SYMBOLS)})([+-]\d+)?|-?\d+")
_META = re.compile(r"#\s*([A-Za-z_][\w-]*):\s*(.*)")


def parse(text: str, origin: str = "<text>") -> TileProgram | Schedule:
    """A `tile ...` text to a TileProgram, a `schedule ...` text to a Schedule."""
    return _Parser(origin).parse(text)


def parse_program(text: str, origin: str = "<text>") -> TileProgram:
    """A `tile ...` text; a schedule is one ParseError line."""
    ir = parse(text, origin)
    if not isinstance(ir, TileProgram):
        raise ParseError(f"{origin}: a schedule, where a tile program ('tile MODEL') is expected")
    return ir


def parse_schedule(text: str, origin: str = "<text>") -> Schedule:
    """A `schedule ...` text; a tile program is one ParseError line."""
    ir = parse(text, origin)
    if not isinstance(ir, Schedule):
        raise ParseError(
            f"{origin}: a tile program, where a schedule ('schedule MODEL sms=N') is expected"
        )
    return ir


def parse_dump(text: str, origin: str = "<text>") -> tuple[dict[str, str], TileProgram | Schedule]:
    """A dump file: its leading `# key: value` metadata and its IR."""
    return parse_meta(text), parse(text, origin)


def parse_meta(text: str) -> dict[str, str]:
    """A dump's leading `# key: value` comments (stage, options, config)."""
    meta: dict[str, str] = {}
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if not s.startswith("#"):
            break
        m = _META.fullmatch(s)
        if m:
            meta[m.group(1)] = m.group(2).strip()
    return meta


def parse_region(s: str) -> Region:
    m = re.fullmatch(r"([^\[\]\s]+)\[(.*)\]", s.strip())
    if not m:
        raise ValueError(f"expected TENSOR[lo:hi, ...], got '{s}'")
    dims: list[tuple[Bound, Bound]] = []
    for d in _split_top(m.group(2), ","):
        lo, sep, hi = d.partition(":")
        if not sep:
            raise ValueError(f"expected lo:hi in '{s}', got '{d}'")
        dims.append((parse_bound(lo), parse_bound(hi)))
    return Region(m.group(1), tuple(dims))


def parse_bound(s: str) -> Bound:
    s = s.strip()
    m = _BOUND.fullmatch(s)
    if not m:
        raise ValueError(f"expected an int or {'/'.join(SYMBOLS)}[+-N], got '{s}'")
    if m.group(1):
        return (m.group(1), int(m.group(2) or 0))
    return int(s)


def parse_us(s: str) -> float:
    """Inverse of `ir.tile.format_us`: microseconds text -> the exact float in seconds."""
    return float(Decimal(s).scaleb(-6))


def _split_top(s: str, sep: str | None) -> list[str]:
    """Split at `sep` (None: whitespace) outside () and []; parts stripped, empties dropped."""
    if not any(b in s for b in "(["):  # the common case (deps, args, bounds): nothing nested
        return [p.strip() for p in s.split(sep) if p.strip()]
    parts, depth, start = [], 0, 0
    for m in _SPLIT[sep].finditer(s):
        ch = m.group()[0]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0:
            parts.append(s[start : m.start()])
            start = m.end()
    parts.append(s[start:])
    return [p.strip() for p in parts if p.strip()]


_SPLIT = {",": re.compile(r"[()\[\],]"), None: re.compile(r"[()\[\]]|\s+")}


def _task_ids(s: str) -> tuple[int, ...]:
    """`(t1, t5..t8)` -> (1, 5, 6, 7, 8): ids, and inclusive ascending ranges."""
    ids: list[int] = []
    for part in _split_top(_inner(s), ","):
        m = re.fullmatch(r"t(\d+)(?:\s*\.\.\s*t(\d+))?", part)
        if not m:
            raise ValueError(f"expected tI or tI..tJ, got '{part}'")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi < lo:
            raise ValueError(f"empty range '{part}'")
        ids.extend(range(lo, hi + 1))
    return tuple(ids)


def _inner(value: str) -> str:
    if not (value.startswith("(") and value.endswith(")")):
        raise ValueError(f"expected (...), got '{value}'")
    return value[1:-1]


class _Parser:
    def __init__(self, origin: str):
        self.origin = origin
        self.no = 0  # line being parsed, for messages

    def fail(self, msg: str) -> ParseError:
        return ParseError(f"{self.origin}:{self.no}: {msg}")

    def parse(self, text: str) -> TileProgram | Schedule:
        stmts = [
            (no, line.strip())
            for no, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#")
        ]
        if not stmts:
            raise ParseError(f"{self.origin}: no IR: expected a 'tile' or 'schedule' line")
        self.no, head = stmts[0]
        m = re.fullmatch(r"tile (.+)", head) or re.fullmatch(r"schedule (.+) sms=(\d+)", head)
        if not m:
            raise self.fail(
                f"expected 'tile MODEL' or 'schedule MODEL sms=N' first, got '{head[:60]}'"
            )
        is_schedule = head.startswith("schedule")
        self.model = m.group(1)
        self.sms = int(m.group(2)) if is_schedule else 0
        self.consts: list[tuple[str, object]] = []
        self.tensors: list[TensorDecl] = []
        self.counters: list[Counter] = []
        self.tasks: list[Task] = []
        self.program_fields: dict[str, object] = {}
        self.options: list[tuple[str, object]] = []
        self.schedule_fields: dict[str, object] = {}
        self.plan: dict[str, object] = {}
        self.plan_line = 0
        self.arenas: list[tuple[str, int]] = []
        self.layout: list[tuple[str, str, int]] = []
        self.sm_lines: dict[int, tuple[int, ...]] = {}
        self.task_notes: list[tuple[int, dict[str, object]]] = []  # (line, sm/at)
        for self.no, s in stmts[1:]:
            self.statement(s, is_schedule)
        program = TileProgram(
            self.model,
            tuple(self.tasks),
            tuple(self.counters),
            tuple(self.consts),
            tuple(self.tensors),
            **self.program_fields,  # type: ignore[arg-type]
        )
        self.check_references()
        return self.schedule(program) if is_schedule else program

    # ------------------------------------------------------------ statements

    def statement(self, s: str, is_schedule: bool) -> None:
        word = s.split(None, 1)[0]
        if re.fullmatch(r"t\d+", word):
            return self.task(s, is_schedule)
        if word in ("const", "option", "field", "schedule-field", "plan"):
            m = re.fullmatch(r"\S+ (\S+) = (.+)", s)
            if not m:
                raise self.fail(f"expected '{word} NAME = VALUE', got '{s[:60]}'")
            name, value = m.group(1), self.literal(m.group(2))
            if word == "const":
                self.consts.append((name, value))
            elif word == "option" and is_schedule:
                self.options.append((name, value))
            elif word == "field" and name in _PROGRAM_FIELDS:
                self.program_fields[name] = value
            elif word == "schedule-field" and is_schedule and name in _SCHEDULE_FIELDS:
                self.schedule_fields[name] = value
            elif word == "plan" and is_schedule:
                self.plan_field(name, value)
            else:
                raise self.fail(f"'{word} {name}' is not a field of this level")
            return None
        if word == "tensor":
            m = re.fullmatch(
                rf"tensor (\S+) \[([\dx]*)\] (\S+)(?: layer=(-?\d+))?(?: {FP8}=(\d+)x(\d+))?", s
            )
            if not m:
                raise self.fail(
                    f"expected 'tensor NAME [AxB] STORAGE layer=L [{FP8}=BNxBK]', got '{s[:60]}'"
                )
            shape = tuple(int(d) for d in m.group(2).split("x")) if m.group(2) else ()
            storage = self.enum(Storage, m.group(3), "storage")
            layer = int(m.group(4)) if m.group(4) is not None else -1
            block = (int(m.group(5)), int(m.group(6))) if m.group(5) else None
            if block is not None and (storage != Storage.WEIGHT or len(shape) != 2):
                raise self.fail(f"only a 2-D weight tensor can be {FP8}, got '{s[:60]}'")
            self.tensors.append(TensorDecl(m.group(1), shape, storage, layer, block))
            return None
        if word == "counter":
            m = re.fullmatch(r"counter c(\d+) (\S+) producers=(\d+)", s)
            if not m:
                raise self.fail(f"expected 'counter cI NAME producers=N', got '{s[:60]}'")
            if int(m.group(1)) != len(self.counters):
                raise self.fail(
                    f"counter c{m.group(1)} out of order: expected c{len(self.counters)}"
                )
            self.counters.append(Counter(m.group(2), int(m.group(3))))
            return None
        if is_schedule and word == "arena":
            m = re.fullmatch(r"arena (\S+) elements=(\d+)", s)
            if not m:
                raise self.fail(f"expected 'arena NAME elements=N', got '{s[:60]}'")
            self.arenas.append((m.group(1), int(m.group(2))))
            return None
        if is_schedule and word == "buffer":
            m = re.fullmatch(r"buffer (\S+) (\S+) @(\d+)", s)
            if not m:
                raise self.fail(f"expected 'buffer TENSOR ARENA @OFFSET', got '{s[:60]}'")
            self.layout.append((m.group(1), m.group(2), int(m.group(3))))
            return None
        if is_schedule and word == "sm":
            m = re.fullmatch(r"sm (\d+):(.*)", s)
            if not m:
                raise self.fail(f"expected 'sm I: tA tB ...', got '{s[:60]}'")
            sm = int(m.group(1))
            if sm >= self.sms or sm in self.sm_lines:
                why = "listed twice" if sm in self.sm_lines else f"the header says sms={self.sms}"
                raise self.fail(f"sm {sm}: {why}")
            self.sm_lines[sm] = tuple(self.task_ref(x) for x in m.group(2).split())
            return None
        raise self.fail(f"unknown statement '{word}'")

    def plan_field(self, name: str, value: object) -> None:
        f = _PLAN_FIELDS.get(name)
        if f is None:
            raise self.fail(
                f"'plan {name}' is not a field of the kernel plan: {', '.join(_PLAN_FIELDS)}"
            )
        if name in self.plan:
            raise self.fail(f"'plan {name}' given twice")
        kind = bool if f.type in ("bool", bool) else int
        if type(value) is not kind:
            want = "True or False" if kind is bool else "an int"
            raise self.fail(f"plan {name} must be {want} (got {value!r:.40})")
        self.plan[name] = value
        self.plan_line = self.plan_line or self.no

    def kernel_plan(self) -> KernelPlan | None:
        if not self.plan:
            return None
        missing = [
            n for n, f in _PLAN_FIELDS.items() if n not in self.plan and f.default is MISSING
        ]
        if missing:
            self.no = self.plan_line
            raise self.fail(f"the kernel plan has no {', '.join(missing)}: give every 'plan' line")
        return KernelPlan(**self.plan)  # type: ignore[arg-type]

    def task(self, s: str, is_schedule: bool) -> None:
        m = re.fullmatch(r"t(\d+) = (\S+) (\S+)(.*)", s)
        if not m:
            raise self.fail(f"expected 'tI = KIND OP key=value ...', got '{s[:60]}'")
        tid = int(m.group(1))
        if tid != len(self.tasks):
            raise self.fail(
                f"t{tid} out of order: expected t{len(self.tasks)} (ids are the global order)"
            )
        if m.group(2) not in KINDS:
            raise self.fail(f"unknown task kind '{m.group(2)}' (known: {', '.join(KINDS)})")
        kw: dict[str, object] = {"id": tid, "kind": m.group(2)}
        kw |= {"op": m.group(3), "reads": (), "weights": (), "writes": ()}
        notes: dict[str, object] = {}
        seen: set[str] = set()
        for token in _split_top(m.group(4), None):
            key, eq, value = token.partition("=")
            if not eq or not value:
                raise self.fail(f"t{tid}: expected key=value, got '{token[:60]}'")
            if key in seen:
                raise self.fail(f"t{tid}: '{key}' given twice")
            seen.add(key)
            try:
                self.task_field(kw, notes, key, value, is_schedule)
            except (ValueError, SyntaxError) as e:
                if isinstance(e, ParseError):
                    raise
                raise self.fail(f"t{tid} {key}=: {e}") from None
        if "layer" not in kw:
            raise self.fail(f"t{tid}: layer= is missing")
        self.tasks.append(Task(**kw))  # type: ignore[arg-type]
        self.task_notes.append((self.no, notes))

    def task_field(
        self, kw: dict[str, object], notes: dict[str, object], key: str, value: str, sched: bool
    ) -> None:
        if key in ("reads", "weights", "writes"):
            kw[key] = tuple(parse_region(r) for r in _split_top(_inner(value), ","))
        elif key == "args":
            pairs = []
            for a in _split_top(_inner(value), ","):
                name, eq, n = a.partition("=")
                if not eq:
                    raise ValueError(f"expected name=int, got '{a}'")
                pairs.append((name.strip(), int(n)))
            kw[key] = tuple(pairs)
        elif key in ("layer", "cost"):
            kw[key] = int(value)
        elif key == "deps":
            kw[key] = _task_ids(value)
        elif key == "waits":
            waits = []
            for w in _split_top(_inner(value), ","):
                wm = re.fullmatch(r"c(\d+)\s*>=\s*(\d+)", w)
                if not wm:
                    raise ValueError(f"expected cI>=N, got '{w}'")
                waits.append((int(wm.group(1)), int(wm.group(2))))
            kw[key] = tuple(waits)
        elif key == "signal":
            sm = re.fullmatch(r"c(\d+)", value)
            if not sm:
                raise ValueError(f"expected cI, got '{value}'")
            kw[key] = int(sm.group(1))
        elif sched and key == "sm":
            notes[key] = int(value)
        elif sched and key == "at":
            am = re.fullmatch(r"(\S+)us\.\.(\S+)us", value)
            if not am:
                raise ValueError(f"expected STARTus..ENDus, got '{value}'")
            try:
                notes[key] = (parse_us(am.group(1)), parse_us(am.group(2)))
            except InvalidOperation:
                raise ValueError(f"expected numbers in '{value}'") from None
        elif sched and key == "prefetch":  # in dumps before option l2_prefetch went
            if _inner(value).strip():
                raise ValueError("the per-task L2 prefetch plan went with option l2_prefetch")
        elif key in _TASK_FIELDS and key not in ("id", "kind", "op"):
            kw[key] = self.literal(value)
        else:
            known = "layer reads weights writes args cost deps waits signal"
            known += " sm at" if sched else ""
            raise ValueError(f"unknown key (known: {known})")

    # ------------------------------------------------------------ schedule level

    def schedule(self, program: TileProgram) -> Schedule:
        n = len(self.tasks)
        if self.sm_lines:
            lists = [self.sm_lines.get(sm, ()) for sm in range(self.sms)]
            where = {t: sm for sm, ts in enumerate(lists) for t in ts}
            for tid, (no, notes) in enumerate(self.task_notes):
                if "sm" in notes and where.get(tid) != notes["sm"]:
                    self.no = no
                    listed = f"on sm {where[tid]}" if tid in where else "on no 'sm' line"
                    raise self.fail(
                        f"t{tid} says sm={notes['sm']} but is listed {listed}: edit both, "
                        "or drop the sm= notes"
                    )
        else:
            per_sm: list[list[int]] = [[] for _ in range(self.sms)]
            for tid, (no, notes) in enumerate(self.task_notes):
                self.no = no
                sm = notes.get("sm")
                if not isinstance(sm, int) or not 0 <= sm < self.sms:
                    raise self.fail(f"t{tid}: needs sm=I (0 <= I < {self.sms}) or 'sm I:' lines")
                per_sm[sm].append(tid)
            lists = [tuple(ts) for ts in per_sm]
        predicted = self.all_or_none("at", n)
        return Schedule(
            program,
            tuple(tuple(ts) for ts in lists),
            predicted,  # type: ignore[arg-type]
            layout=tuple(self.layout),
            arena_sizes=tuple(self.arenas),
            options=tuple(self.options),
            plan=self.kernel_plan(),
            **self.schedule_fields,  # type: ignore[arg-type]
        )

    def all_or_none(self, key: str, n: int) -> tuple[object, ...]:
        have = [notes[key] for _, notes in self.task_notes if key in notes]
        if have and len(have) != n:
            no, _ = next((no, x) for no, x in self.task_notes if key not in x)
            self.no = no
            raise self.fail(f"{key}= is on some tasks but not this one: give it to all or none")
        return tuple(have)

    # ------------------------------------------------------------ helpers

    def check_references(self) -> None:
        """Every task and counter a line names exists (so later stages index safely)."""
        n, c = len(self.tasks), len(self.counters)
        for t, (no, _) in zip(self.tasks, self.task_notes, strict=True):
            self.no = no
            bad = [f"t{d}" for d in t.deps if not 0 <= d < n]
            bad += [f"c{w}" for w, _ in t.waits if not 0 <= w < c]
            bad += [f"c{t.signal}"] if t.signal >= c else []
            if bad:
                raise self.fail(f"t{t.id} names {', '.join(bad)}, which do not exist")
        for sm, ts in self.sm_lines.items():
            bad = [f"t{x}" for x in ts if x >= n]
            if bad:
                raise ParseError(f"{self.origin}: sm {sm} lists {', '.join(bad)}, not tasks here")

    def task_ref(self, s: str) -> int:
        m = re.fullmatch(r"t(\d+)", s.strip())
        if not m:
            raise self.fail(f"expected a task tI, got '{s}'")
        return int(m.group(1))

    def literal(self, s: str) -> object:
        try:
            return ast.literal_eval(s)
        except (ValueError, SyntaxError):
            raise self.fail(f"expected a Python literal, got '{s[:60]}'") from None

    def enum(self, cls: type[E], value: str, what: str) -> E:
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(x.value for x in cls)
            raise self.fail(f"unknown {what} '{value}' (known: {known})") from None
