"""Checks between passes. Each raises `VerifyError` naming the offending tasks.

- coverage: every element of every tensor a step writes is written by exactly one task;
- completion: the per-SM lists, run against their counters, finish (no deadlock);
- ordering: every read happens after every write it overlaps (through counter waits,
  polling for data that carries the step's parity, or the SM's own program order), so
  no task can read a value before it exists;
- layout: every tensor placed once, aligned, inside its arena; every region in its shape;
- the kernel plan: its roles and ring are ones the kernel runs, and its shared memory
  holds every task kind's scratch and fits the target.
"""

from __future__ import annotations

import numpy as np

from tilert_compiler.ir.graph import Storage
from tilert_compiler.ir.kinds import KINDS
from tilert_compiler.ir.plan import STATIC_SMEM_RESERVE, variant_row_bytes
from tilert_compiler.ir.target import Target
from tilert_compiler.ir.tasktable import Variant
from tilert_compiler.ir.tile import Schedule, Task, TileProgram


class VerifyError(ValueError):
    pass


def _grid_index(box, symbolic_dims: set[int]):
    idx = []
    for d, (lo, hi) in enumerate(box):
        idx.append(slice(0, 1) if d in symbolic_dims else slice(lo, hi))
    return tuple(idx)


def verify_program(p: TileProgram) -> None:
    shapes = {t.name: t.shape for t in p.tensors}
    writers: dict[str, list[Task]] = {}
    for t in p.tasks:
        for name in dict.fromkeys(r.tensor for r in t.writes):  # once per task: no double count
            writers.setdefault(name, []).append(t)
    # A tensor no task writes would pass the per-writer counts below unseen.
    for decl in p.tensors:
        if decl.storage != Storage.WEIGHT and decl.name not in writers:
            readers = [f"t{t.id}" for t in p.tasks if any(r.tensor == decl.name for r in t.reads)]
            raise VerifyError(
                f"{decl.name} is written by no task (read by {', '.join(readers[:4]) or 'none'})"
            )
    for name, ts in writers.items():
        boxes = [(t, r) for t in ts for r in t.writes if r.tensor == name]
        sym = {
            d
            for _, r in boxes
            for d, (lo, hi) in enumerate(r.box)
            if not (isinstance(lo, int) and isinstance(hi, int))
        }
        shape = tuple(1 if d in sym else n for d, n in enumerate(shapes[name]))
        count = np.zeros(shape, dtype=np.int32)
        for _, r in boxes:
            count[_grid_index(r.box, sym)] += 1
        if (count > 1).any():
            at = tuple(int(i) for i in np.argwhere(count > 1)[0])
            who = [f"t{t.id}" for t, r in boxes if _contains(r.box, at, sym)]
            raise VerifyError(f"{name}{list(at)} is written by several tasks: {', '.join(who)}")
        if (count == 0).any():
            at = tuple(int(i) for i in np.argwhere(count == 0)[0])
            raise VerifyError(f"{name}{list(at)} is written by no task (writers: {len(ts)})")


def _contains(box, at, sym) -> bool:
    return all(
        d in sym or lo <= i < hi for d, ((lo, hi), i) in enumerate(zip(box, at, strict=True))
    )


def _polled(p: TileProgram) -> list[tuple[int, ...]]:
    """Per task, the dependencies it orders by polling their data (passes.deps, flags)."""
    on = bool(dict(p.consts).get("flags", 0))
    return [t.deps if on and KINDS[t.kind].polls else () for t in p.tasks]


def _happens_before(s: Schedule) -> list[int]:
    """Ancestor bitmask per task: what finished before it may start, through counter
    waits, polled inputs and the SM's own order."""
    tasks = s.program.tasks
    polled = _polled(s.program)
    producers: dict[int, list[int]] = {}
    for t in tasks:
        producers.setdefault(t.signal, []).append(t.id)
    prev_on_sm: dict[int, int] = {}
    for ids in s.sm_lists:
        for a, b in zip(ids, ids[1:], strict=False):
            prev_on_sm[b] = a
    anc = [0] * len(tasks)
    counter_mask: dict[int, int] = {}  # a counter's producers and all their ancestors
    for t in tasks:  # global topological order: every predecessor has a lower id
        m = 0
        for c, _ in t.waits:
            if c not in counter_mask:
                cm = 0
                for x in producers.get(c, []):
                    if x >= t.id:
                        raise VerifyError(f"t{t.id} waits on c{c}, signalled by later t{x}")
                    cm |= anc[x] | (1 << x)
                counter_mask[c] = cm
            m |= counter_mask[c]
        for x in polled[t.id]:
            if x >= t.id:
                raise VerifyError(f"t{t.id} polls the output of later t{x}")
            m |= anc[x] | (1 << x)
        if t.id in prev_on_sm:
            x = prev_on_sm[t.id]
            m |= anc[x] | (1 << x)
        anc[t.id] = m
    return anc


