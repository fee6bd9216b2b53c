"""Schedule + task table -> CUDA source of the one persistent kernel: a small jinja2 template
(the constants, Params, the dispatch) that includes the device code of codegen/cuda/."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import jinja2
import numpy as np

from tilert_compiler.ir.kinds import KINDS
from tilert_compiler.ir.lm_parts import FIELDS as PART_FIELDS
from tilert_compiler.ir.lm_parts import PART_HEADER, SAMPLE_LIST
from tilert_compiler.ir.plan import ATTN_BLOCK_ROWS, SAMPLE_BINS, KernelPlan
from tilert_compiler.ir.tasktable import (
    ERR_BAD_KIND,
    ERR_INPUT_TIMEOUT,
    ERR_STREAM_TIMEOUT,
    ERR_TIMEOUT,
    F_ARG0,
    F_KIND,
    F_NSTREAM,
    F_STREAM,
    MODE_GREEDY,
    MODE_LOGITS,
    MODE_SAMPLED,
    PARAMS,
    PROFILE_WORDS,
    RECORD,
    RECORD_FIELDS,
    RING_WAIT_COPY,
    RING_WAIT_FREE,
    RING_WAIT_STAGE,
    TaskTable,
    Variant,
)
from tilert_compiler.ir.tile import Schedule

KERNEL_NAME = "tilert_decode_step"
_TEMPLATES = Path(__file__).parent / "templates"
HEADERS = Path(__file__).parent / "cuda"  # the kernel's device code: building blocks, tasks/


class CodegenError(ValueError):
    """The schedule cannot be emitted for this target (shared memory, shapes)."""


def template_args(v: Variant) -> str:
    return ", ".join(str(val) for _, val in v.static)


# The C++ types of ir/tasktable.py's Param types.
CPP_TYPES = {
    "i32": "int",
    "u32": "unsigned",
    "f32": "float",
    "u64": "unsigned long long",
    "i64": "long long",
    "bf16": "__nv_bfloat16",
}


def cpp_type(param_type: str) -> str:
    """A Param's type in C++: "const i64*" -> "const long long*"."""
    const, base, pointer = re.fullmatch(r"(const )?(\w+)(\*?)", param_type).groups()
    return f"{const or ''}{CPP_TYPES[base]}{pointer}"


def params_fields() -> list[str]:
    """The lines of the kernel's `struct Params` body, from PARAMS: each field, its doc as
    a comment beside it, or above it when too long for one line."""
    decls = [f"  {cpp_type(f.type)} {f.name};" for f in PARAMS]
    width = max(map(len, decls))
    lines = []
    for f, decl in zip(PARAMS, decls, strict=True):
        if not f.doc:
            lines.append(decl)
        elif width + 4 + len(f.doc) <= 100:
            lines.append(f"{decl.ljust(width)}  // {f.doc}")
        else:
            lines += textwrap.wrap(f.doc, 96, initial_indent="  // ", subsequent_indent="  // ")
            lines.append(decl)
    return lines


def args_struct(kind: str) -> str:
    """The C++ struct of a task kind's arguments (its record's args): attention_decode ->
    AttentionDecodeArgs."""
    return "".join(w.capitalize() for w in kind.split("_")) + "Args"


def _check_stream_rows(table: TaskTable) -> None:
    """The kernel's GEMVs chunk a task's weights from its `rows` argument alone: its rows
    of each matrix it streams (ir/kinds.py `streams`; gate/up: 2, gate then up) split
    evenly over its stream entries (adjacent blocks merge, so gate/up has one entry or
    two); with the ring only the producer reads the stream table."""
    for t, rec in enumerate(table.records):
        if rec[F_NSTREAM] <= 0:
            continue
        kind = table.variants[int(rec[F_KIND])].kind
        total = rec[F_ARG0 + KINDS[kind].args.index("rows")] * KINDS[kind].streams
        st = table.stream[rec[F_STREAM] : rec[F_STREAM] + rec[F_NSTREAM]]
        if (st[:, 1] // st[:, 2] * len(st) != total).any():
            raise CodegenError(
                f"task {t} ({kind}): its weight stream entries do not split its {total} rows evenly"
            )


# The FP8 overloads of the GEMV kinds (a variant with the QBK static): included only then,
# so a bf16 build's kernel.cu is what it was.
FP8_HEADER = "tasks/fp8.cuh"


def kernel_headers(table: TaskTable) -> list[str]:
    """The task headers the build's variants need, in KINDS order (then FP8's)."""
    used = {v.kind for v in table.variants}
    headers = [k.header for k in KINDS.values() if k.name in used]
    if any("QBK" in dict(v.static) for v in table.variants):
        headers.append(FP8_HEADER)
    return headers


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
    inline: bool = True,
) -> str:
    """The kernel's CUDA source: the build's constants, Params and the dispatch
    (templates/persistent_kernel.cu.j2) with the headers of codegen/cuda/ it includes
    inlined, so the source compiles alone (`inline=False`: the includes kept; nvcc then
    needs `include_flags()`). `profile`: record per task the global timer at wait start,
    run start and end (the schedule and the task table are the same either way)."""
    _check_stream_rows(table)
    source = (
        _environment()
        .get_template("persistent_kernel.cu.j2")
        .render(
            **kernel_constants(sched, plan, inv_freq, profile, fault_skip_task),
            version=version,
            model=sched.program.model,
            arch=arch,
            headers=kernel_headers(table),
            variants=[
                {
                    "kind": v.kind,
                    "device": KINDS[v.kind].device,
                    "cache_prefetch": KINDS[v.kind].cache_prefetch,
                    "template_args": template_args(v),
                    "index": i,
                    "args": args_struct(v.kind),
                }
                for i, v in enumerate(table.variants)
            ],
            kernel_name=KERNEL_NAME,
        )
    )
    return inline_headers(source) if inline else source


