"""compile(): model description -> CompiledModel (every stage kept, source, cubin, manifest)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tilert_compiler.codegen.cuda import KERNEL_NAME, CodegenError, emit_cuda
from tilert_compiler.codegen.nvcc import Resources, compile_cubin, find_nvcc, nvcc_version
from tilert_compiler.codegen.prefill import kernel_resources, lower_prefill, nvcc_flags
from tilert_compiler.codegen.serialize import serialize
from tilert_compiler.ir.graph import TensorDecl
from tilert_compiler.ir.plan import KernelPlan
from tilert_compiler.ir.precision import FP8
from tilert_compiler.ir.prefill import PrefillProgram, format_prefill
from tilert_compiler.ir.tasktable import TaskTable
from tilert_compiler.ir.tile import Schedule
from tilert_compiler.models.config import ConfigError, ConfigTypeError, ModelConfig, load_config
from tilert_compiler.models.quant import Quantization
from tilert_compiler.models.rope import rope_inv_freq
from tilert_compiler.options import Options, from_env
from tilert_compiler.passes.plan import relieve_registers
from tilert_compiler.pipeline import (
    STAGES,
    Context,
    format_stage,
    prefill_pipeline,
    resume_pipeline,
    run_pipeline,
)
from tilert_compiler.runtime.artifact import (
    FORMAT_VERSION,
    Artifact,
    variants_to_json,
    write_artifact,
)

VERSION = "0.1.0"


@dataclass
class CompiledModel:
    config: ModelConfig
    options: Options
    stages: dict[str, Any]  # stage name -> IR after that stage
    schedule: Schedule
    table: TaskTable
    source: str
    cubin: bytes | None
    resources: Resources | None
    manifest: dict
    timings: dict[str, float] = field(default_factory=dict)
    # The prefill program: TileLang GEMMs and attention over prompt chunks (None: off)
    tiles: PrefillBuild | None = None

    def ir(self, stage: str = "plan") -> str:
        """The IR after `stage` (one of STAGES, or "prefill": the prefill program) as text."""
        if stage == "prefill" and self.tiles is not None:
            return format_prefill(self.tiles.program)
        if stage not in self.stages:
            raise KeyError(f"no stage '{stage}'; stages: {', '.join(self.stages)}")
        return format_stage(self.stages[stage])

    def dump_ir(self, folder: str | os.PathLike) -> list[Path]:
        """One numbered file per stage (00-graph.tir, 01-fuse.tir, ...), each with a header
        naming its stage, options and config, so `tilert-compile --from-ir` takes it alone;
        then the prefill program (prefill.tir) and its tile programs (prefill-*.py)."""
        from tilert_compiler.dumps import write_dumps

        return write_dumps(self, folder)

    @property
    def artifact(self) -> Artifact:
        t = self.tiles
        return Artifact(
            self.manifest,
            self.table,
            self.source,
            self.cubin,
            tiles=(t.spec, t.cubin) if t is not None else None,
            tiles_source=t.source if t is not None else None,
        )

    def save(self, folder: str | os.PathLike) -> Path:
        return write_artifact(folder, self.artifact)

    def interpret(self, token_ids, weights=None):
        """Teacher-forced decode of `token_ids` from position 0 on the CPU interpreter.
        Returns float32 logits [len(token_ids), vocab]. `weights`: a dict of tensors, or
        the weights arena packed already (`runtime.arena.pack_weights`: float32 or
        bfloat16; with FP8 weights bfloat16, raw)."""
        import torch

        from tilert_compiler.models.weights import check_weights, stream_weights
        from tilert_compiler.runtime.generate import check_request
        from tilert_compiler.runtime.interpreter import Interpreter

        cfg = self.config
        ids = check_request(token_ids, 1, max_seq_len=cfg.max_seq_len, vocab=cfg.vocab)
        if weights is None:
            weights = stream_weights(cfg)  # packed a tensor at a time
        elif not isinstance(weights, torch.Tensor):  # a packed arena is the caller's
            check_weights(cfg, weights)
        it = Interpreter(self.artifact, weights)
        return torch.stack([it.step(t, pos) for pos, t in enumerate(ids)])


def compile(  # noqa: A001 - the verb users expect
    source: str | os.PathLike | dict | ModelConfig,
    target: str | None = None,
    *,
    options: Options | None = None,
    overrides: dict | None = None,
    progress: Callable[[str], None] | None = None,
    **option_kw: Any,
) -> CompiledModel:
    """Compile a model description (model.yaml path, dict, HF folder/config.json, bundled
    name, or ModelConfig) into a CompiledModel. `target` overrides the arch ("sm_90a")."""
    say = _progress(progress)
    cfg = source if isinstance(source, ModelConfig) else load_config(source, overrides=overrides)
    if target is not None:
        cfg = replace(cfg, target=replace(cfg.target, arch=target))
        load_config(cfg.to_dict())  # re-validate the arch
    opts = from_env(options or Options())
    if option_kw:
        opts = opts.with_(**option_kw)
    _check_options(opts)
    cfg, opts = quantized(cfg, opts)
    timings: dict[str, float] = {}
    stages: dict[str, Any] = {}
    t0 = time.perf_counter()

    def on_stage(name: str, ir: Any) -> None:
        nonlocal t0
        stages[name] = ir
        now = time.perf_counter()
        timings[name] = now - t0
        t0 = now
        say(f"  {name:<9} {timings[name] * 1e3:8.1f} ms")

    sched = run_pipeline(Context.of(cfg, opts), on_stage)
    return _finish(cfg, opts, stages, sched, timings, say)


def _finish(cfg, opts, stages: dict, sched: Schedule, timings: dict, say) -> CompiledModel:
    """What compile() and compile_from_ir() share after the stages: the decode kernel
    (codegen, nvcc), its manifest, the prefill program, and the dumps if asked for."""
    decode = build_decode(cfg, opts, sched, timings, say)
    sched = replace(sched, plan=decode.plan)  # as built: with any register relief
    manifest = _manifest(cfg, opts, sched, decode)
    cm = CompiledModel(
        cfg,
        opts,
        stages,
        sched,
        decode.table,
        decode.source,
        decode.cubin,
        decode.resources,
        manifest,
        timings,
    )
    cm.tiles = build_prefill(cfg, opts, sched, say)
    if opts.dump_ir:
        cm.dump_ir(opts.dump_ir)
    return cm


@dataclass
class PrefillBuild:
    """The prefill program compiled: its IR, prefill.json (what the runtime reads), the
    CUDA source of its kernels, their cubin (None without nvcc) and ptxas's report."""

    program: PrefillProgram
    spec: dict
    source: str
    cubin: bytes | None
    resources: dict
    scripts: dict[str, str]  # tile program -> TileLang's TIR script of it, before lowering


