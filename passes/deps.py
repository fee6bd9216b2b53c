"""deps: tile program -> tile program with dependencies and counters.

1. A task depends on every earlier task that writes a region overlapping one it reads
   (and on every task of that writer's arrival group, see ir/kinds.py ARRIVE).
2. Dependencies implied by others (an ancestor of another dependency) are dropped.
3. Each op's tasks are grouped into counters: the coarsest partition such that every
   consumer's dependency set is a union of groups. A consumer that needs every tile of an
   op waits on one counter; attention for one head waits only on that head's q and kv
   tasks. Counters are monotonic across steps: a wait is `count >= step * producers`.
4. With `flags`, activations carry their step: the kernel writes each float with the
   step's parity in its lowest mantissa bit, and the task kinds that poll (ir/kinds.py `polls`) read
   their inputs until every element has this step's parity. Their dependencies need no
   counter: the data is the signal, so the producer skips the release (a fence that waits
   for its writes to reach L2) and the consumer skips the poll of a counter before its
   loads: one memory round trip per hand-off instead of three. The sample task still
   waits on the LM head's counter, and the step gate on the sample task's.
"""

from __future__ import annotations

from dataclasses import replace

from tilert_compiler.ir.kinds import KINDS
from tilert_compiler.ir.tile import Counter, Task, TileProgram


def _direct_deps(tasks: tuple[Task, ...]) -> list[set[int]]:
    writers: dict[str, list[Task]] = {}
    # Tasks sharing an arrival counter write their combined output through whichever of
    # them arrives last: depending on one of them means depending on all of them.
    arrival: dict[int, list[int]] = {}
    for t in tasks:
        if "arrive" in dict(t.args):
            arrival.setdefault(t.arg("arrive"), []).append(t.id)
    deps: list[set[int]] = []
    for t in tasks:
        d: set[int] = set()
        for r in t.reads:
            for w in writers.get(r.tensor, ()):
                if any(r.overlaps(wr) for wr in w.writes):
                    d.add(w.id)
                    if "arrive" in dict(w.args):
                        d.update(arrival[w.arg("arrive")])
        deps.append(d)
        for wr in t.writes:
            writers.setdefault(wr.tensor, []).append(t)
    return deps


def _reduce(deps: list[set[int]]) -> list[set[int]]:
    """Transitive reduction, with ancestor sets as bitmasks (task ids ascend topologically)."""
    anc: list[int] = []
    out: list[set[int]] = []
    for d in deps:
        implied = 0
        for x in d:
            implied |= anc[x]
        keep = {x for x in d if not (implied >> x) & 1}
        mask = implied
        for x in keep:
            mask |= anc[x] | (1 << x)
        anc.append(mask)
        out.append(keep)
    return out


def _partition(members: list[int], needs: list[frozenset[int]]) -> list[list[int]]:
    blocks = [list(members)]
    for need in needs:
        split: list[list[int]] = []
        for b in blocks:
            inside = [x for x in b if x in need]
            outside = [x for x in b if x not in need]
            split += [s for s in (inside, outside) if s]
        blocks = split
    return blocks


def deps(program: TileProgram, *, flags: bool) -> TileProgram:
    """`flags`: consumers of polling kinds read their inputs until they carry the step's
    parity, and wait on no counter; a producer whose every consumer polls signals none."""
    tasks = program.tasks
    reduced = _reduce(_direct_deps(tasks))
    polls = [flags and KINDS[t.kind].polls for t in tasks]
    waited = {x for t, d in zip(tasks, reduced, strict=True) if not polls[t.id] for x in d}
    consumed = {x for d in reduced for x in d}
    by_op: dict[str, list[int]] = {}
    for t in tasks:
        by_op.setdefault(t.op, []).append(t.id)
    # What each counter-waiting consumer needs of each producer op.
    needs: dict[str, set[frozenset[int]]] = {op: set() for op in by_op}
    for t, d in zip(tasks, reduced, strict=True):
        if polls[t.id]:
            continue
        per_op: dict[str, set[int]] = {}
        for x in d:
            per_op.setdefault(tasks[x].op, set()).add(x)
        for op, xs in per_op.items():
            needs[op].add(frozenset(xs))
    counters: list[Counter] = list(program.counters)  # the tile pass's arrival counters
    signal: dict[int, int] = {}
    for op, members in by_op.items():
        # Read only by polling consumers: no counter (a task nobody reads, such as the
        # sample task, keeps one: the step gate waits on it).
        if all(x in consumed and x not in waited for x in members):
            signal.update({x: -1 for x in members})
            continue
        blocks = _partition(members, sorted(needs[op], key=sorted))
        for b in blocks:
            name = op if len(blocks) == 1 else f"{op}#{tasks[b[0]].id}"
            for x in b:
                signal[x] = len(counters)
            counters.append(Counter(name, len(b)))
    out = []
    for t, d in zip(tasks, reduced, strict=True):
        waits = [] if polls[t.id] else sorted({signal[x] for x in d})
        out.append(
            Task(
                **{
                    **t.__dict__,
                    "deps": tuple(sorted(d)),
                    "signal": signal[t.id],
                    "waits": tuple((c, counters[c].producers) for c in waits),
                }
            )
        )
    consts = tuple((k, v) for k, v in program.consts if k != "flags") + (("flags", int(flags)),)
    return replace(program.with_tasks(out, counters=tuple(counters)), consts=consts)
