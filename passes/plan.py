"""plan: schedule -> schedule with its kernel plan (the `plan` stage, after `layout`).

The plan is the kernel's thread roles and shared-memory budget (ir/plan.py): with the
weight ring, one warp of each CTA is its producer and the rest are consumers; shared
memory holds the ring's stages, then the largest scratch any task kind needs. It is sized
from the task table's variants (the task kinds specialised on their shapes, which the
scratch depends on) and the streamed weight bytes, so the stage serializes the schedule
first (compiler/pipeline.py) and hands the table here.

`relieve_registers` is the compiler's answer to a ptxas spill: the next, cheaper-in-
registers variant of a plan (compiler/driver.py tries them in turn).
"""

from __future__ import annotations

from dataclasses import replace

from tilert_compiler.ir.kinds import KINDS
from tilert_compiler.ir.plan import (
    PART_BATCH_LEAST,
    PART_BATCH_ONE,
    STAGE_BYTES,
    STATIC_SMEM_RESERVE,
    KernelPlan,
    variant_row_bytes,
    x_part_floats,
)
from tilert_compiler.ir.target import Target
from tilert_compiler.ir.tasktable import F_LAYER, F_NSTREAM, F_STREAM, TaskTable, Variant
from tilert_compiler.ir.tile import Schedule


class PlanError(ValueError):
    """No kernel plan fits this target (shared memory, ring stages): one line naming the
    way out."""


