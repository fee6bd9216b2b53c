"""tile: fused graph -> tile program. Cuts every op into tasks sized from the target.

Each op's task kind (ir/kinds.py) holds its tiling rule: row-parallel ops (QKV,
projections, LM head) are cut into contiguous row blocks, about one block per SM per op,
so one op can fill the chip; attention per kv head and per split of the cache
(flash-decoding), so it fills the chip too. Each task records the regions it reads,
streams and writes, and its cost in bytes moved.
"""

from __future__ import annotations

from tilert_compiler.ir.graph import Graph
from tilert_compiler.ir.kinds import KINDS
from tilert_compiler.ir.target import Target
from tilert_compiler.ir.tile import TileProgram, Tiling


class TileError(ValueError):
    """The graph holds an op no task kind implements."""


def tile(
    graph: Graph, target: Target, *, context: int, splits: int | None, candidates: int
) -> TileProgram:
    """`context`: the cache length the cost model assumes for attention; `splits`: the
    split-KV factor (None: attention_splits); `candidates`: the logits each LM-head task
    keeps for a sampled draw."""
    if candidates < 1:
        raise TileError(f"sample_candidates must be at least 1 (got {candidates})")
    b = Tiling(graph.tensors, target, context=context, splits=splits, candidates=candidates)
    for op in graph.ops:
        kind = KINDS.get(str(op.kind))
        if kind is None:
            raise TileError(f"op {op.name}: kind '{op.kind}' has no task kind; run fuse first")
        kind.tile(op, b)
    live = {r.tensor for t in b.tasks for r in t.reads + t.weights + t.writes}
    return TileProgram(
        model=graph.model,
        tasks=tuple(b.tasks),
        counters=tuple(b.counters),
        consts=graph.consts,
        tensors=tuple(t for t in graph.tensors + tuple(b.tensors) if t.name in live),
    )
