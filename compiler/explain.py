"""`tilert-compile --explain`: what the schedule does, per layer and op, in hardware terms.

For every fused op: its tasks, the weight bytes it streams and all bytes it moves, the
SMs (and SM roles) it runs on, the SM time the cost model gives it and the window it
occupies in the predicted schedule. Then the predicted step time against the floor
(every weight byte streamed once at HBM bandwidth), and where SM time goes.
"""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import dataclass

from tilert_compiler.ir.graph import Storage
from tilert_compiler.ir.target import Target
from tilert_compiler.ir.tile import W_BYTES, Schedule, Task, region_weight_bytes
from tilert_compiler.passes.schedule import ready_at, task_seconds


@dataclass
class OpRow:
    op: str
    kind: str
    layer: int
    tasks: int = 0
    weight_bytes: int = 0
    moved_bytes: int = 0
    work_s: float = 0.0  # SM time: sum of the op's task durations
    start_s: float = float("inf")
    end_s: float = 0.0
    sms: frozenset[int] = frozenset()


def durations(sched: Schedule, target: Target) -> list[tuple[float, float]]:
    """(start, end) per task: the schedule's prediction where it fits the SM lists, else
    the lists re-timed with the cost model (a hand-edited schedule keeps stale `at=`)."""
    if sched.predicted and _consistent(sched):
        return list(sched.predicted)
    return retime(sched, target)


def retime(sched: Schedule, target: Target) -> list[tuple[float, float]]:
    """Run the SM lists in global order as the list scheduler times them: a task starts
    when its SM is free and its dependencies have ended, and lasts `task_seconds`."""
    tasks = sched.program.tasks
    sm_of = sched.sm_of()
    free = [0.0] * len(sched.sm_lists)
    end = [0.0] * len(tasks)
    spans = [(0.0, 0.0)] * len(tasks)
    for t in tasks:  # ids are a topological order; each SM list is in id order
        sm = sm_of.get(t.id, 0)
        start = max(free[sm], ready_at(t.deps, end, target))
        end[t.id] = free[sm] = start + task_seconds(t.cost, target)
        spans[t.id] = (start, end[t.id])
    return spans


def _consistent(sched: Schedule) -> bool:
    p = sched.predicted
    eps = 1e-12
    for ids in sched.sm_lists:
        if any(p[b][0] < p[a][1] - eps for a, b in zip(ids, ids[1:], strict=False)):
            return False
    return all(p[t.id][0] >= p[d][1] - eps for t in sched.program.tasks for d in t.deps)


def weight_bytes(sched: Schedule) -> int:
    """Bytes of every weight tensor once (a tied embedding counts once): the floor's bytes.
    FP8 weights count their e4m3 bytes and the scales streamed with each row."""
    return (
        sum(d.arena_units for d in sched.program.tensors if d.storage == Storage.WEIGHT) * W_BYTES
    )


def streamed_bytes(t: Task, decls: dict) -> int:
    return sum(region_weight_bytes(r, decls[r.tensor]) for r in t.weights)


def sm_roles(sched: Schedule) -> list[str]:
    """A role per SM. Kinds of layer tasks that share an SM belong to one role (connected
    components of 'runs on the same SM'), so roles appear only where the schedule keeps
    kinds apart, e.g. attention SMs and GEMV SMs. One role for all SMs is 'any'. The
    once-per-step embed and LM head are left out: they go wherever there is room."""
    tasks = sched.program.tasks
    parent: dict[str, str] = {}

    def root(k: str) -> str:
        while parent.setdefault(k, k) != k:
            k = parent[k]
        return k

    per_sm = [sorted({tasks[i].kind for i in ids if tasks[i].layer >= 0}) for ids in sched.sm_lists]
    for ks in per_sm:
        for k in ks[1:]:
            parent[root(k)] = root(ks[0])
    comps = sorted({root(k) for ks in per_sm for k in ks})
    name = {c: ("any" if len(comps) == 1 else f"R{i}") for i, c in enumerate(comps)}
    return [name[root(ks[0])] if ks else "-" for ks in per_sm]


def op_rows(sched: Schedule, target: Target) -> list[OpRow]:
    spans = durations(sched, target)
    sm_of = sched.sm_of()
    decls = {d.name: d for d in sched.program.tensors}
    rows: dict[str, OpRow] = {}
    for t in sched.program.tasks:
        r = rows.setdefault(t.op, OpRow(t.op, t.kind, t.layer))
        start, end = spans[t.id]
        r.tasks += 1
        r.weight_bytes += streamed_bytes(t, decls)
        r.moved_bytes += t.cost
        r.work_s += end - start
        r.start_s, r.end_s = min(r.start_s, start), max(r.end_s, end)
        if t.id in sm_of:
            r.sms = r.sms | {sm_of[t.id]}
    return list(rows.values())