def layer_bytes_per_sm(table: TaskTable, sms: int) -> int | None:
    """Streamed weight bytes of the largest decoder layer (not the LM head, layer -1) over
    the SMs: what one SM's producer copies per layer. None for a table without records."""
    records = getattr(table, "records", None)
    if records is None:
        return None
    per: dict[int, int] = {}
    for rec in records[records[:, F_NSTREAM] > 0]:
        at, n = int(rec[F_STREAM]), int(rec[F_NSTREAM])
        layer = int(rec[F_LAYER])
        if layer >= 0:
            per[layer] = per.get(layer, 0) + 2 * int(table.stream[at : at + n, 1].sum())
    return -(-max(per.values()) // sms) if per else None


def plan_kernel(
    table: TaskTable,
    target: Target,
    *,
    ring: bool,
    stage_kb: int | None,
    in_flight_kb: int | None,
    ring_stages: int | None,
) -> KernelPlan:
    """`ring`: a producer warp streams weights into a shared-memory ring. `stage_kb`: ring
    stage size (None: STAGE_BYTES, or the largest weight row if bigger). `in_flight_kb`:
    weight bytes each SM's producer keeps in flight (None: the target's,
    `Target.copies_in_flight_bytes`; 0: no cap, the ring's depth). `ring_stages`: the
    ring's stages (None: as many as fit, at most half a layer's weights per SM, rounded
    up to a stage).

    Why half a layer: the producer then runs at most about half a layer ahead of its
    consumers. Further ahead, its copies are for weights that wait past the layer's next
    hand-offs, and they compete with those hand-offs' loads: qwen3-0.6b (233 KB a layer per
    SM) measured 4.7 % slower with 5 stages than with 4, and 4.6 % slower with 3 (the
    stream runs dry), while qwen3-8b (2.8 MB) is 2.4-3.0 % faster with 5 than with 4 and
    llama-3.2-1b (0.9 MB) even at 5 and 6 (bench/NOTES.md runs S9-5, S9-6)."""
    threads = target.threads_per_block
    consumers = threads - 32 if ring else threads
    rows = [(variant_row_bytes(v), v.get("K")) for v in table.variants if "K" in dict(v.static)]
    widest, kmax = max(rows, default=(16, 8))
    row_bytes = -(-widest // 1024) * 1024
    if stage_kb is not None and stage_kb * 1024 < row_bytes:
        raise PlanError(
            f"a ring stage of {stage_kb} KiB cannot hold a weight row of K = {kmax} "
            f"({widest} bytes); use a stage of {row_bytes // 1024} KiB or more"
        )
    stage = stage_kb * 1024 if stage_kb is not None else max(STAGE_BYTES, row_bytes)

    def need(v: Variant) -> int:
        return KINDS[v.kind].scratch(v, consumers // 32, stage)

    scratch = max(need(v) for v in table.variants)
    room = target.smem_per_block - STATIC_SMEM_RESERVE - 4 * scratch
    if room < 0:
        worst = max(table.variants, key=need)
        raise PlanError(
            f"task kind {worst.label} needs {4 * scratch} bytes of shared memory, the target "
            f"allows {target.smem_per_block}; lower max_seq_len or use a larger target"
        )
    stages = room // stage if ring else 0
    if ring and stages < 2:
        raise PlanError(
            f"the weight ring needs 2 stages of {stage} bytes, {room} bytes of shared memory "
            "are left after the task scratch; compile with weight_ring off or a smaller model"
        )
    ahead = layer_bytes_per_sm(table, target.sms)
    if ring and ring_stages is None and ahead is not None:
        stages = min(stages, max(2, -(-ahead // (2 * stage))))
    if ring and ring_stages is not None:
        if ring_stages > stages:
            raise PlanError(
                f"ring_stages {ring_stages}: {stages} stages of {stage} bytes fit beside the "
                f"task scratch ({4 * scratch} bytes); ask for {stages} or fewer"
            )
        stages = ring_stages
    if in_flight_kb is None:
        flight = target.copies_in_flight_bytes
    else:
        flight = in_flight_kb * 1024 if in_flight_kb > 0 else stages * stage
    in_flight = min(stages, max(1, flight // stage)) if ring else 0  # at most `flight` bytes
    return KernelPlan(threads, consumers, ring, stage, stages, scratch, in_flight=in_flight)


def relieve_registers(table: TaskTable, plan: KernelPlan) -> tuple[KernelPlan, str] | None:
    """The next variant choice after `plan` spilled registers, and what it changes; None
    when none is left. Cheapest first: the dispatch loop's task-list bounds move to shared
    memory (a shared load per task); then the attention combine loads fewer partials at a
    time (4 fewer, down to PART_BATCH_LEAST; a round trip more per layer); then thread 0
    copies the error word to shared memory by cp.async (an issue and a wait that finds the
    copy landed, per task; after the batch, since it does not remove Qwen3-32B's spill
    alone); then the GEMV whose x part in registers is largest reads x from shared memory
    instead.

    The spills these relieve are the dispatch loop's long-lived values, evicted where the
    heaviest task (the attention of a large head group) peaks at the 255-register cap:
    Llama-3.1-8B and Qwen3-32B's configs (bench/NOTES.md; Qwen3-32B's last spill is thread
    0's error word, live across the task switch)."""
    if not plan.lean_dispatch:
        return replace(plan, lean_dispatch=True), "task-list bounds held in shared memory"
    consumers = plan.consumers
    batched = [
        v for v in table.variants if -(-KINDS[v.kind].partials(v) // consumers) > PART_BATCH_ONE
    ]
    if batched and plan.part_batch > PART_BATCH_LEAST:
        batch = max(PART_BATCH_LEAST, plan.part_batch - 4)
        return replace(plan, part_batch=batch), (
            f"attention partials loaded {batch} at a time, not {plan.part_batch}"
        )
    if not plan.error_copy:
        return replace(plan, error_copy=True), "error word copied to shared memory by cp.async"
    held = {
        f
        for v in table.variants
        if (f := x_part_floats(v, consumers // 32, plan.stage_bytes)) is not None
        and f <= plan.x_regs
    }
    if held:
        return replace(plan, x_regs=max(held) - 1), (
            f"GEMVs whose lane takes {max(held)} floats of x read it from shared memory"
        )
    return None


def plan(
    sched: Schedule,
    table: TaskTable,
    target: Target,
    *,
    stage_kb: int | None,
    in_flight_kb: int | None,
    ring_stages: int | None,
    fp8_mma: bool = False,
) -> Schedule:
    """`sched` with its kernel plan; `table` is `sched` serialized. Whether there is a
    ring is the prefetch stage's choice (the schedule's `weight_ring` option). `fp8_mma`:
    FP8 GEMVs on tensor cores (the plan's field of that name)."""
    ring = bool(dict(sched.options).get("weight_ring"))
    kernel = plan_kernel(
        table,
        target,
        ring=ring,
        stage_kb=stage_kb,
        in_flight_kb=in_flight_kb,
        ring_stages=ring_stages,
    )
    return replace(sched, plan=replace(kernel, fp8_mma=fp8_mma))
