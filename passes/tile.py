"""tile: fused graph -> tile program. Cuts every op into tasks sized from the target.

Row-parallel ops (projections, LM head) are cut into contiguous row blocks, about one
block per SM per op, so one op can fill the chip; QKV is cut per head, because q/k norm
and RoPE need a whole head; attention is one task per query head. Each task records the
regions it reads, streams and writes, and its cost in bytes moved.
"""

from __future__ import annotations

from tilert_compiler.ir.graph import Graph, OpKind
from tilert_compiler.ir.target import Target
from tilert_compiler.ir.tile import Region, Task, TileProgram, region

W_BYTES = 2  # bf16 weights
A_BYTES = 4  # f32 activations and cache


class TileError(ValueError):
    """The graph holds an op no task kind implements."""


def _row_blocks(n: int, target: Target, align: int = 8) -> list[tuple[int, int]]:
    """Split [0, n) into at most `target.sms` blocks of a multiple of `align` rows."""
    per = -(-n // target.sms)
    per = -(-per // align) * align
    return [(r, min(r + per, n)) for r in range(0, n, per)]


def _vec(name: str, lo: int, hi: int) -> Region:
    return region(name, (lo, hi))


def _rows(name: str, lo: int, hi: int, k: int) -> Region:
    return region(name, (lo, hi), (0, k))


def tile(graph: Graph, target: Target, context: int = 512) -> TileProgram:
    """`context`: the cache length the cost model assumes for attention."""
    tasks: list[Task] = []
    shape = {t.name: t.shape for t in graph.tensors}

    def add(kind, op, reads, weights, writes, cost_extra=0, **args) -> None:
        cost = sum(r.numel() for r in weights) * W_BYTES
        cost += sum(r.numel() for r in reads + writes) * A_BYTES + cost_extra
        tasks.append(
            Task(
                len(tasks),
                kind,
                op.name,
                op.layer,
                tuple(reads),
                tuple(weights),
                tuple(writes),
                tuple(args.items()),
                cost,
            )
        )

    for op in graph.ops:
        if op.kind == OpKind.EMBED:
            (table,), (out,) = op.inputs, op.outputs
            d = shape[out][0]
            for lo, hi in _row_blocks(d, target, align=256):
                tok_row = (("tok", 0), ("tok", 1))
                add(op.kind, op, [], [region(table, tok_row, (lo, hi))], [_vec(out, lo, hi)])
        elif op.kind == OpKind.QKV_ROPE_CACHE:
            x, gamma, wq, wk, wv, *head_norms = op.inputs
            q, kc, vc = op.outputs
            hd = int(op.attr("head_dim"))
            d = shape[x][0]
            heads, kv_heads = shape[wq][0] // hd, shape[wk][0] // hd
            for h in range(heads):
                w = [_vec(gamma, 0, d), _rows(wq, h * hd, (h + 1) * hd, d)]
                w += [_vec(head_norms[0], 0, hd)] if head_norms else []
                add(
                    op.kind,
                    op,
                    [_vec(x, 0, d)],
                    w,
                    [_vec(q, h * hd, (h + 1) * hd)],
                    head=h,
                    is_kv=0,
                )
            for g in range(kv_heads):
                w = [
                    _vec(gamma, 0, d),
                    _rows(wk, g * hd, (g + 1) * hd, d),
                    _rows(wv, g * hd, (g + 1) * hd, d),
                ]
                w += [_vec(head_norms[1], 0, hd)] if head_norms else []
                row = (("pos", 0), ("pos", 1))
                writes = [region(c, (g, g + 1), row, (0, hd)) for c in (kc, vc)]
                add(op.kind, op, [_vec(x, 0, d)], w, writes, head=g, is_kv=1)
        elif op.kind == OpKind.ATTENTION:
            q, kc, vc = op.inputs
            (out,) = op.outputs
            kv_heads, _, hd = shape[kc]
            heads = shape[q][0] // hd
            group = heads // kv_heads
            for h in range(heads):
                g = h // group
                hist = (0, ("pos", 1))
                reads = [_vec(q, h * hd, (h + 1) * hd)]
                reads += [region(c, (g, g + 1), hist, (0, hd)) for c in (kc, vc)]
                add(
                    op.kind,
                    op,
                    reads,
                    [],
                    [_vec(out, h * hd, (h + 1) * hd)],
                    cost_extra=2 * context * hd * A_BYTES,
                    head=h,
                )
        elif op.kind in (OpKind.LINEAR_RESIDUAL, OpKind.NORM_LINEAR, OpKind.GATE_UP_SILU):
            x = op.inputs[0]
            (out,) = op.outputs
            k = shape[x][0]
            n = shape[out][0]
            for lo, hi in _row_blocks(n, target):
                reads = [_vec(x, 0, k)]
                if op.kind == OpKind.LINEAR_RESIDUAL:
                    reads.append(_vec(op.inputs[2], lo, hi))
                    weights = [_rows(op.inputs[1], lo, hi, k)]
                elif op.kind == OpKind.NORM_LINEAR:
                    weights = [_vec(op.inputs[1], 0, k), _rows(op.inputs[2], lo, hi, k)]
                else:
                    weights = [
                        _vec(op.inputs[1], 0, k),
                        _rows(op.inputs[2], lo, hi, k),
                        _rows(op.inputs[3], lo, hi, k),
                    ]
                add(op.kind, op, reads, weights, [_vec(out, lo, hi)], row0=lo, rows=hi - lo)
        else:
            raise TileError(
                f"op {op.name}: kind '{op.kind.value}' has no task kind; run fuse first"
            )
    live = {r.tensor for t in tasks for r in t.reads + t.weights + t.writes}
    return TileProgram(
        model=graph.model,
        tasks=tuple(tasks),
        consts=graph.consts,
        tensors=tuple(t for t in graph.tensors if t.name in live),
    )