def build_prefill(cfg, opts, decode: Schedule, say) -> PrefillBuild | None:
    """Plan the prefill program against the decode layout, lower its tile programs, and
    compile them (one nvcc call); None when opts.prefill_chunk is 0."""
    t0 = time.perf_counter()
    program = prefill_pipeline(cfg, opts, decode)
    if program is None:
        return None
    source, kernels, scripts = lower_prefill(program, cfg.target.arch)
    say(
        f"  {'prefill':<9} {(time.perf_counter() - t0) * 1e3:8.1f} ms  "
        f"({len(program.kernels)} kernels, chunk {program.chunk})"
    )
    cubin, resources = None, {}
    if opts.nvcc and find_nvcc():
        t1 = time.perf_counter()
        cubin, res, warnings = compile_cubin(source, cfg.target.arch, "", extra=nvcc_flags())
        if warnings:
            raise RuntimeError(f"nvcc warned on the prefill kernels (a compiler bug):\n{warnings}")
        resources = kernel_resources(res.report)  # a spill is a warning (-warn-spills)
        say(f"  {'nvcc':<9} {(time.perf_counter() - t1) * 1e3:8.1f} ms  (prefill)")
    spec = {
        "chunk": program.chunk,
        "consts": dict(program.consts),
        "buffers": [
            {"name": b.name, "dtype": b.dtype, "shape": list(b.shape)} for b in program.buffers
        ],
        "kernels": {
            k.name: {"kind": k.kind, "statics": dict(k.statics), **kernels[k.name]}
            for k in program.kernels
        },
        "launches": [
            {"kernel": la.kernel, "layer": la.layer, "args": dict(la.args)}
            for la in program.launches
        ],
    }
    return PrefillBuild(program, spec, source, cubin, resources, scripts)


def _progress(progress: Any) -> Callable[[str], None]:
    if progress is not None and not callable(progress):
        raise ConfigTypeError(
            f"progress must be a function taking a line of text (got {type(progress).__name__})"
        )
    # by default through `logging` ("tilert_compiler", INFO): seen where logging is set up
    return progress or logging.getLogger("tilert_compiler").info


