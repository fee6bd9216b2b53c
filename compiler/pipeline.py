"""The whole compiler on one screen: every stage in order, each a pure function.

Each stage's output is kept under its name (`graph`, `fuse`, `tile`, ...) so it can be
printed, dumped (`--dump-ir`) and tested on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tilert_compiler.ir.graph import Graph, format_graph
from tilert_compiler.ir.tile import Schedule, TileProgram, format_program, format_schedule
from tilert_compiler.ir.verify import verify_program, verify_schedule
from tilert_compiler.models.graph import build_graph
from tilert_compiler.passes.deps import deps
from tilert_compiler.passes.fuse import fuse
from tilert_compiler.passes.layout import layout
from tilert_compiler.passes.prefetch import prefetch
from tilert_compiler.passes.schedule import schedule
from tilert_compiler.passes.tile import tile


def run_pipeline(cfg, opts, on_stage: Callable[[str, Any], None]) -> Schedule:
    t = cfg.target
    ir: Any = build_graph(cfg)  # model description -> graph of primitive ops
    on_stage("graph", ir)
    ir = fuse(ir)  # norm/rope/cache/residual/silu into their GEMVs
    on_stage("fuse", ir)
    ir = tile(ir, t, context=opts.context)  # needs fused kinds: one task kind per op kind
    on_stage("tile", ir)
    ir = deps(ir)  # producers from regions, transitive reduction, counters
    verify_program(ir)  # coverage: each output element written by exactly one task
    on_stage("deps", ir)
    ir = schedule(ir, t)  # per-SM lists in one global topological order
    on_stage("schedule", ir)
    ir = prefetch(ir, t, enabled=opts.l2_prefetch)  # L2 weight prefetch, per SM list
    on_stage("prefetch", ir)
    ir = layout(ir)  # arena offsets for every tensor
    verify_schedule(ir)  # deadlock freedom, ordering of every read after its write
    on_stage("layout", ir)
    return ir


def format_stage(ir: Any) -> str:
    if isinstance(ir, Graph):
        return format_graph(ir)
    if isinstance(ir, TileProgram):
        return format_program(ir)
    if isinstance(ir, Schedule):
        return format_schedule(ir)
    raise TypeError(type(ir))


STAGES = ("graph", "fuse", "tile", "deps", "schedule", "prefetch", "layout")
