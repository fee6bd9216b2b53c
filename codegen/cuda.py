"""Schedule + task table -> CUDA source of the one persistent kernel: a small jinja2 template
(the constants, Params, the dispatch) that includes the device code of codegen/cuda/."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

import jinja2
import numpy as np

from tilert_compiler.ir.kinds import KINDS
from tilert_compiler.ir.target import Target
from tilert_compiler.ir.tasktable import (
    ARGS,
    ERR_BAD_KIND,
    ERR_INPUT_TIMEOUT,
    ERR_STREAM_TIMEOUT,
    ERR_TIMEOUT,
    F_ARG0,
    F_KIND,
    F_LAYER,
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
    """The C++ struct of a task kind's arguments (ARGS): attention_decode ->
    AttentionDecodeArgs."""
    return "".join(w.capitalize() for w in kind.split("_")) + "Args"


STAGE_BYTES = 32 * 1024  # one ring stage: a chunk of whole weight rows
STATIC_SMEM_RESERVE = 2048  # the kernel's static shared memory (barriers, reductions)
SAMPLE_BINS = 2048  # radix-select histogram of the sample task (digits of 11, 11, 10 bits)

# The FFMA GEMV holds a lane's part of x in registers (8 floats per 8-column group it
# takes) when that part is at most this many floats; bigger parts (K = 4096 with one
# K-slice: 128) are read from shared memory for every row, as before. The compiler lowers
# the bound, one GEMV shape at a time, while ptxas reports spills (choose_x_regs).
X_REGS = 64
# The decode attention's combine loads a thread's partials in one batch when they are at
# most PART_BATCH_ONE, else PART_BATCH at a time; the compiler lowers the batch (to
# PART_BATCH_LEAST at most) while ptxas reports spills.
PART_BATCH_ONE, PART_BATCH, PART_BATCH_LEAST = 24, 16, 8


@dataclass(frozen=True)
class KernelPlan:
    """Thread roles and the shared-memory budget of the kernel."""

    threads: int
    consumers: int  # threads that run tasks; the rest (one warp) feed the weight ring
    ring: bool
    stage_bytes: int
    stages: int
    scratch_floats: int  # per-task scratch after the ring (input vector, partial sums)
    # Bulk copies the producer keeps in flight (its copy of chunk c waits until chunk
    # c - in_flight landed); the ring's depth when not capped.
    in_flight: int = 0
    # GEMVs on tensor cores (mma.sync, x as bf16 hi + lo): the mma_gemv option; otherwise
    # FFMA, a warp per weight row.
    mma: bool = False
    # A GEMV lane holds its part of x in registers when it is at most this many floats
    x_regs: int = X_REGS
    # The attention combine loads its partials this many per thread at a time (when
    # they are more than PART_BATCH_ONE)
    part_batch: int = PART_BATCH
    # The dispatch loop keeps the SM's task-list bounds in shared memory (a register pair
    # less for the whole launch)
    lean_dispatch: bool = False

    @property
    def smem_bytes(self) -> int:
        return self.stages * self.stage_bytes + 4 * self.scratch_floats


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


def _rows_per_chunk(k: int, stage_bytes: int) -> int:
    return max(1, stage_bytes // (2 * k))


# Decode attention takes a split's cache rows in blocks of at most this many (online
# softmax across blocks): its shared memory is sized by the block, not by max_seq_len, and
# what that leaves goes to the weight ring. 48 holds a split's rows up to context ~750 at
# 16 splits in one block (bench/NOTES.md item 90).
ATTN_BLOCK_ROWS = 48


def item_rows(mma: bool) -> int:
    """Weight rows in a warp's item of a GEMV chunk (the template's Chunking::kItemRows):
    with mma, 16 (the tile's m: the weights are A); FFMA, one row."""
    return 16 if mma else 1


def x_part_floats(v: Variant, consumer_warps: int, stage_bytes: int) -> int | None:
    """Floats of x one lane of an FFMA GEMV takes (the template's 8 * kJ in stream_rows),
    or None for a kind without weight rows."""
    if "K" not in dict(v.static):
        return None
    k = v.get("K")
    groups = _rows_per_chunk(k, stage_bytes)  # FFMA: an item is one row
    split = 1 if groups >= consumer_warps else consumer_warps // groups
    groups_per_lane = -(-(k // 8) // split)  # 8-column groups of one K-slice
    return 8 * -(-groups_per_lane // 32)


def relieve_registers(table: TaskTable, plan: KernelPlan) -> tuple[KernelPlan, str] | None:
    """The next variant choice after `plan` spilled registers, and what it changes; None
    when none is left. Cheapest first: the dispatch loop's task-list bounds move to shared
    memory (a shared load per task); then the attention combine loads fewer partials at a
    time (4 fewer, down to PART_BATCH_LEAST; a round trip more per layer); then the GEMV
    whose x part in registers is largest reads x from shared memory instead.

    The spills these relieve are the dispatch loop's long-lived values, evicted where the
    heaviest task (the attention of a large head group) peaks at the 255-register cap:
    Llama-3.1-8B and Qwen3-32B's configs (bench/NOTES.md)."""
    if not plan.lean_dispatch:
        return replace(plan, lean_dispatch=True), "task-list bounds held in shared memory"
    consumers = plan.consumers
    batched = [
        v
        for v in table.variants
        if v.kind == "attention_decode"
        and -(-v.get("NSPLIT") * v.get("G") * (v.get("HD") + 2) // consumers) > PART_BATCH_ONE
    ]
    if batched and plan.part_batch > PART_BATCH_LEAST:
        batch = max(PART_BATCH_LEAST, plan.part_batch - 4)
        return replace(plan, part_batch=batch), (
            f"attention partials loaded {batch} at a time, not {plan.part_batch}"
        )
    held = {
        f
        for v in table.variants
        if (f := x_part_floats(v, consumers // 32, plan.stage_bytes)) is not None
        and f <= plan.x_regs
    }
    if held and not plan.mma:
        return replace(plan, x_regs=max(held) - 1), (
            f"GEMVs whose lane takes {max(held)} floats of x read it from shared memory"
        )
    return None


def scratch_floats(v: Variant, consumer_warps: int, stage_bytes: int, mma: bool) -> int:
    """Dynamic shared memory (in floats) a task kind needs besides the ring; `mma`: GEMVs
    on tensor cores (KernelPlan.mma)."""
    if v.kind == "embed":
        return 0
    if v.kind == "sample":  # 64-bit radix histogram, then one 64-bit sum per consumer
        return 2 * SAMPLE_BINS + 2 * 32 * consumer_warps
    if v.kind == "attention_decode":
        hd, g, splits = v.get("HD"), v.get("G"), v.get("NSPLIT")
        chunk = min(-(-(v.get("S") - 1) // splits) + 1, ATTN_BLOCK_ROWS)
        # a block of cache rows (k padded: conflict-free float4 reads), then the partials
        rows = max(chunk * (hd + 4 + hd), splits * g * (hd + 2))
        scores = max(g * chunk, splits * g)  # scores, then the combine's split weights
        return g * hd + 4 * hd + -(-scores // 4) * 4 + rows
    k = v.get("K")
    groups = -(-_rows_per_chunk(k, stage_bytes) // item_rows(mma))
    split = 1 if groups >= consumer_warps else consumer_warps // groups
    return k + split * v.get("R")  # the input row + per-K-slice row results


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


def plan_kernel(
    table: TaskTable,
    target: Target,
    ring: bool,
    mma_gemv: bool = False,
    stage_kb: int | None = None,
    in_flight_kb: int | None = None,
    ring_stages: int | None = None,
) -> KernelPlan:
    """`stage_kb`: ring stage size (None: STAGE_BYTES, or the largest weight row if
    bigger). `in_flight_kb`: weight bytes each SM's producer keeps in flight (None: the
    target's, `Target.copies_in_flight_bytes`; 0: no cap, the ring's depth).
    `ring_stages`: the ring's stages (None: as many as fit, at most half a layer's weights
    per SM, rounded up to a stage).

    Why half a layer: the producer then runs at most about half a layer ahead of its
    consumers. Further ahead, its copies are for weights that wait past the layer's next
    hand-offs, and they compete with those hand-offs' loads: qwen3-0.6b (233 KB a layer per
    SM) measured 4.7 % slower with 5 stages than with 4, and 4.6 % slower with 3 (the
    stream runs dry), while qwen3-8b (2.8 MB) is 2.4-3.0 % faster with 5 than with 4 and
    llama-3.2-1b (0.9 MB) even at 5 and 6 (bench/NOTES.md runs S9-5, S9-6)."""
    threads = target.threads_per_block
    consumers = threads - 32 if ring else threads
    mma = mma_gemv
    ks = [v.get("K") for v in table.variants if "K" in dict(v.static)]
    odd = sorted(k for k in ks if k % 32)
    if mma_gemv and odd:
        raise CodegenError(
            f"mma_gemv takes K in blocks of 32, this model has GEMVs with K = {odd[0]}; "
            "compile without mma_gemv"
        )
    kmax = max(ks, default=8)
    row_bytes = -(-2 * kmax // 1024) * 1024
    if stage_kb is not None and stage_kb * 1024 < row_bytes:
        raise CodegenError(
            f"a ring stage of {stage_kb} KiB cannot hold a weight row of K = {kmax} "
            f"({2 * kmax} bytes); use a stage of {row_bytes // 1024} KiB or more"
        )
    stage = stage_kb * 1024 if stage_kb is not None else max(STAGE_BYTES, row_bytes)

    def need(v: Variant) -> int:
        return scratch_floats(v, consumers // 32, stage, mma)

    scratch = max(need(v) for v in table.variants)
    room = target.smem_per_block - STATIC_SMEM_RESERVE - 4 * scratch
    if room < 0:
        worst = max(table.variants, key=need)
        raise CodegenError(
            f"task kind {worst.label} needs {4 * scratch} bytes of shared memory, the target "
            f"allows {target.smem_per_block}; lower max_seq_len or use a larger target"
        )
    stages = room // stage if ring else 0
    if ring and stages < 2:
        raise CodegenError(
            f"the weight ring needs 2 stages of {stage} bytes, {room} bytes of shared memory "
            "are left after the task scratch; compile with weight_ring off or a smaller model"
        )
    ahead = layer_bytes_per_sm(table, target.sms)
    if ring and ring_stages is None and ahead is not None:
        stages = min(stages, max(2, -(-ahead // (2 * stage))))
    if ring and ring_stages is not None:
        if ring_stages > stages:
            raise CodegenError(
                f"ring_stages {ring_stages}: {stages} stages of {stage} bytes fit beside the "
                f"task scratch ({4 * scratch} bytes); ask for {stages} or fewer"
            )
        stages = ring_stages
    if in_flight_kb is None:
        flight = target.copies_in_flight_bytes
    else:
        flight = in_flight_kb * 1024 if in_flight_kb > 0 else stages * stage
    in_flight = min(stages, max(1, flight // stage)) if ring else 0  # at most `flight` bytes
    return KernelPlan(
        threads, consumers, ring, stage, stages, scratch, mma=mma, in_flight=in_flight
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
            headers=[
                k.header for k in KINDS.values() if any(v.kind == k.name for v in table.variants)
            ],
            variants=[
                {
                    "kind": v.kind,
                    "device": KINDS[v.kind].device,
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
        x_regs=plan.x_regs,
        part_batch=plan.part_batch,
        lean_dispatch=plan.lean_dispatch,
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