def _check_options(opts: Options) -> None:
    """Option values the passes cannot honour, said before any work."""
    if opts.stage_kb is not None and not 1 <= opts.stage_kb <= 128:
        raise ConfigError(f"option stage_kb must be 1..128 KiB (got {opts.stage_kb})")
    if opts.attn_splits is not None and not 1 <= opts.attn_splits <= 256:
        raise ConfigError(f"option attn_splits must be 1..256 (got {opts.attn_splits})")
    if opts.ring_stages is not None and opts.ring_stages < 2:
        raise ConfigError(f"option ring_stages must be 2 or more (got {opts.ring_stages})")
    c = opts.prefill_chunk
    if c is not None and not isinstance(c, bool) and (c < 0 or c % 128 or c > 65536):
        raise ConfigError(
            f"option prefill_chunk must be 0 (no prefill program) or a multiple of 128 up to "
            f"65536 (got {c})"
        )
    if opts.in_flight_kb is not None and opts.in_flight_kb < 0:
        raise ConfigError(f"option in_flight_kb must be 0 or more (got {opts.in_flight_kb})")
    if opts.quantize not in (None, "fp8"):
        raise ConfigError(f"option quantize must be fp8 or None (got {opts.quantize!r:.40})")
    if opts.fp8_gemv not in ("ffma", "mma"):
        raise ConfigError(f"option fp8_gemv must be ffma or mma (got {opts.fp8_gemv!r:.40})")


def quantized(cfg: ModelConfig, opts: Options) -> tuple[ModelConfig, Options]:
    """The config and options of a build with `opts.quantize`: "fp8" gives a config without
    quantization one FP8 scale per output channel (models/quant.py). The prefill program
    reads FP8 weights as they are (codegen/tile_programs.py gemm_fp8)."""
    if opts.quantize == "fp8" and cfg.quantization is None:
        cfg = replace(cfg, quantization=Quantization(source="quantize"))
    return cfg, opts


@dataclass(frozen=True)
class DecodeBuild:
    """The decode program compiled: its task table, the kernel plan it was built with
    (the plan stage's, or a variant of it where ptxas spilled), the CUDA source, its cubin,
    ptxas's report and the toolkit's version (the last three None without nvcc)."""

    table: TaskTable
    plan: KernelPlan
    rope_inv_freq: list[float]  # rendered into the source and written in the manifest
    source: str
    cubin: bytes | None
    resources: Resources | None
    toolkit: str | None


def build_decode(cfg, opts, sched: Schedule, timings: dict, say) -> DecodeBuild:
    """Schedule (with its kernel plan) -> task table, CUDA source and (with nvcc) cubin."""
    if sched.plan is None:
        raise ValueError("the schedule has no kernel plan: run the plan stage first")
    t0 = time.perf_counter()
    table = serialize(sched)
    inv_freq = [float(x) for x in rope_inv_freq(cfg)]

    def emit(plan: KernelPlan) -> str:
        return emit_cuda(
            sched,
            table,
            plan,
            inv_freq,
            version=VERSION,
            arch=cfg.target.arch,
            profile=opts.profile,
            fault_skip_task=opts.fault_skip_task,
        )

    plan = sched.plan
    source = emit(plan)
    timings["codegen"] = time.perf_counter() - t0
    say(f"  {'codegen':<9} {timings['codegen'] * 1e3:8.1f} ms")
    if not (opts.nvcc and find_nvcc()):
        return DecodeBuild(table, plan, inv_freq, source, None, None, None)
    t1 = time.perf_counter()
    cubin, resources, plan, source = _compile_without_spills(cfg, table, plan, source, emit, say)
    if resources.static_smem + plan.smem_bytes > cfg.target.smem_per_block:
        raise CodegenError(
            f"the kernel needs {resources.static_smem} B static + {plan.smem_bytes} B "
            f"dynamic shared memory, the target allows {cfg.target.smem_per_block}; "
            "lower max_seq_len or compile with weight_ring off"
        )
    timings["nvcc"] = time.perf_counter() - t1
    say(f"  {'nvcc':<9} {timings['nvcc'] * 1e3:8.1f} ms")
    toolkit = nvcc_version(find_nvcc() or "nvcc")
    return DecodeBuild(table, plan, inv_freq, source, cubin, resources, toolkit)


