"""tile: fused graph -> tile program. Cuts every op into tasks sized from the target.

Row-parallel ops (QKV, projections, LM head) are cut into contiguous row blocks, about
one block per SM per op, so one op can fill the chip. Attention is cut per kv head and
per split of the cache (flash-decoding), so it fills the chip too; the last split of a
kv head to finish combines the partials. Each task records the regions it reads,
streams and writes, and its cost in bytes moved.
"""

from __future__ import annotations

from tilert_compiler.ir.graph import Graph, OpKind, Storage, TensorDecl
from tilert_compiler.ir.target import Target
from tilert_compiler.ir.tile import Counter, Region, Task, TileProgram, region

W_BYTES = 2  # bf16 weights; an FP8 weight's rows take TensorDecl.row_units of these


def region_weight_bytes(r: Region, decl: TensorDecl) -> int:
    """Bytes a weight region streams: its rows in the arena's form (FP8 rows with scales)."""
    if decl.fp8_block is not None and len(r.box) == 2:
        return r.numel() // decl.shape[-1] * decl.row_units * W_BYTES
    return r.numel() * W_BYTES


# Split attention: each (kv head, split) task writes a partial (o, max, sum) per q head;
# the split of a kv head that arrives last (counted on its ARRIVE counter) combines them.
ARRIVE = "arrive:"
ARRIVE_PART = "attn_part."
# Per LM-head task: (largest logit of its rows, its index): greedy sampling reads these
# instead of every logit.
ARGMAX_PART = "lm_argmax"
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


def tile(graph: Graph, target: Target, *, context: int, splits: int | None) -> TileProgram:
    """`context`: the cache length the cost model assumes for attention; `splits`: the
    split-KV factor (None: attention_splits)."""
    tasks: list[Task] = []
    counters: list[Counter] = []  # arrival counters of split attention (see ARRIVE)
    part_decls: list[TensorDecl] = []  # split-attention partials, one tensor per layer
    shape = {t.name: t.shape for t in graph.tensors}
    storage = {t.name: t.storage for t in graph.tensors}
    decls = {t.name: t for t in graph.tensors}
    lm_tasks: list[int] = []  # LM-head tasks, in argmax-partial order

    def add(kind, op, reads, weights, writes, cost_extra=0, cost=None, **args) -> None:
        if cost is None:
            cost = sum(region_weight_bytes(r, decls[r.tensor]) for r in weights)
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
        elif op.kind == OpKind.ATTENTION_DECODE:
            qkv, kc, vc, *head_norms = op.inputs
            out = op.outputs[0]
            kv_heads, _, hd = shape[kc]
            heads = shape[out][0] // hd
            group = heads // kv_heads
            n_split = splits or attention_splits(target, kv_heads, context)
            arrive0 = len(counters)
            for g in range(kv_heads):
                counters.append(Counter(f"{ARRIVE}{op.name}#{g}", n_split))
                for sp in range(n_split):
                    last = sp == n_split - 1
                    q_rows = _vec(qkv, g * group * hd, (g + 1) * group * hd)
                    k_row = _vec(qkv, (heads + g) * hd, (heads + g + 1) * hd)
                    v_row = _vec(qkv, (heads + kv_heads + g) * hd, (heads + kv_heads + g + 1) * hd)
                    earlier = (0, ("pos", 0))  # rows of previous steps; this step's rows: k_row
                    reads = [q_rows, k_row, v_row]
                    reads += [region(c, (g, g + 1), earlier, (0, hd)) for c in (kc, vc)]
                    w = [_vec(n, 0, hd) for n in head_norms]
                    part = region(
                        f"{ARRIVE_PART}{op.layer}",
                        (g, g + 1),
                        (sp, sp + 1),
                        (0, group),
                        (0, hd + 2),
                    )
                    writes = [part]
                    if last:  # the static home of this step's cache rows and the combine
                        row = (("pos", 0), ("pos", 1))
                        writes += [region(c, (g, g + 1), row, (0, hd)) for c in (kc, vc)]
                        writes.append(_vec(out, g * group * hd, (g + 1) * group * hd))
                    add(
                        op.kind,
                        op,
                        reads,
                        w,
                        writes,
                        cost_extra=2 * (context // n_split) * hd * A_BYTES,
                        head=g,
                        split=sp,
                        arrive=arrive0 + g,
                    )
            part_decls.append(
                TensorDecl(
                    f"{ARRIVE_PART}{op.layer}",
                    (kv_heads, n_split, group, hd + 2),
                    Storage.ACT,
                    op.layer,
                )
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
                elif op.kind == OpKind.NORM_LINEAR:  # rows of the stacked weights
                    weights = [_vec(op.inputs[1], 0, k)] + _stacked_rows(
                        op.inputs[2:], lo, hi, k, shape
                    )
                else:
                    weights = [
                        _vec(op.inputs[1], 0, k),
                        _rows(op.inputs[2], lo, hi, k),
                        _rows(op.inputs[3], lo, hi, k),
                    ]
                writes = [_vec(out, lo, hi)]
                if storage[out] == Storage.OUT:  # the LM head: each task's argmax too
                    j = len(lm_tasks)
                    lm_tasks.append(len(tasks))
                    writes.append(region(ARGMAX_PART, (j, j + 1), (0, 2)))
                add(op.kind, op, reads, weights, writes, row0=lo, rows=hi - lo)
        elif op.kind == OpKind.SAMPLE:  # one task: the LM head's argmax partials, and every
            (logits,), (token,) = op.inputs, op.outputs  # logit when it samples
            v, n = shape[logits][0], len(lm_tasks)
            reads = [_vec(logits, 0, v), region(ARGMAX_PART, (0, n), (0, 2))]
            # Costed as greedy decoding runs it (the partials); a sampled draw makes several
            # passes over every logit, which the prediction leaves out.
            add(op.kind, op, reads, [], [_vec(token, 0, 1)], cost=2 * n * A_BYTES, vocab=v, parts=n)
            part_decls.append(TensorDecl(ARGMAX_PART, (n, 2), Storage.ACT))
        else:
            raise TileError(
                f"op {op.name}: kind '{op.kind.value}' has no task kind; run fuse first"
            )
    live = {r.tensor for t in tasks for r in t.reads + t.weights + t.writes}
    return TileProgram(
        model=graph.model,
        tasks=tuple(tasks),
        counters=tuple(counters),
        consts=graph.consts,
        tensors=tuple(t for t in graph.tensors + tuple(part_decls) if t.name in live),
    )


def attention_splits(target: Target, kv_heads: int, context: int) -> int:
    """Split-KV factor: enough (kv head, split) tasks to cover the SMs, at least 16 cache
    rows per split at the expected context."""
    return max(1, min(target.sms // kv_heads, -(-context // 16)))


def _stacked_rows(ws, lo: int, hi: int, k: int, shape) -> list[Region]:
    """Rows [lo, hi) of the row-wise concatenation of the weight matrices `ws`."""
    out, base = [], 0
    for w in ws:
        n = shape[w][0]
        a, b = max(lo, base), min(hi, base + n)
        if a < b:
            out.append(_rows(w, a - base, b - base, k))
        base += n
    return out
