"""fuse: graph -> graph. Rewrites primitive op chains into the fused ops the kernel runs.

Each task kind's record (ir/kinds.py `fuses`) holds its pattern: a root op kind and a
match on structure (op kinds and single-consumer chains), not on names. Today's:
  rmsnorm -> {linear -> [head_rmsnorm] -> rope -> [kv_write]} x3 -> attention
                                           => norm_linear (stacked qkv) + attention_decode
  linear -> add (the linear's only consumer)                          => linear_residual
  rmsnorm -> {linear, linear} -> silu_mul                             => gate_up_silu
  rmsnorm -> linear (the norm's only consumer)                        => norm_linear
The patterns are tried in KINDS order, one pass over the ops each: a pattern that holds
another's (qkv's rmsnorm -> linear) comes first. RMSNorm is recomputed by every task of
the consuming op (the input vector is tiny), so the normalised vector never round-trips
through memory.
"""

from __future__ import annotations

from dataclasses import replace

from tilert_compiler.ir.graph import Graph, Op, TensorDecl, Uses
from tilert_compiler.ir.kinds import KINDS


def fuse(graph: Graph) -> Graph:
    ops = list(graph.ops)
    introduced: list[TensorDecl] = []  # tensors the rewrites introduced (the stacked qkv)
    for kind in KINDS.values():
        if kind.fuses is None:
            continue
        root_kind, pattern = kind.fuses
        uses = Uses(ops, graph.tensors)
        replaced: dict[str, tuple[Op, ...]] = {}  # fused ops, placed where their last member stood
        gone: set[str] = set()
        for op in ops:
            if op.kind == root_kind and op.name not in gone:
                hit = pattern(uses, op)
                if hit is not None:
                    gone |= hit.members
                    last = max(i for i, o in enumerate(ops) if o.name in hit.members)
                    replaced[ops[last].name] = hit.ops
                    introduced += hit.tensors
        out: list[Op] = []
        for op in ops:
            if op.name in replaced:
                out += replaced[op.name]
            elif op.name not in gone:
                out.append(op)
        ops = out
    live = {t for op in ops for t in op.inputs + op.outputs}
    ordered = [t for t in graph.tensors + tuple(introduced) if t.name in live]
    return replace(graph, ops=tuple(ops), tensors=tuple(ordered))