def _compile_without_spills(cfg, table, plan, source, emit, say):
    """nvcc, and while ptxas spills registers, the next variant choice (relieve_registers:
    the dispatch state in shared memory, fewer attention partials at a time, the error word
    copied to shared memory, then x from shared memory). The choices made are kept in the
    resources (resources.txt). Any other nvcc warning is a compiler bug, said on one line."""
    choices: list[str] = []
    while True:
        cubin, resources, warnings = compile_cubin(source, cfg.target.arch, KERNEL_NAME)
        other = "; ".join(w.strip() for w in warnings.splitlines() if "spill" not in w)
        if other:
            raise CodegenError(f"nvcc warned on generated code (a compiler bug): {other}")
        if not (resources.spill_stores or resources.spill_loads):
            return cubin, replace(resources, choices=tuple(choices)), plan, source
        relieved = relieve_registers(table, plan)
        if relieved is None:
            raise CodegenError(
                f"the kernel spills {resources.spill_stores} bytes of registers and no "
                "variant with fewer registers is left (a compiler bug)"
            )
        plan, change = relieved
        choices.append(f"{change} (ptxas spilled {resources.spill_stores} bytes)")
        say(f"  {'nvcc':<9} {choices[-1]}")
        source = emit(plan)


def _manifest(cfg, opts, sched: Schedule, decode: DecodeBuild) -> dict:
    plan, resources = decode.plan, decode.resources
    decls = {d.name: d for d in sched.program.tensors}
    t = cfg.target
    return {
        "format": FORMAT_VERSION,
        "compiler_version": VERSION,
        "model": cfg.name,
        "config": cfg.to_dict(),
        "options": {k: v for k, v in opts.__dict__.items() if k != "dump_ir"},
        "arch": t.arch,
        "sms": t.sms,
        "threads": t.threads_per_block,
        "smem_bytes": plan.smem_bytes,
        "consumers": plan.consumers,
        "weight_ring": {
            "stages": plan.stages,
            "stage_bytes": plan.stage_bytes,
            "in_flight": plan.in_flight,
        },
        "kernel": KERNEL_NAME,
        "variants": variants_to_json(decode.table.variants),
        "arenas": dict(sched.arena_sizes),
        "tensors": [_tensor_entry(decls[n], a, off) for n, a, off in sched.layout],
        "counters": len(sched.program.counters),
        "predicted_step_us": max((e for _, e in sched.predicted), default=0.0) * 1e6,
        "tasks": len(sched.program.tasks),
        "norm_eps": float(cfg.norm_eps),
        "rope_inv_freq": decode.rope_inv_freq,
        "wait_timeout_ms": opts.wait_timeout_ms,
        "source_sha256": hashlib.sha256(decode.source.encode()).hexdigest(),
        "toolkit": decode.toolkit,
        "resources": resources.to_dict() if resources else None,
    }


def _tensor_entry(d: TensorDecl, arena: str, offset: int) -> dict:
    """A tensor of the manifest; an FP8 weight also says its format, scale block, the
    bytes of one arena row (e4m3 values, then scales, ir/precision.py) and its arena
    units."""
    entry = {
        "name": d.name,
        "arena": arena,
        "offset": offset,
        "shape": list(d.shape),
        "storage": d.storage.value,
    }
    if d.fp8_block is not None:
        entry |= {
            "dtype": FP8,
            "block": list(d.fp8_block),
            "row_bytes": 2 * d.row_units,
            "elements": d.arena_units,
        }
    return entry


__all__ = ["STAGES", "CompiledModel", "compile"]


def compile_from_ir(
    path: str | os.PathLike,
    source: str | os.PathLike | dict | ModelConfig | None = None,
    *,
    overrides: dict | None = None,
    progress: Callable[[str], None] | None = None,
    **option_kw: Any,
) -> CompiledModel:
    """Compile from an IR dump (`--dump-ir`, maybe hand-edited): parse it, run the stages
    after the one it was taken at, verify, generate code. The config is the dump's
    `# config:` line unless `source` names a model (compiler/dumps.py)."""
    from tilert_compiler.dumps import read_dump

    say = _progress(progress)
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigTypeError(f"path must be an IR dump file's path (got {type(path).__name__})")
    d = read_dump(path, source, overrides, given=option_kw)
    cfg, opts = d.config, from_env(Options(**d.options)).with_(**option_kw)
    _check_options(opts)
    cfg, opts = quantized(cfg, opts)
    stages: dict[str, Any] = {}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sched = resume_pipeline(d.stage, d.ir, Context.of(cfg, opts), stages.__setitem__)
    timings["passes"] = time.perf_counter() - t0
    say(f"  resumed after '{d.stage}': {', '.join(stages)} in {timings['passes'] * 1e3:.1f} ms")
    return _finish(cfg, opts, stages, sched, timings, say)  # the same as compile() from here
