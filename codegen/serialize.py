"""Schedule -> TaskTable: each task's regions become element offsets into the arenas."""

from __future__ import annotations

import numpy as np

from tilert_compiler.ir.graph import OpKind
from tilert_compiler.ir.kinds import KINDS
from tilert_compiler.ir.precision import kernel_block
from tilert_compiler.ir.tasktable import (
    F_ARG0,
    F_KIND,
    F_LAYER,
    F_NSTREAM,
    F_NWAIT,
    F_SIGNAL,
    F_STREAM,
    F_WAIT,
    NO_OFFSET,
    RECORD,
    TaskTable,
    Variant,
)
from tilert_compiler.ir.tile import Region, Schedule, Task


def _strides(shape: tuple[int, ...]) -> list[int]:
    out, s = [], 1
    for d in reversed(shape):
        out.append(s)
        s *= d
    return out[::-1]


class _Offsets:
    def __init__(self, sched: Schedule):
        self.base = {n: off for n, _, off in sched.layout}
        self.rows: dict[str, int] = {}  # GEMV op -> most rows one of its tasks produces
        for t in sched.program.tasks:
            if t.kind in GEMV_KINDS:
                self.rows[t.op] = max(self.rows.get(t.op, 0), _rows_per_task(t))
        # attention op -> its output and its split count (the last split holds the output)
        self.attn_out: dict[str, str] = {}
        self.splits: dict[str, int] = {}
        for t in sched.program.tasks:
            if t.kind == OpKind.ATTENTION_DECODE:
                self.splits[t.op] = max(self.splits.get(t.op, 0), t.arg("split") + 1)
                if len(t.writes) == 4:
                    self.attn_out[t.op] = t.writes[3].tensor
        self.decl = {t.name: t for t in sched.program.tensors}

    def strides(self, tensor: str) -> list[int]:
        """Arena units per step of each dimension: an FP8 weight's rows are row_units apart
        (its e4m3 bytes and scales, ir/precision.py)."""
        d = self.decl[tensor]
        return [d.row_units, 1] if d.fp8_block is not None else _strides(d.shape)

    def start(self, r: Region) -> int:
        """Element offset of the region's first element; symbolic bounds count as 0 (the
        kernel adds `pos` or `tok` times that dimension's stride)."""
        off = self.base[r.tensor]
        for (lo, _), stride in zip(r.box, self.strides(r.tensor), strict=True):
            if isinstance(lo, int):
                off += lo * stride
        return off

    def units(self, r: Region) -> int:
        """Arena units of a region of whole rows (its elements but for FP8 rows)."""
        d = self.decl[r.tensor]
        return r.numel() // d.shape[-1] * d.row_units if d.fp8_block is not None else r.numel()

    def check_contiguous(self, t: Task, regions) -> None:
        """Row blocks of stacked weights must be one run in the arena (layout keeps them so)."""
        for a, b in zip(regions, regions[1:], strict=False):
            if self.start(a) + self.units(a) != self.start(b):
                raise ValueError(f"task t{t.id}: {a} and {b} are not adjacent in the arena")


