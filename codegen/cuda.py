"""Schedule + task table -> CUDA source of the one persistent kernel (jinja2 template)."""

from __future__ import annotations

from pathlib import Path

import jinja2
import numpy as np

from tilert_compiler.ir.plan import ATTN_BLOCK_ROWS, SAMPLE_BINS, KernelPlan
from tilert_compiler.ir.tasktable import (
    ARGS,
    ERR_BAD_KIND,
    ERR_INPUT_TIMEOUT,
    ERR_STREAM_TIMEOUT,
    ERR_TIMEOUT,
    F_ARG0,
    F_KIND,
    F_NSTREAM,
    F_STREAM,
    PROFILE_WORDS,
    RECORD,
    RING_WAIT_COPY,
    RING_WAIT_FREE,
    RING_WAIT_STAGE,
    TaskTable,
    Variant,
)
from tilert_compiler.ir.tile import Schedule

KERNEL_NAME = "tilert_decode_step"
_TEMPLATES = Path(__file__).parent / "templates"


class CodegenError(ValueError):
    """The schedule cannot be emitted for this target (shared memory, shapes)."""


def template_args(v: Variant) -> str:
    return ", ".join(str(val) for _, val in v.static)


def _check_stream_rows(table: TaskTable) -> None:
    """The kernel's GEMVs chunk a task's weights from its `rows` argument alone: its rows
    (gate/up: twice, gate then up) split evenly over its stream entries (adjacent blocks
    merge, so gate/up has one entry or two); with the ring only the producer reads the
    stream table."""
    for t, rec in enumerate(table.records):
        if rec[F_NSTREAM] <= 0:
            continue
        kind = table.variants[int(rec[F_KIND])].kind
        total = rec[F_ARG0 + ARGS[kind].index("rows")] * (2 if kind == "gate_up_silu" else 1)
        st = table.stream[rec[F_STREAM] : rec[F_STREAM] + rec[F_NSTREAM]]
        if (st[:, 1] // st[:, 2] * len(st) != total).any():
            raise CodegenError(
                f"task {t} ({kind}): its weight stream entries do not split its {total} rows evenly"
            )


def emit_cuda(
    sched: Schedule,
    table: TaskTable,
    plan: KernelPlan,
    inv_freq: list[float],
    *,
    version: str,
    arch: str,
    profile: bool = False,
    fault_skip_task: int = -1,
) -> str:
    """`profile`: record per task the global timer at wait start, run start and end (the
    schedule and the task table are the same either way)."""
    _check_stream_rows(table)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    consts = dict(sched.program.consts)
    return env.get_template("persistent_kernel.cu.j2").render(
        version=version,
        model=sched.program.model,
        arch=arch,
        threads=plan.threads,
        consumers=plan.consumers,
        ring=plan.ring,
        stages=plan.stages,
        in_flight=plan.in_flight,
        stage_bytes=plan.stage_bytes,
        record=RECORD,
        arg0=F_ARG0,
        eps=_float_literal(float(consts["norm_eps"])),
        head_dim=consts["head_dim"],
        rope_inv_freq=", ".join(_float_literal(f) for f in inv_freq),
        # L2 prefetch: the producer's window past the ring, or (no ring) the per-task plan
        l2_window=int(dict(sched.options).get("l2_window", 0)) if plan.ring else 0,
        l2_prefetch=bool(dict(sched.options).get("l2_prefetch", False)) and not plan.ring,
        cache_prefetch=bool(dict(sched.options).get("cache_prefetch", False)) and plan.ring,
        profile=profile,
        profile_words=PROFILE_WORDS,
        err={
            "timeout": ERR_TIMEOUT,
            "bad_kind": ERR_BAD_KIND,
            "stream_timeout": ERR_STREAM_TIMEOUT,
            "input_timeout": ERR_INPUT_TIMEOUT,
        },
        ring_wait={"stage": RING_WAIT_STAGE, "copy": RING_WAIT_COPY, "free": RING_WAIT_FREE},
        fault_skip_task=fault_skip_task,
        flags=bool(consts.get("flags", 0)),
        sample_bins=SAMPLE_BINS,
        variants=[{"kind": v.kind, "template_args": template_args(v)} for v in table.variants],
        kernel_name=KERNEL_NAME,
        mma=False,
        item_rows=1,
        x_regs=plan.x_regs,
        part_batch=plan.part_batch,
        lean_dispatch=plan.lean_dispatch,
        attn_block=ATTN_BLOCK_ROWS,
    )


def _float_literal(x: float) -> str:
    """Exact float32 literal: the kernel sees the same bits the interpreter uses."""
    f32 = float(np.float32(x))
    return f"{float.hex(f32)}f" if f32 == f32 else "NAN"
