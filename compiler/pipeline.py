"""The whole compiler on one screen: every stage in order, each a pure function.

Each stage's output is kept under its name (`graph`, `fuse`, `tile`, ...) so it can be
printed, dumped (`--dump-ir`) and tested on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tilert_compiler.ir.graph import Graph, format_graph
from tilert_compiler.ir.prefill import PrefillProgram
from tilert_compiler.ir.tile import Schedule, TileProgram, format_program, format_schedule
from tilert_compiler.ir.verify import (
    verify_consts,
    verify_layout,
    verify_program,
    verify_schedule,
)
from tilert_compiler.models.graph import build_graph
from tilert_compiler.passes.deps import deps
from tilert_compiler.passes.fuse import fuse
from tilert_compiler.passes.layout import layout
from tilert_compiler.passes.prefetch import prefetch
from tilert_compiler.passes.prefill import plan_prefill, prefill_chunk
from tilert_compiler.passes.schedule import schedule
from tilert_compiler.passes.tile import tile


def run_pipeline(cfg, opts, on_stage: Callable[[str, Any], None]) -> Schedule:
    """The decode program: one step of the model as a schedule of tasks over the SMs."""
    t = cfg.target
    ir: Any = build_graph(cfg)  # model description -> graph of primitive ops
    on_stage("graph", ir)
    ir = fuse(ir)  # norms into GEMVs, rope/cache into attention, residual, silu·mul
    on_stage("fuse", ir)
    # needs fused kinds: one task kind per op kind
    ir = tile(ir, t, context=opts.context, splits=opts.attn_splits)
    on_stage("tile", ir)
    ir = deps(ir, flags=opts.flags)  # producers, reduction, counters
    verify_program(ir)  # coverage: each output element written by exactly one task
    on_stage("deps", ir)
    ir = schedule(ir, t)  # per-SM lists in one global topological order
    on_stage("schedule", ir)
    ir = prefetch(ir, ring=opts.weight_ring, cache=opts.cache_prefetch)
    on_stage("prefetch", ir)
    ir = layout(ir)  # arena offsets for every tensor
    verify_schedule(ir)  # deadlock freedom, ordering of every read after its write
    # placement (once, aligned, inside its arena, no overlaps); every region in its shape
    verify_layout(ir, cfg.max_seq_len, cfg.vocab)
    on_stage("layout", ir)
    return ir


def prefill_pipeline(cfg, opts, decode: Schedule) -> PrefillProgram | None:
    """The prefill program (None: --prefill-chunk 0): prompt chunks as a fixed list of
    tile-program launches, bound to the decode program's weights and KV cache, so it
    must run after `layout`. Codegen lowers its tile programs (codegen/prefill.py)."""
    if opts.prefill_chunk == 0:
        return None
    chunk = prefill_chunk(cfg.max_seq_len, opts.prefill_chunk)  # whole 128-row tiles
    return plan_prefill(cfg, decode, chunk)  # tiles, bindings; shapes checked


def format_stage(ir: Any) -> str:
    if isinstance(ir, Graph):
        return format_graph(ir)
    if isinstance(ir, TileProgram):
        return format_program(ir)
    if isinstance(ir, Schedule):
        return format_schedule(ir)
    raise TypeError(type(ir))


STAGES = ("graph", "fuse", "tile", "deps", "schedule", "prefetch", "layout")


# ---------------------------------------------------------------- resuming from a dump
# The stages run_pipeline runs after `tile`, as (stage, pass) steps, so a parsed (maybe
# hand-edited) dump can continue from where it was taken. tests/test_ir_text.py checks
# that resuming from every stage gives what run_pipeline gives, so the two stay in step.
RESUMABLE = ("tile", "deps", "schedule", "prefetch", "layout")
_STEPS_AFTER: dict[str, tuple[str, Callable[[Any, Any, Any], Any]]] = {
    "tile": ("deps", lambda ir, t, opts: deps(ir, flags=opts.flags)),
    "deps": ("schedule", lambda ir, t, opts: schedule(ir, t)),
    "schedule": (
        "prefetch",
        lambda ir, t, opts: prefetch(ir, ring=opts.weight_ring, cache=opts.cache_prefetch),
    ),
    "prefetch": ("layout", lambda ir, t, opts: layout(ir)),
}


def resume_pipeline(after: str, ir: Any, cfg, opts, on_stage: Callable[[str, Any], None]):
    """Run the stages after stage `after` on `ir` and verify the result. The input may be
    hand-edited, so everything is verified at the end, and what the passes assume (a task
    depends only on earlier tasks) is checked before they run."""
    from tilert_compiler.ir.verify import VerifyError

    if after not in RESUMABLE:
        raise ValueError(f"cannot resume after '{after}'; resumable: {', '.join(RESUMABLE)}")
    program = ir.program if isinstance(ir, Schedule) else ir
    verify_consts(program, cfg.to_dict())  # codegen reads the config, the tasks the consts
    for t in program.tasks:
        later = [f"t{d}" for d in t.deps if d >= t.id]
        if later:
            raise VerifyError(f"t{t.id} depends on {', '.join(later)}, not earlier tasks")
    on_stage(after, ir)
    while after in _STEPS_AFTER:
        after, step = _STEPS_AFTER[after]
        ir = step(ir, cfg.target, opts)
        on_stage(after, ir)
    verify_program(ir.program)
    verify_schedule(ir)
    verify_layout(ir, cfg.max_seq_len, cfg.vocab)  # a dump's buffers and regions, as edited
    return ir