def verify_completes(s: Schedule) -> None:
    tasks = s.program.tasks
    polled = _polled(s.program)
    ran = [False] * len(tasks)
    count = [0] * len(s.program.counters)
    head = [0] * len(s.sm_lists)
    done = 0
    while done < len(tasks):
        progress = False
        for sm, ids in enumerate(s.sm_lists):
            while head[sm] < len(ids):
                t = tasks[ids[head[sm]]]
                if any(count[c] < n for c, n in t.waits) or not all(ran[x] for x in polled[t.id]):
                    break
                if t.signal >= 0:
                    count[t.signal] += 1
                ran[t.id] = True
                head[sm] += 1
                done += 1
                progress = True
        if not progress:
            stuck = [
                f"sm{sm} at t{ids[head[sm]]} (waits "
                + ", ".join(
                    f"c{c}={count[c]}/{n}" for c, n in tasks[ids[head[sm]]].waits if count[c] < n
                )
                + ")"
                for sm, ids in enumerate(s.sm_lists)
                if head[sm] < len(ids)
            ]
            raise VerifyError(
                f"schedule deadlocks, {len(stuck)} of {len(s.sm_lists)} SMs stuck: "
                + "; ".join(stuck[:4])
                + ("; ..." if len(stuck) > 4 else "")
            )


def verify_ordering(s: Schedule) -> None:
    tasks = s.program.tasks
    anc = _happens_before(s)
    arrival: dict[int, list[int]] = {}
    for t in tasks:
        if "arrive" in dict(t.args):
            arrival.setdefault(t.arg("arrive"), []).append(t.id)
    writers: dict[str, list[Task]] = {}
    for t in tasks:
        for r in t.writes:
            for w in writers.get(r.tensor, ()):
                if not (anc[t.id] >> w.id) & 1 and any(r.overlaps(x) for x in w.writes):
                    raise VerifyError(f"t{w.id} and t{t.id} write {r} with no order between them")
        for r in t.reads:
            for w in writers.get(r.tensor, ()):
                if not any(r.overlaps(x) for x in w.writes):
                    continue
                # An output combined by the last arriving task of a group may come from any
                # task of the group: the reader must wait for all of them.
                group = arrival.get(dict(w.args).get("arrive", -1), [w.id])
                for x in group:
                    if not (anc[t.id] >> x) & 1:
                        raise VerifyError(
                            f"t{t.id} reads {r} without waiting for its writer t{x}"
                            + (f" (of t{w.id}'s arrival group)" if x != w.id else "")
                        )
        for r in t.writes:
            writers.setdefault(r.tensor, []).append(t)


def verify_schedule(s: Schedule) -> None:
    n = len(s.program.tasks)
    seen: dict[int, int] = {}
    for sm, ids in enumerate(s.sm_lists):
        for t in ids:
            if not 0 <= t < n:
                raise VerifyError(f"sm{sm} lists t{t}, which does not exist ({n} tasks)")
            if t in seen:
                raise VerifyError(f"t{t} is listed on sm{seen[t]} and again on sm{sm}")
            seen[t] = sm
    if len(seen) != n:
        missing = next(t for t in range(n) if t not in seen)
        raise VerifyError(f"t{missing} is on no SM's list")
    # Completion first: a deadlock is the failure worth naming (the stuck SMs), and an
    # out-of-order list is only its usual cause.
    verify_completes(s)
    for sm, ids in enumerate(s.sm_lists):
        for a, b in zip(ids, ids[1:], strict=False):
            if a > b:
                raise VerifyError(f"sm{sm} runs t{a} before t{b}, out of the global order")
    verify_ordering(s)
    verify_combiners(s.program)


def verify_combiners(p: TileProgram) -> None:
    """With flags, the last split of a split-attention group combines the group's partials,
    polling for them: every other split must come before it in the global order (so none
    is behind it on its SM's list, which would never finish)."""
    if not dict(p.consts).get("flags", 0):
        return
    groups: dict[int, list[Task]] = {}
    for t in p.tasks:
        if "arrive" in dict(t.args):
            groups.setdefault(t.arg("arrive"), []).append(t)
    for members in groups.values():
        last = max(members, key=lambda t: t.arg("split"))
        if last.id != max(t.id for t in members):
            raise VerifyError(
                f"t{last.id} combines its group's partials but t{max(t.id for t in members)} "
                "of the group comes after it"
            )


# ---------------------------------------------------------------- layout and regions
# Every arena's element size, and the alignment (16 bytes) vector loads and bulk copies
# need at every tensor's start. passes/layout.py places them this way; an edited dump
# (--from-ir) may not.
ARENA_ELEMENT_BYTES = {"weights": 2, "act": 4}
_ALIGN_BYTES = 16


