"""Mutation tests of the verifier: take a schedule the compiler produced, break it in one
known way, and check the verifier rejects it and names the culprits.

Every test first checks the unmutated schedule passes, so a verifier that rejects
everything fails here too. Mutations are chosen by properties of the dependency graph
(reachability through `deps` and SM order), not by task ids, so the tests survive changes
to how ops are tiled.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

import tilert_compiler as tc
from tilert_compiler.ir.graph import OpKind
from tilert_compiler.ir.tile import Region, Schedule, Task, TileProgram
from tilert_compiler.ir.verify import VerifyError, verify_program, verify_schedule

CASES = {
    "tiny-llama-8sms": ("tiny-llama", 8),
    "tiny-qwen3-40sms": ("tiny-qwen3", 40),
}


@pytest.fixture(scope="module", params=list(CASES))
def cm(request):
    """Builds whose every hand-off is a counter (flags off), so every ordering the
    mutations below break is a `waits` entry; the polled ones are tested at the end."""
    name, sms = CASES[request.param]
    return tc.compile(name, overrides={"target": {"sms": sms}}, nvcc=False, flags=False)


# ------------------------------------------------------------------ helpers


def with_task(s: Schedule, task: Task) -> Schedule:
    return replace(s, program=with_task_in(s.program, task))


def with_task_in(p: TileProgram, task: Task) -> TileProgram:
    tasks = list(p.tasks)
    tasks[task.id] = task
    return p.with_tasks(tasks)


def with_lists(s: Schedule, lists: list[list[int]]) -> Schedule:
    return replace(s, sm_lists=tuple(tuple(ids) for ids in lists))


def ancestors(tasks: tuple[Task, ...]) -> list[set[int]]:
    """Transitive `deps` per task: what must finish before it, by data alone."""
    anc: list[set[int]] = []
    for t in tasks:  # ids are a topological order
        a: set[int] = set()
        for d in t.deps:
            a |= anc[d] | {d}
        anc.append(a)
    return anc


def ordered_before(s: Schedule, tasks: tuple[Task, ...]) -> list[set[int]]:
    """What the schedule orders before each task: its counters' producers and its SM
    predecessor, transitively. An independent oracle for the verifier's ordering check."""
    producers: dict[int, list[int]] = {}
    for t in tasks:
        producers.setdefault(t.signal, []).append(t.id)
    prev = {b: a for ids in s.sm_lists for a, b in zip(ids, ids[1:], strict=False)}
    before: list[set[int]] = []
    for t in tasks:
        direct = [p for c, _ in t.waits for p in producers.get(c, [])]
        direct += [prev[t.id]] if t.id in prev else []
        b: set[int] = set()
        for p in direct:
            b |= before[p] | {p}
        before.append(b)
    return before


def writers_of(tasks: tuple[Task, ...], r: Region) -> list[int]:
    return [w.id for w in tasks if any(r.overlaps(x) for x in w.writes)]


# ------------------------------------------------------------------ schedules


def test_the_compiled_schedule_and_program_pass(cm):
    verify_program(cm.stages["deps"])
    verify_schedule(cm.schedule)


def test_dropping_the_only_wait_of_a_task_first_on_its_sm_is_rejected(cm):
    # A task that opens its SM's list and waits on one counter has nothing else ordering
    # it after the writers of what it reads.
    s = cm.schedule
    verify_schedule(s)
    tasks = s.program.tasks
    first = [tasks[ids[0]] for ids in s.sm_lists if ids]
    victim = next(t for t in first if len(t.waits) == 1 and t.reads)
    with pytest.raises(VerifyError, match=rf"\bt{victim.id} reads "):
        verify_schedule(with_task(s, replace(victim, waits=())))


def test_dropping_a_needed_wait_is_rejected_for_every_task_kind(cm):
    s = cm.schedule
    verify_schedule(s)
    tasks = s.program.tasks
    dropped: dict[str, int] = {}
    for t in tasks:
        if t.kind in dropped or not t.waits:
            continue
        mutated = with_task(s, replace(t, waits=t.waits[1:]))
        before = ordered_before(mutated, mutated.program.tasks)[t.id]
        unordered = [w for r in t.reads for w in writers_of(tasks, r) if w < t.id]
        if not any(w not in before for w in unordered):
            continue  # the wait is implied by another path; dropping it is harmless
        with pytest.raises(VerifyError, match=rf"\bt{t.id} reads "):
            verify_schedule(mutated)
        dropped[t.kind] = t.id
    waiting_kinds = {t.kind for t in tasks if t.waits}
    assert set(dropped) == waiting_kinds, f"no needed wait found for {waiting_kinds - set(dropped)}"


def test_moving_a_task_to_another_sm_out_of_global_order_is_rejected(cm):
    # Move a task only the sample task (the last) depends on to just after a later task
    # of another SM: the schedule still completes, so the only fault is the order, and
    # that must be named.
    s = cm.schedule
    verify_schedule(s)
    tasks = s.program.tasks
    last = tasks[-1]
    assert last.kind == OpKind.SAMPLE
    needed = {d for t in tasks[:-1] for d in t.deps} | {last.id}
    sm_of = s.sm_of()
    lists = [list(ids) for ids in s.sm_lists]
    x = next(t.id for t in tasks if t.id not in needed)
    b = next(sm for sm, ids in enumerate(lists) if sm != sm_of[x] and ids and ids[-1] > x)
    y = next(i for i in lists[b] if i > x)
    lists[sm_of[x]].remove(x)
    lists[b].insert(lists[b].index(y) + 1, x)
    with pytest.raises(VerifyError, match=rf"sm{b} runs t{y} before t{x}, out of the global order"):
        verify_schedule(with_lists(s, lists))