def explain(sched: Schedule, target: Target) -> str:
    p = sched.program
    rows = op_rows(sched, target)
    roles = sm_roles(sched)
    spans = durations(sched, target)
    us = 1e6
    head = (
        f"{'layer':>5}  {'op':<16} {'kind':<18} {'tasks':>5} {'SMs':>4} {'roles':<8}"
        f" {'weights MB':>10} {'moved MB':>9} {'SM-time us':>10} {'window us':>17} {'GB/s':>6}"
    )
    lines = [
        f"{p.model}: {len(p.tasks)} tasks, {len(p.counters)} counters, "
        f"{len(sched.sm_lists)} SMs ({target.arch})",
        "",
        head,
        "-" * len(head),
    ]
    last_layer = None
    for r in rows:
        if last_layer is not None and r.layer != last_layer:
            lines.append("")
        layer = "-" if r.layer < 0 else str(r.layer)
        window = r.end_s - r.start_s
        rate = r.moved_bytes / window / 1e9 if window > 0 else 0.0
        role = ",".join(sorted({roles[s] for s in r.sms})) or "-"
        lines.append(
            f"{layer if r.layer != last_layer else '':>5}  {r.op:<16} {r.kind:<18} {r.tasks:>5}"
            f" {len(r.sms):>4} {role:<8} {r.weight_bytes / 1e6:>10.2f} {r.moved_bytes / 1e6:>9.2f}"
            f" {r.work_s * us:>10.1f} {r.start_s * us:>8.1f}..{r.end_s * us:<7.1f} {rate:>6.0f}"
        )
        last_layer = r.layer
    lines.append("")
    lines += _summary(sched, target, rows, roles, spans)
    return "\n".join(lines) + "\n"


def _summary(sched, target: Target, rows: list[OpRow], roles: list[str], spans) -> list[str]:
    p = sched.program
    step = max((e for _, e in spans), default=0.0)
    floor = weight_bytes(sched) / target.hbm_bytes_per_s
    busy = sum(e - s for s, e in spans)
    # Per SM: gaps before and between its tasks are waits on dependencies (the list
    # scheduler starts a task at max(SM free, inputs ready)); after its last task, idle.
    wait = idle = 0.0
    for ids in sched.sm_lists:
        free = 0.0
        for i in ids:
            s, e = spans[i]
            wait += max(0.0, s - free)
            free = e
        idle += step - free
    total = step * len(sched.sm_lists) or 1.0
    lines = [
        f"predicted step  {step * 1e6:9.1f} us   cost model: a task streams at "
        f"{min(target.hbm_bytes_per_s / target.sms, target.sm_bytes_per_s) / 1e9:.1f} GB/s "
        f"(its SM's share of HBM, at most one SM's best), plus "
        f"{target.task_overhead_s * 1e6:.1f} us per task and {target.handoff_s * 1e6:.1f} us "
        "per dependency hand-off",
        f"floor           {floor * 1e6:9.1f} us   {_size(weight_bytes(sched))} of weights / "
        f"{target.hbm_bytes_per_s / 1e12:.2f} TB/s",
        f"predicted/floor {step / floor if floor else 0:9.2f} x    "
        f"({100 * floor / step if step else 0:.0f} % of HBM bandwidth)",
        f"SM time         {100 * busy / total:5.1f} % running tasks, {100 * wait / total:.1f} % "
        f"waiting on dependencies, {100 * idle / total:.1f} % idle after their last task",
    ]
    kinds = Tally()
    kind_tasks = Tally()
    for r in rows:
        kinds[r.kind] += r.work_s
        kind_tasks[r.kind] += r.tasks
    lines.append(
        "SM time by kind "
        + ", ".join(f"{k} {100 * v / (busy or 1):.0f} %" for k, v in kinds.most_common())
    )
    if len(set(roles) - {"-", "any"}) > 1:
        tasks = p.tasks
        for role in sorted(set(roles)):
            sms = [sm for sm, r in enumerate(roles) if r == role]
            ks = sorted({tasks[i].kind for sm in sms for i in sched.sm_lists[sm]})
            lines.append(f"SM role {role:<7} {len(sms):4d} SMs run {', '.join(ks) or 'nothing'}")
    return lines