def verify_layout(s: Schedule, max_seq_len: int | None = None, vocab: int | None = None) -> None:
    """The memory a step touches: every tensor a task names is declared, placed once in
    the arena of its storage, aligned, inside the arena's size and overlapping no other
    tensor there; every task region lies inside its tensor's shape
    at every step, `pos` running to max_seq_len - 1 and `tok` to vocab - 1 (default: the
    program's consts of those names)."""
    p = s.program
    consts = dict(p.consts)
    steps = int(max_seq_len if max_seq_len is not None else consts.get("max_seq_len", 1))
    tokens = int(vocab if vocab is not None else consts.get("vocab", 1))
    symbols = {"pos": steps - 1, "tok": tokens - 1}
    decls = {d.name: d for d in p.tensors}
    for name, n in (("max_seq_len", steps), ("vocab", tokens)):
        if n < 1:
            raise VerifyError(f"{name} must be 1 or more (got {n})")
    _verify_placement(s, decls)
    for t in p.tasks:
        for field_name in ("reads", "weights", "writes"):
            for r in getattr(t, field_name):
                _verify_region(f"t{t.id} {field_name}", r, decls, symbols)
    if any(s.prefetch):
        raise VerifyError(
            "the schedule has a per-task L2 prefetch plan, which was removed with option "
            "l2_prefetch; leave Schedule.prefetch empty"
        )


def _verify_placement(s: Schedule, decls: dict) -> None:
    if not s.layout:
        raise VerifyError("no buffer is placed: the schedule has no layout")
    sizes: dict[str, int] = {}
    for arena, n in s.arena_sizes:
        if arena not in ARENA_ELEMENT_BYTES:
            raise VerifyError(f"arena {arena} is not one of {', '.join(ARENA_ELEMENT_BYTES)}")
        if arena in sizes:
            raise VerifyError(f"arena {arena} is declared twice")
        sizes[arena] = n
    placed: dict[str, tuple[str, int]] = {}
    for name, arena, off in s.layout:
        if name not in decls:
            raise VerifyError(f"buffer {name} places a tensor that is not declared")
        if name in placed:
            raise VerifyError(f"buffer {name} is placed twice")
        decl = decls[name]
        want = "weights" if decl.storage == Storage.WEIGHT else "act"
        if arena != want:
            raise VerifyError(
                f"buffer {name} is in arena {arena}; a {decl.storage.value} tensor belongs "
                f"in {want}"
            )
        if arena not in sizes:
            raise VerifyError(f"buffer {name} is in arena {arena}, which has no size line")
        align = _ALIGN_BYTES // ARENA_ELEMENT_BYTES[arena]
        if off < 0 or off % align:
            raise VerifyError(
                f"buffer {name} @{off}: offsets in arena {arena} must be multiples of {align}"
            )
        if off + decl.arena_units > sizes[arena]:
            raise VerifyError(
                f"buffer {name} ({arena} @{off}, {decl.arena_units} elements) ends at "
                f"{off + decl.arena_units}, past arena {arena}'s {sizes[arena]} elements"
            )
        placed[name] = (arena, off)
    for arena in sizes:
        spans = sorted(
            (off, off + decls[n].arena_units, n) for n, (a, off) in placed.items() if a == arena
        )
        for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
            if start < end:
                raise VerifyError(
                    f"buffers {a} and {b} overlap in arena {arena} "
                    f"(elements {start}..{min(end, start + decls[b].arena_units)})"
                )
    used = dict.fromkeys(r.tensor for t in s.program.tasks for r in t.reads + t.weights + t.writes)
    for name in used:
        if name not in placed:
            raise VerifyError(f"tensor {name} is used by a task but placed in no arena")


def _bound_range(b, symbols: dict[str, int]) -> tuple[int, int]:
    """The least and greatest value a bound takes over the steps."""
    if isinstance(b, int):
        return b, b
    sym, off = b
    return off, symbols[sym] + off


def _verify_region(who: str, r, decls: dict, symbols: dict[str, int]) -> None:
    if r.tensor not in decls:
        raise VerifyError(f"{who} {r}: no tensor {r.tensor} is declared")
    shape = decls[r.tensor].shape
    if len(r.box) != len(shape):
        raise VerifyError(f"{who} {r}: {len(r.box)} dimensions, tensor {r.tensor} has {len(shape)}")
    for d, ((lo, hi), n) in enumerate(zip(r.box, shape, strict=True)):
        lo_min, lo_max = _bound_range(lo, symbols)
        hi_min, hi_max = _bound_range(hi, symbols)
        if isinstance(lo, tuple) and isinstance(hi, tuple) and lo[0] == hi[0]:
            empty_or_more = lo[1] <= hi[1]  # the same symbol on both sides
        else:
            empty_or_more = lo_max <= hi_min
        at = ", ".join(f"{k}={v}" for k, v in symbols.items() if _names(lo, hi, k))
        when = f" (at {at})" if at else ""
        if lo_min < 0:
            raise VerifyError(f"{who} {r}: dimension {d} starts below 0{when}")
        if hi_max > n:
            raise VerifyError(
                f"{who} {r}: dimension {d} runs to {hi_max}{when}, past {r.tensor}'s {n}"
            )
        if not empty_or_more:
            raise VerifyError(f"{who} {r}: dimension {d} ends before it starts{when}")