def kernel_constants(
    sched: Schedule,
    plan: KernelPlan,
    inv_freq: list[float],
    profile: bool = False,
    fault_skip_task: int = -1,
) -> dict:
    """What templates/kernel_constants.cuh.j2 renders: the build's constants."""
    consts = dict(sched.program.consts)
    return dict(
        cpp_bool=lambda b: "true" if b else "false",
        threads=plan.threads,
        consumers=plan.consumers,
        ring=plan.ring,
        stages=plan.stages,
        in_flight=plan.in_flight,
        stage_bytes=plan.stage_bytes,
        scratch_floats=plan.scratch_floats,
        record=RECORD,
        arg0=F_ARG0,
        record_fields=", ".join(f"F_{name} = {i}" for i, name in enumerate(RECORD_FIELDS)),
        arg_structs=[(args_struct(name), k.args) for name, k in KINDS.items()],
        params=params_fields(),
        modes=(MODE_LOGITS, MODE_GREEDY, MODE_SAMPLED),
        eps=_float_literal(float(consts["norm_eps"])),
        head_dim=consts["head_dim"],
        rope_inv_freq=", ".join(_float_literal(f) for f in inv_freq),
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
        part_header=PART_HEADER,
        part_fields=", ".join(f"P_{name} = {i}" for i, name in enumerate(PART_FIELDS)),
        sample_list=SAMPLE_LIST,
        x_regs=plan.x_regs,
        part_batch=plan.part_batch,
        lean_dispatch=plan.lean_dispatch,
        error_copy=plan.error_copy,
        fp8_mma=plan.fp8_mma,
        attn_block=ATTN_BLOCK_ROWS,
    )


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def include_flags() -> list[str]:
    """nvcc flags that find the headers a kernel source includes (emit_cuda(inline=False))."""
    return [f"-I{HEADERS}"]


_INCLUDE = re.compile(r'^#include "([^"]+)"[ \t]*$', re.M)


def inline_headers(source: str) -> str:
    """`source` with each `#include "x.cuh"` of codegen/cuda/ replaced by the header's text
    (recursively, each header once, where it is first included; `#pragma once` dropped),
    between comments naming it: one file that nvcc, a reader and the artifact take alone.
    Its lines are what -lineinfo and profilers name."""
    seen: set[Path] = set()

    def expand(text: str, here: Path) -> str:
        def one(m: re.Match) -> str:
            path = next((d / m[1] for d in (here, HEADERS) if (d / m[1]).is_file()), None)
            if path is None:
                raise CodegenError(f"{m[0]}: no such header under {HEADERS}")
            path = path.resolve()
            if path in seen:
                return f"// ---- {_name(path)}: above"
            seen.add(path)
            body = path.read_text().replace("#pragma once\n", "")
            name = _name(path)
            return f"// ---- {name}\n{expand(body, path.parent).rstrip()}\n// ---- {name} ends"

        return _INCLUDE.sub(one, text)

    return expand(source, HEADERS)


def _name(header: Path) -> str:
    return "codegen/cuda/" + header.relative_to(HEADERS.resolve()).as_posix()


def _float_literal(x: float) -> str:
    """Exact float32 literal: the kernel sees the same bits the interpreter uses."""
    f32 = float(np.float32(x))
    return f"{float.hex(f32)}f" if f32 == f32 else "NAN"