def _size(n: float) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e8 else f"{n / 1e6:.3f} MB"


# ---------------------------------------------------------------- the prefill program

# Fraction of the tensor-core rate each kind reached on H100 (bench/NOTES.md, runs P3, P6):
# a 128 x 256 GEMM block ~0.85, scaled by the narrower tiles' efficiency; attention
# ~0.28 with f32 cache rows turned to bf16 as they load.
GEMM_OF_PEAK = 0.85
ATTENTION_OF_PEAK = 0.28


def prefill_launch_cost(kernel, n: int, pos: int, target: Target) -> tuple[float, float, float]:
    """(FLOPs, bytes moved, predicted seconds) of one launch over n chunk rows at pos."""
    from tilert_compiler.passes.prefill import TILE_EFFICIENCY

    st = dict(kernel.statics)
    flops, moved, rate = 0.0, 0.0, target.tensor_flops_per_s
    if kernel.kind in ("gemm", "gemm_silu"):
        width = st["N"] * (2 if kernel.kind == "gemm_silu" else 1)
        flops = 2.0 * n * width * st["K"]
        b_bytes = width * st["RB"] if "QBK" in st else 2.0 * width * st["K"]  # FP8 rows
        moved = 2.0 * n * st["K"] + b_bytes + n * st["N"] * 4
        rate *= GEMM_OF_PEAK * TILE_EFFICIENCY[st["block_n"]]
    elif kernel.kind == "attention":
        flops = 4.0 * st["H"] * st["HD"] * (n * pos + n * (n + 1) / 2)
        moved = 2.0 * st["KV"] * (pos + n) * st["HD"] * 4 + 2 * n * st["H"] * st["HD"] * 2
        rate *= ATTENTION_OF_PEAK
    elif kernel.kind == "embed":
        moved = n * st["D"] * 6.0
    elif kernel.kind == "add_norm":
        moved = n * st["D"] * 14.0
    elif kernel.kind == "qk_cache":
        moved = n * (st["H"] + 2 * st["KV"]) * st["HD"] * 8.0
    seconds = max(flops / rate if flops else 0.0, moved / target.hbm_bytes_per_s)
    return flops, moved, seconds


def explain_prefill(program, target: Target, n: int | None = None) -> str:
    """Per kernel of the prefill program: launches per chunk, FLOPs, bytes and predicted
    time for a chunk of n rows at position 0 (default: a full chunk)."""
    n = n or program.chunk
    kernels = {k.name: k for k in program.kernels}
    rows: dict[str, list[float]] = {}
    for la in program.launches:
        f, b, s = prefill_launch_cost(kernels[la.kernel], n, 0, target)
        r = rows.setdefault(la.kernel, [0, 0.0, 0.0, 0.0])
        r[0] += 1
        r[1] += f
        r[2] += b
        r[3] += s
    total = sum(r[3] for r in rows.values())
    flops = sum(r[1] for r in rows.values())
    w = max(11, *(len(name) for name in rows))  # gemm_silu_fp8 and the like
    lines = [
        f"prefill program: chunks of {program.chunk} tokens; one chunk of {n} tokens at "
        f"position 0, predicted at {target.tensor_flops_per_s / 1e12:.0f} TFLOP/s and "
        f"{target.hbm_bytes_per_s / 1e12:.1f} TB/s:",
        f"  {'kernel':<{w}} {'kind':<10} {'tile':<22} {'launches':>8} {'GFLOP':>9} "
        f"{'moved':>11} {'predicted':>10} {'share':>6}",
    ]
    for name, (count, f, b, s) in rows.items():
        k = kernels[name]
        st = dict(k.statics)
        tile = f"{k.row_tile} x {st['block_n']}" if "block_n" in st else f"{k.row_tile} rows"
        if k.kind == "attention":
            tile += f", {st['pack']} heads"
        lines.append(
            f"  {name:<{w}} {k.kind:<10} {tile:<22} {int(count):>8} {f / 1e9:>9.1f} "
            f"{_size(b):>11} {s * 1e3:>8.3f} ms {s / total:>6.1%}"
        )
    lines.append(
        f"  total: {total * 1e3:.3f} ms for {n} tokens ({flops / 1e12:.2f} TFLOP, "
        f"{n / total:.0f} tokens/s); the last prompt token then runs as a decode step"
    )
    return "\n".join(lines) + "\n"