def variant_of(t: Task, consts: dict, o: _Offsets) -> Variant:
    D, hd = consts["hidden"], consts["head_dim"]
    k = t.kind
    if k == OpKind.EMBED:
        return Variant(k.value, (("D", D),))
    if k == OpKind.SAMPLE:
        return Variant(k.value, (("V", t.arg("vocab")),))
    if k == OpKind.ATTENTION_DECODE:
        H, KV = consts["heads"], consts["kv_heads"]
        splits = o.splits[t.op]
        return Variant(
            k.value,
            (
                ("HD", hd),
                ("G", H // KV),
                ("H", H),
                ("KV", KV),
                ("S", consts["max_seq_len"]),
                ("NSPLIT", splits),
                ("QKN", int(consts["qk_norm"])),
            ),
        )
    K = t.reads[0].numel()
    static = (("K", K), ("R", o.rows[t.op]))
    if k == OpKind.NORM_LINEAR:  # the LM head also writes its argmax partial
        static += (("ARGMAX", int(len(t.writes) > 1)),)
    # FP8 rows: the k-block their scales cover (left out for bf16: the template's default)
    blocks = {o.decl[r.tensor].fp8_block for r in t.weights if len(r.box) == 2}
    if len(blocks) != 1:
        raise ValueError(f"task t{t.id}: its weight rows mix precisions {sorted(map(str, blocks))}")
    (block,) = blocks
    if block is not None:
        static += (("QBK", kernel_block(K, block[1])),)
    return Variant(k.value, static)


def _args(t: Task, o: _Offsets) -> dict[str, int]:
    k = t.kind
    R, W, Out = t.reads, t.weights, t.writes
    if k == OpKind.EMBED:
        return {"w_table": o.start(W[0]), "out": o.start(Out[0]), "rows": Out[0].numel()}
    if k == OpKind.SAMPLE:
        return {
            "logits": o.start(R[0]),
            "out": o.start(Out[0]),
            "vocab": t.arg("vocab"),
            "parts": o.start(R[1]),
            "n_parts": t.arg("parts"),
        }
    if k == OpKind.ATTENTION_DECODE:
        # Whole-tensor bases: the kernel indexes heads and splits from `head` and `split`.
        qkv, kc, vc = R[0].tensor, R[3].tensor, R[4].tensor
        part = Out[0].tensor
        out = o.attn_out[t.op]
        return {
            "qkv": o.base[qkv],
            "w_q_gamma": o.start(W[0]) if W else NO_OFFSET,
            "w_k_gamma": o.start(W[1]) if W else NO_OFFSET,
            "k_cache": o.base[kc],
            "v_cache": o.base[vc],
            "part": o.base[part],
            "out": o.base[out],
            "head": t.arg("head"),
            "split": t.arg("split"),
            "arrive": t.arg("arrive"),
        }
    rows = t.arg("rows")
    if k == OpKind.LINEAR_RESIDUAL:
        return {
            "x": o.start(R[0]),
            "w": o.start(W[0]),
            "residual": o.start(R[1]),
            "out": o.start(Out[0]),
            "rows": rows,
        }
    if k == OpKind.GATE_UP_SILU:
        return {
            "x": o.start(R[0]),
            "w_gamma": o.start(W[0]),
            "w_gate": o.start(W[1]),
            "w_up": o.start(W[2]),
            "out": o.start(Out[0]),
            "rows": rows,
        }
    if k == OpKind.NORM_LINEAR:
        o.check_contiguous(t, W[1:])
        return {
            "x": o.start(R[0]),
            "w_gamma": o.start(W[0]),
            "w": o.start(W[1]),
            "out": o.start(Out[0]),
            "rows": rows,
            "argmax_out": o.start(Out[1]) if len(Out) > 1 else NO_OFFSET,
            "row0": t.arg("row0"),
        }
    raise ValueError(f"task t{t.id}: no serialisation for kind {k.value}")


GEMV_KINDS = tuple(OpKind(k.name) for k in KINDS.values() if k.streams)


def _stream_entries(t: Task, o: _Offsets) -> list[tuple[int, int, int]]:
    """The weight row blocks a GEMV task consumes, in order; adjacent blocks merge."""
    if t.kind not in GEMV_KINDS:
        return []
    out: list[list[int]] = []
    for r in t.weights:
        if len(r.box) != 2:  # norm gammas are read directly, not streamed
            continue
        start, n, k = o.start(r), o.units(r), o.decl[r.tensor].row_units
        if out and out[-1][0] + out[-1][1] == start and out[-1][2] == k:
            out[-1][1] += n
        else:
            out.append([start, n, k])
    return [tuple(e) for e in out]


def _rows_per_task(t: Task) -> int:
    return sum(r.box[0][1] - r.box[0][0] for r in t.weights if len(r.box) == 2)


def serialize(sched: Schedule) -> TaskTable:
    prog = sched.program
    consts = dict(prog.consts)
    o = _Offsets(sched)
    variants: list[Variant] = []
    index: dict[Variant, int] = {}
    records = np.full((len(prog.tasks), RECORD), NO_OFFSET, dtype=np.int64)
    waits: list[tuple[int, int]] = []
    stream: list[tuple[int, int, int]] = []
    for t in prog.tasks:
        v = variant_of(t, consts, o)
        if v not in index:
            index[v] = len(variants)
            variants.append(v)
        rec = records[t.id]
        rec[F_KIND], rec[F_LAYER], rec[F_SIGNAL] = index[v], t.layer, t.signal
        rec[F_NWAIT], rec[F_WAIT] = len(t.waits), len(waits)
        waits += list(t.waits)
        rows = _stream_entries(t, o)
        rec[F_NSTREAM], rec[F_STREAM] = len(rows), len(stream)
        stream += rows
        args = _args(t, o)
        assert tuple(args) == KINDS[v.kind].args, (v.kind, tuple(args))
        assert tuple(n for n, _ in v.static) == KINDS[v.kind].statics[: len(v.static)], v
        for j, val in enumerate(args.values()):
            rec[F_ARG0 + j] = val
    sm_start = np.zeros(len(sched.sm_lists) + 1, dtype=np.int32)
    for s, ids in enumerate(sched.sm_lists):
        sm_start[s + 1] = sm_start[s] + len(ids)
    sm_tasks = np.array([t for ids in sched.sm_lists for t in ids], dtype=np.int32)
    return TaskTable(
        records,
        np.array(waits, dtype=np.int64).reshape(-1, 2),
        np.array(stream, dtype=np.int64).reshape(-1, 3),
        sm_start,
        sm_tasks,
        variants,
    )