def _names(lo, hi, sym: str) -> bool:
    return any(isinstance(b, tuple) and b[0] == sym for b in (lo, hi))


def verify_deps_order(p: TileProgram) -> None:
    """Every task depends only on earlier tasks: the task ids are one topological order,
    which the scheduler and the verifiers above assume."""
    for t in p.tasks:
        later = [f"t{d}" for d in t.deps if d >= t.id]
        if later:
            raise VerifyError(f"t{t.id} depends on {', '.join(later)}, not earlier tasks")


def verify_consts(p: TileProgram, config: dict) -> None:
    """The program's consts (hidden, heads, max_seq_len, ...) equal the config's fields
    of the same name: code is generated from the config, the tasks from the consts, so an
    edited dump must not let them part."""
    for key, value in p.consts:
        if key in config and config[key] != value:
            raise VerifyError(
                f"const {key} = {value!r}, but the config says {key}: {config[key]!r:.40}"
            )


# ---------------------------------------------------------------- the kernel plan


def verify_plan(s: Schedule, variants: list[Variant], target: Target) -> None:
    """The kernel plan (ir/plan.py) as the kernel needs it, for the task kinds `variants`
    (the schedule's task table's) on `target`: one thread block of the target's size, one
    producer warp with the ring, a ring of 2 stages or more that each hold a weight row,
    copies in flight within the ring, scratch for every task kind, and shared memory
    within the target's."""
    p = s.plan
    if p is None:
        raise VerifyError("the schedule has no kernel plan ('plan' lines); resume from layout")

    def bad(what: str) -> VerifyError:
        return VerifyError(f"kernel plan: {what}")

    ring = bool(dict(s.options).get("weight_ring"))
    if p.ring != ring:
        raise bad(f"plan ring = {p.ring} but option weight_ring = {ring}: edit both")
    if p.threads != target.threads_per_block:
        raise bad(
            f"plan threads = {p.threads}, the target's blocks have {target.threads_per_block}"
        )
    consumers = p.threads - 32 if p.ring else p.threads
    if p.consumers != consumers:
        role = "one warp feeds the ring, the rest" if p.ring else "without the ring all threads"
        raise bad(f"plan consumers = {p.consumers}: {role} run tasks, {consumers}")
    widest, kmax = max(
        ((variant_row_bytes(v), v.get("K")) for v in variants if "K" in dict(v.static)),
        default=(0, 0),
    )
    if p.stage_bytes % 1024 or p.stage_bytes < widest:
        raise bad(
            f"plan stage_bytes = {p.stage_bytes} must be whole KiB holding a weight row of "
            f"K = {kmax} ({widest} bytes)"
        )
    if p.ring and (p.stages < 2 or not 1 <= p.in_flight <= p.stages):
        raise bad(
            f"plan stages = {p.stages}, in_flight = {p.in_flight}: a ring has 2 stages or "
            "more and 1 to stages copies in flight"
        )
    if not p.ring and (p.stages or p.in_flight):
        raise bad("without the ring, plan stages and in_flight are 0")
    if p.x_regs < 0 or p.part_batch < 1:
        raise bad(
            f"plan x_regs = {p.x_regs} must be 0 or more, part_batch = {p.part_batch} 1 or more"
        )

    def scratch(v: Variant) -> int:
        return KINDS[v.kind].scratch(v, consumers // 32, p.stage_bytes)

    need = max(variants, key=scratch)
    floats = scratch(need)
    if p.scratch_floats < floats:
        raise bad(
            f"plan scratch_floats = {p.scratch_floats}, task kind {need.label} needs {floats}"
        )
    if STATIC_SMEM_RESERVE + p.smem_bytes > target.smem_per_block:
        raise bad(
            f"{p.stages} ring stages of {p.stage_bytes} bytes + {4 * p.scratch_floats} bytes "
            f"of scratch + {STATIC_SMEM_RESERVE} static = "
            f"{STATIC_SMEM_RESERVE + p.smem_bytes} bytes of shared memory, the target allows "
            f"{target.smem_per_block}; plan fewer stages"
        )
