"""Task kinds: one record each, the one place a kind's contract is written down.

A task kind is code specialised on static shapes (a `Variant` of the task table) and fed
one task-table record of int64 arguments. Its record says what the other layers read:

- `args`: the argument names, in order from the record's F_ARG0 (the kernel's
  `<Kind>Args` struct). w_* are weights-arena offsets, `counts` are counts, the rest
  act-arena offsets (NO_OFFSET: one the task does not use).
- `statics`: the variant's static shapes, in order (the device function's template
  parameters). A GEMV's last, QBK, is its weights' FP8 scale k-block (ir/precision.py);
  bf16 variants leave it out (the template's default 0).
- `polls`: with flags, the kind reads its activation inputs until they carry the step's
  parity and writes its outputs with it (passes.deps then gives it no counter waits).
- `streams`: a GEMV, whose weight rows are its stream entries (the ring's producer copies
  them in order): how many matrices a row block's rows come from (gate/up: 2).
- `ends_step`: its signal ends a step (the step gate and the runtime wait on it).
- `config`: (static or argument, config field) pairs that must be equal
  (runtime/artifact.py checks a loaded artifact's).
- `colour`: its colour in the compiler's pictures.
- `device` / `header`: its device function and the header that defines it
  (codegen/cuda/tasks/); `interpreter`: the runtime.interpreter.Interpreter method.
- `cache_prefetch`: the device function (from its header) the producer warp calls to ask L2
  for the task's inputs that do not depend on the step (the KV cache prefetch), if any.

and the rules the generic passes apply to it, each a small function:

- `fuses`: (root op kind, pattern): the primitive op chain it replaces (passes.fuse tries
  the kinds' patterns in KINDS order, so a pattern that holds another comes first).
- `tile`: its op cut into tasks (passes.tile).
- `statics_of` / `args_of`: a task's variant statics and argument values
  (codegen/serialize.py).
- `scratch`: the shared memory (floats) a variant needs besides the weight ring
  (passes.plan, ir/verify.py).
- `extents`: the activation vectors it reads or writes whole from an offset argument, and
  their lengths (runtime/artifact.py checks them against the arena).
- `partials`: the floats of partial results its combine loads over the consumer threads
  (attention's; the plan's `part_batch` batches a thread's, passes.plan lowers it when
  registers spill).

A new kind: a record here (with its rules), codegen/cuda/tasks/<kind>.cuh and
Interpreter._<kind>. tests/test_kinds.py holds every other module to that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tilert_compiler.ir.graph import Op, OpKind, Storage, TensorDecl, Uses, attrs
from tilert_compiler.ir.lm_parts import PART_HEADER, SAMPLE_LIST, part_floats
from tilert_compiler.ir.plan import ATTN_BLOCK_ROWS, SAMPLE_BINS, rows_per_chunk
from tilert_compiler.ir.precision import kernel_block
from tilert_compiler.ir.target import Target
from tilert_compiler.ir.tile import A_BYTES, Counter, Region, Task, Tiling, region, rows, vec

if TYPE_CHECKING:
    from tilert_compiler.ir.tasktable import Variant

NO_OFFSET = -1  # an offset argument the task does not use

# Split attention: each (kv head, split) task writes a partial (o, max, sum) per q head;
# the split of a kv head that arrives last (counted on its ARRIVE counter) combines them.
ARRIVE = "arrive:"
ARRIVE_PART = "attn_part."
# Per LM-head task: its partial (ir/lm_parts.py: the largest logit and its index, which
# greedy decoding reads instead of every logit, and the candidates a sampled draw merges).
LM_PART = "lm_part"


@dataclass(frozen=True)
class Rewrite:
    """What a fusion pattern makes of a match: fused ops, placed where the last of the
    replaced ops stood, and the tensors they introduce."""

    ops: tuple[Op, ...]
    members: frozenset[str]  # names of the ops they replace
    tensors: tuple[TensorDecl, ...] = ()


class Placed(Protocol):
    """What serialisation knows of a laid-out schedule (codegen/serialize.py)."""

    base: dict[str, int]  # tensor -> element offset in its arena
    decl: dict[str, TensorDecl]  # tensor -> its declaration (an FP8 weight's block)

    def start(self, r: Region) -> int: ...  # element offset of a region's first element

    def of_op(self, op: str, f: Callable[[list[Task]], Any]) -> Any: ...  # f(the op's tasks)

    def check_contiguous(self, t: Task, regions) -> None: ...


Pattern = Callable[[Uses, Op], Rewrite | None]


@dataclass(frozen=True)
class TaskKind:
    name: str
    args: tuple[str, ...]
    statics: tuple[str, ...]
    colour: str
    tile: Callable[[Op, Tiling], None]
    statics_of: Callable[[Task, dict, Placed], tuple[tuple[str, int], ...]]
    args_of: Callable[[Task, Placed], dict[str, int]]
    scratch: Callable[[Variant, int, int], int]  # (variant, consumer warps, stage bytes)
    counts: tuple[str, ...] = ()
    polls: bool = False
    streams: int = 0
    ends_step: bool = False
    config: tuple[tuple[str, str], ...] = ()
    fuses: tuple[OpKind, Pattern] | None = None
    extents: Callable[[dict, dict], dict[str, int]] = lambda a, s: {}  # (args, statics)
    partials: Callable[[Variant], int] = lambda v: 0
    cache_prefetch: str = ""

    @property
    def device(self) -> str:
        return f"task_{self.name}"

    @property
    def header(self) -> str:
        return f"tasks/{self.name}.cuh"

    @property
    def interpreter(self) -> str:
        return f"_{self.name}"


# ---------------------------------------------------------------- embed
# out = table[token] (row0.. of the hidden vector)


def _tile_embed(op: Op, b: Tiling) -> None:
    (table,), (out,) = op.inputs, op.outputs
    d = b.shape[out][0]
    for lo, hi in b.row_blocks(d, align=256):
        tok_row = (("tok", 0), ("tok", 1))
        b.add(op, [], [region(table, tok_row, (lo, hi))], [vec(out, lo, hi)])


EMBED = TaskKind(
    "embed",
    args=("w_table", "out", "rows"),
    statics=("D",),
    colour="#7f7f7f",
    counts=("rows",),
    tile=_tile_embed,
    statics_of=lambda t, consts, o: (("D", consts["hidden"]),),
    args_of=lambda t, o: {
        "w_table": o.start(t.weights[0]),
        "out": o.start(t.writes[0]),
        "rows": t.writes[0].numel(),
    },
    scratch=lambda v, warps, stage: 0,
    extents=lambda a, s: {"out": a["rows"]},
)


# ---------------------------------------------------------------- attention_decode
# One split of one kv group: [q/k head norm] -> RoPE -> cache write -> attention over the
# split's cache rows -> partials; the group's last split combines them. head, split:
# indices; arrive: the counter its splits count arrivals on (without flags)


def _chain(uses: Uses, start: Op) -> list[Op]:
    """start, then each single consumer while it is a head norm, rope or kv write."""
    chain = [start]
    while True:
        nxt = uses.only_consumer(chain[-1].outputs[0])
        if nxt is None or nxt.kind not in (OpKind.HEAD_RMSNORM, OpKind.ROPE, OpKind.KV_WRITE):
            return chain
        chain.append(nxt)


def _fuse_qkv(uses: Uses, norm: Op) -> Rewrite | None:
    """rmsnorm -> q/k/v linears -> [head norms] -> ropes -> cache writes -> attention becomes
    one norm_linear over the row-stacked [Wq; Wk; Wv] (so its row blocks spread over every
    SM) and one attention_decode that does the per-head work: q/k head norm, RoPE, the
    cache write and split-KV attention. The per-head epilogue moves into attention because
    a head's q/k norm needs the whole head, which a row block need not hold."""
    linears = uses.consumers.get(norm.outputs[0], [])
    if len(linears) != 3 or any(op.kind != OpKind.LINEAR for op in linears):
        return None
    roles: dict[str, list[Op]] = {}
    for lin in linears:
        chain = _chain(uses, lin)
        kinds = [op.kind for op in chain[1:]]
        has_rope, writes = OpKind.ROPE in kinds, OpKind.KV_WRITE in kinds
        role = "k" if has_rope and writes else "q" if has_rope else "v" if writes else None
        if role is None or role in roles:
            return None
        roles[role] = chain
    if set(roles) != {"q", "k", "v"}:
        return None
    q, k, v = roles["q"], roles["k"], roles["v"]
    att = uses.only_consumer(q[-1].outputs[0])
    kc, vc = k[-1].outputs[0], v[-1].outputs[0]
    if att is None or att.kind != OpKind.ATTENTION or att.inputs[1:] != (kc, vc):
        return None
    head_norms = [op.inputs[1] for op in q + k if op.kind == OpKind.HEAD_RMSNORM]
    rope = next(op for op in q if op.kind == OpKind.ROPE)
    x, gamma = norm.inputs
    prefix = norm.name.rsplit(".", 1)[0] + "." if "." in norm.name else ""
    qkv = f"qkv.{norm.layer}" if norm.layer >= 0 else "qkv"
    weights = (q[0].inputs[1], k[0].inputs[1], v[0].inputs[1])
    proj = Op(
        name=prefix + "qkv_proj",
        kind=NORM_LINEAR.name,
        inputs=(x, gamma, *weights),
        outputs=(qkv,),
        layer=norm.layer,
        fused=(norm.name, q[0].name, k[0].name, v[0].name),
    )
    attention = Op(
        name=att.name,
        kind=ATTENTION_DECODE.name,
        inputs=(qkv, kc, vc, *head_norms),
        outputs=(att.outputs[0], kc, vc),
        layer=norm.layer,
        attrs=attrs(head_dim=rope.attr("head_dim"), qk_norm=bool(head_norms)),
        fused=tuple(o.name for o in q[1:] + k[1:] + v[1:] + [att]),
    )
    stacked = sum(uses.tensor[w].shape[0] for w in weights)
    return Rewrite(
        (proj, attention),
        frozenset(o.name for o in [norm, att] + q + k + v),
        (TensorDecl(qkv, (stacked,), Storage.ACT, norm.layer),),
    )


