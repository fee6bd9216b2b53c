"""Schedule + task table -> CUDA source of the one persistent kernel (jinja2 template)."""

from __future__ import annotations

from pathlib import Path

import jinja2
import numpy as np

from tilert_compiler.ir.tasktable import F_ARG0, RECORD, TaskTable, Variant
from tilert_compiler.ir.tile import Schedule

KERNEL_NAME = "tilert_decode_step"
_TEMPLATES = Path(__file__).parent / "templates"


class CodegenError(ValueError):
    """The schedule cannot be emitted for this target (shared memory, shapes)."""


def template_args(v: Variant) -> str:
    return ", ".join(str(val) for _, val in v.static)


def smem_floats(v: Variant, threads: int) -> int:
    """Dynamic shared memory (in floats) a task kind needs, from its static shapes."""
    if v.kind == "embed":
        return 0
    if v.kind == "attention_decode":
        hd, g, splits = v.get("HD"), v.get("G"), v.get("NSPLIT")
        chunk = -(-(v.get("S") - 1) // splits) + 1
        return g * hd + 2 * hd + g * chunk
    return v.get("K")


def smem_bytes(table: TaskTable, threads: int) -> int:
    return 4 * max((smem_floats(v, threads) for v in table.variants), default=0)


def emit_cuda(
    sched: Schedule,
    table: TaskTable,
    inv_freq: list[float],
    *,
    version: str,
    arch: str,
    threads: int,
    smem_limit: int,
) -> str:
    need = smem_bytes(table, threads)
    if need > smem_limit:
        worst = max(table.variants, key=lambda v: smem_floats(v, threads))
        raise CodegenError(
            f"task kind {worst.label} needs {need} bytes of shared memory, the target allows "
            f"{smem_limit}; lower max_seq_len or pick a target with more shared memory"
        )
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
        threads=threads,
        record=RECORD,
        arg0=F_ARG0,
        eps=_float_literal(float(consts["norm_eps"])),
        head_dim=consts["head_dim"],
        rope_inv_freq=", ".join(_float_literal(f) for f in inv_freq),
        l2_prefetch=bool(dict(sched.options).get("l2_prefetch", False)),
        variants=[{"kind": v.kind, "template_args": template_args(v)} for v in table.variants],
        kernel_name=KERNEL_NAME,
    )


def _float_literal(x: float) -> str:
    """Exact float32 literal: the kernel sees the same bits the interpreter uses."""
    f32 = float(np.float32(x))
    return f"{float.hex(f32)}f" if f32 == f32 else "NAN"
