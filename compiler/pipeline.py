"""The whole compiler on one screen: every stage in order, each a pure function.

STAGE_TABLE lists each stage once: its name, its pass `(ir, ctx) -> ir`, the IR level it
returns (which says how that IR prints and parses back) and the checks its output must
pass. `run_pipeline` runs it from the model description, `resume_pipeline` from a parsed
(maybe hand-edited) dump (`--from-ir`), and tests/test_ir_text.py runs the hand-written
tests/ir/*.tir files through it. Each stage's output is kept under its name so it can be
printed, dumped (`--dump-ir`) and tested on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tilert_compiler.codegen.serialize import serialize
from tilert_compiler.ir.graph import Graph, format_graph
from tilert_compiler.ir.parse import parse_program, parse_schedule
from tilert_compiler.ir.prefill import PrefillProgram
from tilert_compiler.ir.target import Target
from tilert_compiler.ir.tile import Schedule, TileProgram, format_program, format_schedule
from tilert_compiler.ir.verify import (
    verify_consts,
    verify_deps_order,
    verify_layout,
    verify_plan,
    verify_program,
    verify_schedule,
)
from tilert_compiler.models.graph import build_graph
from tilert_compiler.models.schema import ModelConfig
from tilert_compiler.options import Options
from tilert_compiler.passes.deps import deps
from tilert_compiler.passes.fuse import fuse
from tilert_compiler.passes.layout import layout
from tilert_compiler.passes.plan import plan
from tilert_compiler.passes.prefetch import prefetch
from tilert_compiler.passes.prefill import plan_prefill, prefill_chunk
from tilert_compiler.passes.schedule import schedule
from tilert_compiler.passes.tile import tile


@dataclass(frozen=True)
class Context:
    """What a pass reads besides its IR: the target, the options, and the model config
    (None for IR without a model, such as the tests/ir files: the stages that need one,
    `graph`, do not run there, and the checks against it are skipped)."""

    target: Target
    options: Options
    cfg: ModelConfig | None = None

    @classmethod
    def of(cls, cfg: ModelConfig, options: Options) -> Context:
        return cls(cfg.target, options, cfg)


@dataclass(frozen=True)
class Level:
    """An IR level: the type of its IR, its text form, and the parser of that text
    (None: it does not parse back, so a dump of it cannot be resumed)."""

    type: type
    format: Callable[[Any], str]
    parse: Callable[[str, str], Any] | None


GRAPH = Level(Graph, format_graph, None)
TILE = Level(TileProgram, format_program, parse_program)
SCHEDULE = Level(Schedule, format_schedule, parse_schedule)

Check = Callable[[Any, Context], None]


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Any, Context], Any]  # the pass: (IR before, ctx) -> IR after
    level: Level  # of the IR it returns
    # What its output must satisfy, each raising VerifyError naming the culprits. Later
    # passes keep them, so an edited dump of a later stage is checked against them all.
    checks: tuple[Check, ...] = ()


# ---------------------------------------------------------------- the passes' adapters
# Each pass takes its options as explicit arguments without defaults; their values come
# from the Context here, so Options holds the only defaults.


def _graph(_: None, c: Context) -> Graph:
    if c.cfg is None:
        raise ValueError("the graph stage needs a model config")
    return build_graph(c.cfg)


def _fuse(g: Graph, _: Context) -> Graph:
    return fuse(g)


def _tile(g: Graph, c: Context) -> TileProgram:
    return tile(
        g,
        c.target,
        context=c.options.context,
        splits=c.options.attn_splits,
        candidates=c.options.sample_candidates,
    )


def _deps(p: TileProgram, c: Context) -> TileProgram:
    return deps(p, flags=c.options.flags)


def _schedule(p: TileProgram, c: Context) -> Schedule:
    return schedule(p, c.target)


def _prefetch(s: Schedule, c: Context) -> Schedule:
    return prefetch(s, ring=c.options.weight_ring, cache=c.options.cache_prefetch)


def _layout(s: Schedule, _: Context) -> Schedule:
    return layout(s)


def _plan(s: Schedule, c: Context) -> Schedule:
    # The plan is sized from the task table (its variants and weight stream): serialize
    # is pure, so the stage builds the table codegen will build from the same schedule.
    o = c.options
    return plan(
        s,
        serialize(s),
        c.target,
        stage_kb=o.stage_kb,
        in_flight_kb=o.in_flight_kb,
        ring_stages=o.ring_stages,
        fp8_mma=o.fp8_gemv == "mma",
    )


# ---------------------------------------------------------------- the checks


def _program(ir: TileProgram | Schedule) -> TileProgram:
    return ir.program if isinstance(ir, Schedule) else ir


def _consts_match_config(ir: TileProgram | Schedule, c: Context) -> None:
    """Codegen reads the config, the tasks the consts: an edit must not let them part."""
    if c.cfg is not None:
        verify_consts(_program(ir), c.cfg.to_dict())


def _coverage(ir: TileProgram | Schedule, _: Context) -> None:
    verify_program(_program(ir))


def _deps_order(ir: TileProgram | Schedule, _: Context) -> None:
    verify_deps_order(_program(ir))


def _completes_in_order(s: Schedule, _: Context) -> None:
    verify_schedule(s)


def _layout_in_bounds(s: Schedule, c: Context) -> None:
    """`pos` runs to max_seq_len - 1 and `tok` to vocab - 1: the config's, else the consts'."""
    verify_layout(s, *((c.cfg.max_seq_len, c.cfg.vocab) if c.cfg is not None else ()))


def _plan_fits(s: Schedule, c: Context) -> None:
    verify_plan(s, serialize(s).variants, c.target)


# ---------------------------------------------------------------- the stages

STAGE_TABLE: tuple[Stage, ...] = (
    # model description -> graph of primitive ops
    Stage("graph", _graph, GRAPH),
    # norms into GEMVs, rope/cache into attention, residual, silu·mul
    Stage("fuse", _fuse, GRAPH),
    # needs fused kinds: one task kind per op kind, tiles sized from the target. Checks:
    # the consts are the config's; each output element is written by exactly one task
    Stage("tile", _tile, TILE, (_consts_match_config, _coverage)),
    # producers, transitive reduction, counters (or flags). Check: a task depends only on
    # earlier tasks, which every later pass assumes
    Stage("deps", _deps, TILE, (_deps_order,)),
    # per-SM lists in one global topological order. Checks: the lists finish (no
    # deadlock), and every read comes after its write
    Stage("schedule", _schedule, SCHEDULE, (_completes_in_order,)),
    # the weight ring and the KV cache prefetch, recorded in the schedule's options
    Stage("prefetch", _prefetch, SCHEDULE),
    # arena offsets for every tensor. Checks: each placed once, aligned, inside its arena,
    # overlapping none; every region inside its tensor's shape at every step
    Stage("layout", _layout, SCHEDULE, (_layout_in_bounds,)),
    # the kernel's thread roles and shared memory: ring stages, copies in flight, task
    # scratch. Check: the roles are the kernel's, every task kind's scratch fits, and the
    # whole fits the target's shared memory
    Stage("plan", _plan, SCHEDULE, (_plan_fits,)),
)
STAGES = tuple(s.name for s in STAGE_TABLE)
RESUMABLE = tuple(s.name for s in STAGE_TABLE if s.level.parse is not None)
_BY_NAME = {s.name: s for s in STAGE_TABLE}


def stage(name: str) -> Stage:
    if name not in _BY_NAME:
        raise KeyError(f"no stage '{name}'; stages: {', '.join(STAGES)}")
    return _BY_NAME[name]


def run_pipeline(ctx: Context, on_stage: Callable[[str, Any], None]) -> Schedule:
    """The decode program: one step of the model as a schedule of tasks over the SMs."""
    return run_stages(STAGE_TABLE, None, ctx, on_stage)


def resume_pipeline(after: str, ir: Any, ctx: Context, on_stage: Callable[[str, Any], None]):
    """Run the stages after stage `after` on `ir`, the output of `after` as parsed from a
    dump. It may be hand-edited, so it must first pass the checks of `after` and of every
    stage before it (what the later passes assume); then each stage checks its own."""
    if after not in RESUMABLE:
        raise ValueError(f"cannot resume after '{after}'; resumable: {', '.join(RESUMABLE)}")
    check_through(after, ir, ctx)
    on_stage(after, ir)
    return run_stages(STAGE_TABLE[STAGES.index(after) + 1 :], ir, ctx, on_stage)


def run_stages(stages, ir: Any, ctx: Context, on_stage: Callable[[str, Any], None]) -> Any:
    """`stages` (a run of STAGE_TABLE) on `ir`, each output checked, then handed on."""
    for s in stages:
        ir = s.run(ir, ctx)
        for check in s.checks:
            check(ir, ctx)
        on_stage(s.name, ir)
    return ir


def check_through(name: str, ir: Any, ctx: Context) -> None:
    """The checks of stage `name` and of every stage before it, on `ir`."""
    for s in STAGE_TABLE[: STAGES.index(name) + 1]:
        for check in s.checks:
            check(ir, ctx)


def format_stage(ir: Any) -> str:
    """Any stage's IR as text (its level's form)."""
    for level in (GRAPH, TILE, SCHEDULE):
        if isinstance(ir, level.type):
            return level.format(ir)
    raise TypeError(type(ir))


def latest_stage(ir: TileProgram | Schedule) -> str:
    """For IR without a `# stage:` line: the latest stage whose output it could be."""
    if isinstance(ir, TileProgram):
        return "deps" if any(t.signal >= 0 for t in ir.tasks) else "tile"
    if ir.plan is not None:
        return "plan"
    return "layout" if ir.layout else "prefetch" if ir.options else "schedule"


def prefill_pipeline(cfg, opts, decode: Schedule) -> PrefillProgram | None:
    """The prefill program (None: --prefill-chunk 0): prompt chunks as a fixed list of
    tile-program launches, bound to the decode program's weights and KV cache, so it
    must run after `layout`. Codegen lowers its tile programs (codegen/prefill.py)."""
    if opts.prefill_chunk == 0:
        return None
    chunk = prefill_chunk(cfg.max_seq_len, opts.prefill_chunk)  # whole 128-row tiles
    return plan_prefill(cfg, decode, chunk)  # tiles, bindings; shapes checked