def attention_splits(target: Target, kv_heads: int, context: int) -> int:
    """Split-KV factor: enough (kv head, split) tasks to cover the SMs, at least 16 cache
    rows per split at the expected context."""
    return max(1, min(target.sms // kv_heads, -(-context // 16)))


def _tile_attention(op: Op, b: Tiling) -> None:
    """Per kv head and per split of the cache (flash-decoding), so attention fills the
    chip too; the last split of a kv head to finish combines the partials."""
    qkv, kc, vc, *head_norms = op.inputs
    out = op.outputs[0]
    kv_heads, _, hd = b.shape[kc]
    heads = b.shape[out][0] // hd
    group = heads // kv_heads
    n_split = b.splits or attention_splits(b.target, kv_heads, b.context)
    arrive0 = len(b.counters)
    for g in range(kv_heads):
        b.counters.append(Counter(f"{ARRIVE}{op.name}#{g}", n_split))
        for sp in range(n_split):
            last = sp == n_split - 1
            q_rows = vec(qkv, g * group * hd, (g + 1) * group * hd)
            k_row = vec(qkv, (heads + g) * hd, (heads + g + 1) * hd)
            v_row = vec(qkv, (heads + kv_heads + g) * hd, (heads + kv_heads + g + 1) * hd)
            earlier = (0, ("pos", 0))  # rows of previous steps; this step's rows: k_row
            reads = [q_rows, k_row, v_row]
            reads += [region(c, (g, g + 1), earlier, (0, hd)) for c in (kc, vc)]
            w = [vec(n, 0, hd) for n in head_norms]
            part = region(
                f"{ARRIVE_PART}{op.layer}", (g, g + 1), (sp, sp + 1), (0, group), (0, hd + 2)
            )
            writes = [part]
            if last:  # the static home of this step's cache rows and the combine
                row = (("pos", 0), ("pos", 1))
                writes += [region(c, (g, g + 1), row, (0, hd)) for c in (kc, vc)]
                writes.append(vec(out, g * group * hd, (g + 1) * group * hd))
            b.add(
                op,
                reads,
                w,
                writes,
                cost_extra=2 * (b.context // n_split) * hd * A_BYTES,
                head=g,
                split=sp,
                arrive=arrive0 + g,
            )
    b.tensors.append(
        TensorDecl(
            f"{ARRIVE_PART}{op.layer}", (kv_heads, n_split, group, hd + 2), Storage.ACT, op.layer
        )
    )


def _splits(tasks: list[Task]) -> int:
    return max(t.arg("split") for t in tasks) + 1


def _attention_out(tasks: list[Task]) -> str:
    """The op's output: its last splits write it."""
    return next(t.writes[3].tensor for t in tasks if len(t.writes) == 4)


def _attention_statics(t: Task, consts: dict, o: Placed) -> tuple[tuple[str, int], ...]:
    H, KV = consts["heads"], consts["kv_heads"]
    splits = o.of_op(t.op, _splits)
    return (
        ("HD", consts["head_dim"]),
        ("G", H // KV),
        ("H", H),
        ("KV", KV),
        ("S", consts["max_seq_len"]),
        ("NSPLIT", splits),
        ("QKN", int(consts["qk_norm"])),
    )


def _attention_args(t: Task, o: Placed) -> dict[str, int]:
    # Whole-tensor bases: the kernel indexes heads and splits from `head` and `split`.
    R, W = t.reads, t.weights
    out = o.of_op(t.op, _attention_out)
    return {
        "qkv": o.base[R[0].tensor],
        "w_q_gamma": o.start(W[0]) if W else NO_OFFSET,
        "w_k_gamma": o.start(W[1]) if W else NO_OFFSET,
        "k_cache": o.base[R[3].tensor],
        "v_cache": o.base[R[4].tensor],
        "part": o.base[t.writes[0].tensor],
        "out": o.base[out],
        "head": t.arg("head"),
        "split": t.arg("split"),
        "arrive": t.arg("arrive"),
    }


def _attention_scratch(v: Variant, warps: int, stage_bytes: int) -> int:
    hd, g, splits = v.get("HD"), v.get("G"), v.get("NSPLIT")
    chunk = min(-(-(v.get("S") - 1) // splits) + 1, ATTN_BLOCK_ROWS)
    # a block of cache rows (k padded: conflict-free float4 reads), then the partials
    block = max(chunk * (hd + 4 + hd), splits * g * (hd + 2))
    scores = max(g * chunk, splits * g)  # scores, then the combine's split weights
    return g * hd + 4 * hd + -(-scores // 4) * 4 + block


ATTENTION_DECODE = TaskKind(
    "attention_decode",
    args=(
        "qkv",
        "w_q_gamma",
        "w_k_gamma",
        "k_cache",
        "v_cache",
        "part",
        "out",
        "head",
        "split",
        "arrive",
    ),
    statics=("HD", "G", "H", "KV", "S", "NSPLIT", "QKN"),
    colour="#d62728",
    counts=("head", "split", "arrive"),
    config=(("S", "max_seq_len"),),
    polls=True,
    fuses=(OpKind.RMSNORM, _fuse_qkv),
    tile=_tile_attention,
    statics_of=_attention_statics,
    args_of=_attention_args,
    scratch=_attention_scratch,
    partials=lambda v: v.get("NSPLIT") * v.get("G") * (v.get("HD") + 2),
    cache_prefetch="prefetch_cache_rows",
)


# ---------------------------------------------------------------- the GEMVs
# Row-parallel ops (QKV, projections, LM head) are cut into contiguous row blocks, about
# one block per SM per op, so one op can fill the chip.


def _lm_parts(b: Tiling) -> int:
    """LM-head tasks tiled so far (each writes one partial)."""
    return sum(1 for t in b.tasks if any(r.tensor == LM_PART for r in t.writes))


def _cands(part: Region) -> int:
    """The candidates an LM-head partial region holds (ir/lm_parts.py)."""
    return (part.box[-1][1] - part.box[-1][0] - PART_HEADER) // 2


def _tile_gemv(block: Callable[[Op, int, int, int, Tiling], tuple[list, list]]):
    """A GEMV kind's tiling: `block(op, lo, hi, k, b)` gives the regions, besides the
    input vector, that row block [lo, hi) reads and streams."""

    def tile(op: Op, b: Tiling) -> None:
        x = op.inputs[0]
        (out,) = op.outputs
        k, n = b.shape[x][0], b.shape[out][0]
        lm = b.storage[out] == Storage.OUT  # the LM head: each task's partial too
        j = _lm_parts(b) if lm else 0
        for lo, hi in b.row_blocks(n):
            reads, weights = block(op, lo, hi, k, b)
            writes = [vec(out, lo, hi)]
            if lm:
                writes.append(region(LM_PART, (j, j + 1), (0, part_floats(b.candidates))))
                j += 1
            b.add(op, [vec(x, 0, k), *reads], weights, writes, row0=lo, rows=hi - lo)

    return tile


def _gemv_statics(t: Task, o: Placed, *extra: tuple[str, int]) -> tuple[tuple[str, int], ...]:
    """K: the input's length; R: the most rows one task of the op streams; `extra`; then
    QBK for FP8 rows: the k-block their scales cover (left out for bf16: the template's
    default)."""
    K = t.reads[0].numel()
    static = (("K", K), ("R", o.of_op(t.op, _most_rows)), *extra)
    blocks = {o.decl[r.tensor].fp8_block for r in t.weights if len(r.box) == 2}
    if len(blocks) != 1:
        raise ValueError(f"task t{t.id}: its weight rows mix precisions {sorted(map(str, blocks))}")
    (block,) = blocks
    if block is not None:
        static += (("QBK", kernel_block(K, block[1])),)
    return static


def _most_rows(tasks: list[Task]) -> int:
    return max(sum(r.box[0][1] - r.box[0][0] for r in t.weights if len(r.box) == 2) for t in tasks)


def _gemv_scratch(v: Variant, warps: int, stage_bytes: int) -> int:
    """The input row, then per K-slice row results. FP8 rows keep a slice per warp, the
    most either of their loops writes (the tensor-core one, plan fp8_mma, always does)."""
    k, qbk = v.get("K"), dict(v.static).get("QBK", 0)
    groups = rows_per_chunk(k, stage_bytes, qbk)  # a row per item
    split = warps if qbk else 1 if groups >= warps else warps // groups
    return k + split * v.get("R")


def _gemv_extents(a: dict, s: dict) -> dict[str, int]:
    return {"x": s["K"]}


# out = residual + W @ x   (o-proj, down-proj)


def _fuse_linear_residual(uses: Uses, lin: Op) -> Rewrite | None:
    add = uses.only_consumer(lin.outputs[0])
    if add is None or add.kind != OpKind.ADD:
        return None
    residual = next(t for t in add.inputs if t != lin.outputs[0])
    op = Op(
        name=lin.name,
        kind=LINEAR_RESIDUAL.name,
        inputs=(lin.inputs[0], lin.inputs[1], residual),
        outputs=add.outputs,
        layer=lin.layer,
        fused=(lin.name, add.name),
    )
    return Rewrite((op,), frozenset({lin.name, add.name}))


LINEAR_RESIDUAL = TaskKind(
    "linear_residual",
    args=("x", "w", "residual", "out", "rows"),
    statics=("K", "R", "QBK"),
    colour="#2ca02c",
    counts=("rows",),
    polls=True,
    streams=1,
    fuses=(OpKind.LINEAR, _fuse_linear_residual),
    tile=_tile_gemv(
        lambda op, lo, hi, k, b: (
            [vec(op.inputs[2], lo, hi)],
            [rows(op.inputs[1], lo, hi, k)],
        )
    ),
    statics_of=lambda t, consts, o: _gemv_statics(t, o),
    args_of=lambda t, o: {
        "x": o.start(t.reads[0]),
        "w": o.start(t.weights[0]),
        "residual": o.start(t.reads[1]),
        "out": o.start(t.writes[0]),
        "rows": t.arg("rows"),
    },
    scratch=_gemv_scratch,
    extents=_gemv_extents,
)


# out = silu(gate @ xn) * (up @ xn), xn = rmsnorm(x)


def _fuse_gate_up(uses: Uses, norm: Op) -> Rewrite | None:
    linears = uses.consumers.get(norm.outputs[0], [])
    if len(linears) != 2 or any(op.kind != OpKind.LINEAR for op in linears):
        return None
    mul = uses.only_consumer(linears[0].outputs[0])
    if (
        mul is None
        or mul.kind != OpKind.SILU_MUL
        or uses.only_consumer(linears[1].outputs[0]) != mul
    ):
        return None
    gate = next(op for op in linears if op.outputs[0] == mul.inputs[0])
    up = next(op for op in linears if op.outputs[0] == mul.inputs[1])
    op = Op(
        name=mul.name.rsplit(".", 1)[0] + ".gate_up",
        kind=GATE_UP_SILU.name,
        inputs=(norm.inputs[0], norm.inputs[1], gate.inputs[1], up.inputs[1]),
        outputs=mul.outputs,
        layer=norm.layer,
        fused=(norm.name, gate.name, up.name, mul.name),
    )
    return Rewrite((op,), frozenset({norm.name, gate.name, up.name, mul.name}))


GATE_UP_SILU = TaskKind(
    "gate_up_silu",
    args=("x", "w_gamma", "w_gate", "w_up", "out", "rows"),
    statics=("K", "R", "QBK"),
    colour="#ff7f0e",
    counts=("rows",),
    polls=True,
    streams=2,
    fuses=(OpKind.RMSNORM, _fuse_gate_up),
    tile=_tile_gemv(
        lambda op, lo, hi, k, b: (
            [],
            [
                vec(op.inputs[1], 0, k),
                rows(op.inputs[2], lo, hi, k),
                rows(op.inputs[3], lo, hi, k),
            ],
        )
    ),
    statics_of=lambda t, consts, o: _gemv_statics(t, o),
    args_of=lambda t, o: {
        "x": o.start(t.reads[0]),
        "w_gamma": o.start(t.weights[0]),
        "w_gate": o.start(t.weights[1]),
        "w_up": o.start(t.weights[2]),
        "out": o.start(t.writes[0]),
        "rows": t.arg("rows"),
    },
    scratch=_gemv_scratch,
    extents=_gemv_extents,
)


# out = W @ rmsnorm(x) (stacked QKV, LM head); part_out: the LM head's partial
# (ir/lm_parts.py; NO_OFFSET elsewhere); row0: its first row (the index base).
# CANDS: the LM head's candidates per task (0: not the LM head)


def _fuse_norm_linear(uses: Uses, norm: Op) -> Rewrite | None:
    lin = uses.only_consumer(norm.outputs[0])
    if lin is None or lin.kind != OpKind.LINEAR:
        return None
    op = Op(
        name=lin.name,
        kind=NORM_LINEAR.name,
        inputs=(norm.inputs[0], norm.inputs[1], lin.inputs[1]),
        outputs=lin.outputs,
        layer=lin.layer,
        fused=(norm.name, lin.name),
    )
    return Rewrite((op,), frozenset({norm.name, lin.name}))


def _stacked_rows(ws, lo: int, hi: int, k: int, shape) -> list[Region]:
    """Rows [lo, hi) of the row-wise concatenation of the weight matrices `ws`."""
    out, base = [], 0
    for w in ws:
        n = shape[w][0]
        a, b = max(lo, base), min(hi, base + n)
        if a < b:
            out.append(rows(w, a - base, b - base, k))
        base += n
    return out


def _norm_linear_scratch(v: Variant, warps: int, stage_bytes: int) -> int:
    # the GEMV's (+ the LM head's 32-bit radix histogram over its logits)
    return _gemv_scratch(v, warps, stage_bytes) + (SAMPLE_BINS if v.get("CANDS") else 0)


def _norm_linear_extents(a: dict, s: dict) -> dict[str, int]:
    lm = {"part_out": part_floats(s["CANDS"])} if s["CANDS"] else {}  # its partial
    return _gemv_extents(a, s) | lm


def _norm_linear_args(t: Task, o: Placed) -> dict[str, int]:
    W, Out = t.weights, t.writes
    o.check_contiguous(t, W[1:])
    return {
        "x": o.start(t.reads[0]),
        "w_gamma": o.start(W[0]),
        "w": o.start(W[1]),
        "out": o.start(Out[0]),
        "rows": t.arg("rows"),
        "part_out": o.start(Out[1]) if len(Out) > 1 else NO_OFFSET,
        "row0": t.arg("row0"),
    }


NORM_LINEAR = TaskKind(
    "norm_linear",
    args=("x", "w_gamma", "w", "out", "rows", "part_out", "row0"),
    statics=("K", "R", "CANDS", "QBK"),
    colour="#1f77b4",
    counts=("rows", "row0"),
    polls=True,
    streams=1,
    fuses=(OpKind.RMSNORM, _fuse_norm_linear),
    tile=_tile_gemv(  # rows of the stacked weights
        lambda op, lo, hi, k, b: (
            [],
            [vec(op.inputs[1], 0, k), *_stacked_rows(op.inputs[2:], lo, hi, k, b.shape)],
        )
    ),
    # the LM head also writes its partial
    statics_of=lambda t, consts, o: _gemv_statics(
        t, o, ("CANDS", _cands(t.writes[1]) if len(t.writes) > 1 else 0)
    ),
    args_of=_norm_linear_args,
    scratch=_norm_linear_scratch,
    extents=_norm_linear_extents,
)


# ---------------------------------------------------------------- sample
# the next token from the logits (runtime.sampling's rules): from the LM head's partials
# (C candidates each), or a pass over the logits where they do not settle it


def _tile_sample(op: Op, b: Tiling) -> None:
    """One task: the LM head's partials, and the logits when the partials do not settle
    the draw."""
    (logits,), (token,) = op.inputs, op.outputs
    v, n, lm_part = b.shape[logits][0], _lm_parts(b), part_floats(b.candidates)
    reads = [vec(logits, 0, v), region(LM_PART, (0, n), (0, lm_part))]
    # Costed as greedy decoding runs it (the partials' maxima); a sampled draw merges the
    # candidates, or passes over every logit, which the prediction leaves out.
    b.add(op, reads, [], [vec(token, 0, 1)], cost=2 * n * A_BYTES, vocab=v, parts=n)
    b.tensors.append(TensorDecl(LM_PART, (n, lm_part), Storage.ACT))


def _sample_scratch(v: Variant, warps: int, stage_bytes: int) -> int:
    # a pass over the vocabulary: 64-bit radix histogram, then a 64-bit sum per consumer;
    # the candidates' merge: SAMPLE_LIST gathered (z, index, 64-bit mass), per partial
    # (z, count, 64-bit mass)
    passes = 2 * SAMPLE_BINS + 2 * 32 * warps
    merge = 4 * SAMPLE_LIST + 4 * v.get("P")
    return max(passes, merge)


SAMPLE = TaskKind(
    "sample",
    args=("logits", "out", "vocab", "parts", "n_parts"),
    statics=("V", "C", "P"),
    colour="#9467bd",
    counts=("vocab", "n_parts"),
    config=(("vocab", "vocab"),),
    ends_step=True,
    tile=_tile_sample,
    statics_of=lambda t, consts, o: (
        ("V", t.arg("vocab")),
        ("C", _cands(t.reads[1])),
        ("P", t.arg("parts")),
    ),
    args_of=lambda t, o: {
        "logits": o.start(t.reads[0]),
        "out": o.start(t.writes[0]),
        "vocab": t.arg("vocab"),
        "parts": o.start(t.reads[1]),
        "n_parts": t.arg("parts"),
    },
    scratch=_sample_scratch,
    extents=lambda a, s: {"logits": a["vocab"], "parts": part_floats(s["C"]) * a["n_parts"]},
)


KINDS: dict[str, TaskKind] = {
    k.name: k for k in (EMBED, ATTENTION_DECODE, LINEAR_RESIDUAL, GATE_UP_SILU, NORM_LINEAR, SAMPLE)
}