def test_swapping_tasks_across_sms_into_a_deadlock_names_the_stuck_sms(cm):
    # Task 0 (the embedding) is an ancestor of everything. Swap it with the second task
    # of another SM: that SM's first task now waits on task 0 queued behind it, and task
    # 0's old SM opens with a task that needs task 0 too. Both SMs are stuck.
    s = cm.schedule
    verify_schedule(s)
    anc = ancestors(s.program.tasks)
    lists = [list(ids) for ids in s.sm_lists]
    a = s.sm_of()[0]
    b = next(sm for sm, ids in enumerate(lists) if sm != a and len(ids) >= 2)
    assert lists[a][0] == 0
    assert 0 in anc[lists[b][0]] and 0 in anc[lists[b][1]]
    lists[a][0], lists[b][1] = lists[b][1], lists[a][0]
    with pytest.raises(VerifyError, match="schedule deadlocks") as e:
        verify_schedule(with_lists(s, lists))
    assert f"sm{min(a, b)} at t" in str(e.value)
    assert f"sm{max(a, b)} at t" in str(e.value) or "..." in str(e.value)


def test_a_task_on_no_sm_or_on_two_is_rejected(cm):
    s = cm.schedule
    lists = [list(ids) for ids in s.sm_lists]
    last = lists[0].pop()
    with pytest.raises(VerifyError, match=rf"t{last} is on no SM's list"):
        verify_schedule(with_lists(s, lists))
    lists[0].append(last)
    lists[1].append(last)
    with pytest.raises(VerifyError, match=rf"t{last} is listed on sm0 and again on sm1"):
        verify_schedule(with_lists(s, lists))


# ------------------------------------------------------------------ coverage


def _int_box(r: Region) -> bool:
    return all(isinstance(lo, int) and isinstance(hi, int) for lo, hi in r.box)


def test_two_tasks_writing_one_region_are_both_named(cm):
    p = cm.stages["deps"]
    verify_program(p)
    by_tensor: dict[str, list[tuple[Task, Region]]] = {}
    for t in p.tasks:
        for r in t.writes:
            if _int_box(r):
                by_tensor.setdefault(r.tensor, []).append((t, r))
    (x, _), (y, ry) = next(ws[:2] for ws in by_tensor.values() if len(ws) >= 2)
    doubled = with_task_in(p, replace(x, writes=(*x.writes, ry)))
    with pytest.raises(VerifyError, match="written by several tasks") as e:
        verify_program(doubled)
    assert f"t{x.id}" in str(e.value) and f"t{y.id}" in str(e.value)


def test_a_coverage_hole_names_the_unwritten_element(cm):
    p = cm.stages["deps"]
    verify_program(p)
    t, i, r = next(
        (t, i, r)
        for t in p.tasks
        for i, r in enumerate(t.writes)
        if _int_box(r) and r.box[0][1] - r.box[0][0] >= 2
    )
    (lo, hi), *rest = r.box
    shrunk = Region(r.tensor, ((lo, hi - 1), *rest))
    writes = (*t.writes[:i], shrunk, *t.writes[i + 1 :])
    hole = [hi - 1] + [d_lo for d_lo, _ in rest]
    with pytest.raises(VerifyError, match=rf"{r.tensor}\[{hole[0]}\b.* is written by no task"):
        verify_program(with_task_in(p, replace(t, writes=writes)))


def test_a_tensor_nobody_writes_is_rejected(cm):
    p = cm.stages["deps"]
    verify_program(p)
    target = p.tasks[0].writes[0].tensor  # the embedding's output, read by layer 0
    tasks = [replace(t, writes=tuple(r for r in t.writes if r.tensor != target)) for t in p.tasks]
    with pytest.raises(VerifyError, match=rf"{target} is written by no task \(read by t"):
        verify_program(p.with_tasks(tasks))


def test_the_combining_split_must_come_last_in_its_group():
    """With flags the last split polls its group's partials: a split after it on the same
    SM would never run. verify names the order, not a hang on the GPU."""
    from dataclasses import replace

    import tilert_compiler as tc
    from tilert_compiler.ir.verify import VerifyError, verify_combiners

    prog = tc.compile("tiny-llama", nvcc=False).schedule.program
    verify_combiners(prog)
    first = next(t for t in prog.tasks if "arrive" in dict(t.args))
    group = [t for t in prog.tasks if dict(t.args).get("arrive") == first.arg("arrive")]
    assert len(group) > 1
    a, b = group[0], group[-1]  # swap the first and the last split's roles
    swap = dict(a.args) | {"split": b.arg("split")}, dict(b.args) | {"split": a.arg("split")}
    tasks = list(prog.tasks)
    tasks[a.id] = replace(a, args=tuple(swap[0].items()))
    tasks[b.id] = replace(b, args=tuple(swap[1].items()))
    with pytest.raises(VerifyError, match="combines its group's partials"):
        verify_combiners(prog.with_tasks(tasks))


@pytest.mark.parametrize("case", list(CASES))
def test_dropping_what_a_polling_task_polls_for_is_rejected(case):
    """With flags the GEMV and attention tasks order their reads by polling the data of
    their `deps`: a task that opens its SM's list and loses its deps reads unordered."""
    from tilert_compiler.ir.kinds import KINDS

    name, sms = CASES[case]
    s = tc.compile(name, overrides={"target": {"sms": sms}}, nvcc=False).schedule
    verify_schedule(s)
    tasks = s.program.tasks
    first = [tasks[ids[0]] for ids in s.sm_lists if ids]
    victim = next(t for t in first if KINDS[t.kind].polls and t.deps and not t.waits)
    with pytest.raises(VerifyError, match=rf"\bt{victim.id} reads "):
        verify_schedule(with_task(s, replace(victim, deps=())))
