"""fuse: graph -> graph. Rewrites primitive op chains into the fused ops the kernel runs.

Patterns, matched on structure (op kinds and single-consumer chains), not on names:
  rmsnorm -> {linear -> [head_rmsnorm] -> rope -> [kv_write]} x3 -> attention
                                           => norm_linear (stacked qkv) + attention_decode
  rmsnorm -> {linear, linear} -> silu_mul                             => gate_up_silu
  linear -> add (the linear's only consumer)                          => linear_residual
  rmsnorm -> linear (the norm's only consumer)                        => norm_linear
RMSNorm is recomputed by every task of the consuming op (the input vector is tiny), so
the normalised vector never round-trips through memory.
"""

from __future__ import annotations

from dataclasses import replace

from tilert_compiler.ir.graph import Graph, Op, OpKind, Storage, TensorDecl, attrs


class _Uses:
    def __init__(self, ops: list[Op]):
        self.producer = {t: op for op in ops for t in op.outputs}
        self.consumers: dict[str, list[Op]] = {}
        for op in ops:
            for t in op.inputs:
                self.consumers.setdefault(t, []).append(op)

    def only_consumer(self, tensor: str) -> Op | None:
        cs = self.consumers.get(tensor, [])
        return cs[0] if len(cs) == 1 else None


def _chain(uses: _Uses, start: Op) -> list[Op]:
    """start, then each single consumer while it is a head norm, rope or kv write."""
    chain = [start]
    while True:
        nxt = uses.only_consumer(chain[-1].outputs[0])
        if nxt is None or nxt.kind not in (OpKind.HEAD_RMSNORM, OpKind.ROPE, OpKind.KV_WRITE):
            return chain
        chain.append(nxt)


def _fuse_qkv(ops: list[Op], uses: _Uses, norm: Op) -> tuple[list[Op], set[str]] | None:
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
    proj = Op(
        name=prefix + "qkv_proj",
        kind=OpKind.NORM_LINEAR,
        inputs=(x, gamma, q[0].inputs[1], k[0].inputs[1], v[0].inputs[1]),
        outputs=(qkv,),
        layer=norm.layer,
        fused=(norm.name, q[0].name, k[0].name, v[0].name),
    )
    attention = Op(
        name=att.name,
        kind=OpKind.ATTENTION_DECODE,
        inputs=(qkv, kc, vc, *head_norms),
        outputs=(att.outputs[0], kc, vc),
        layer=norm.layer,
        attrs=attrs(head_dim=rope.attr("head_dim"), qk_norm=bool(head_norms)),
        fused=tuple(o.name for o in q[1:] + k[1:] + v[1:] + [att]),
    )
    return [proj, attention], {o.name for o in [norm, att] + q + k + v}


def _fuse_gate_up(ops: list[Op], uses: _Uses, norm: Op) -> tuple[list[Op], set[str]] | None:
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
        kind=OpKind.GATE_UP_SILU,
        inputs=(norm.inputs[0], norm.inputs[1], gate.inputs[1], up.inputs[1]),
        outputs=mul.outputs,
        layer=norm.layer,
        fused=(norm.name, gate.name, up.name, mul.name),
    )
    return [op], {norm.name, gate.name, up.name, mul.name}


def _fuse_linear_residual(ops: list[Op], uses: _Uses, lin: Op) -> tuple[list[Op], set[str]] | None:
    add = uses.only_consumer(lin.outputs[0])
    if add is None or add.kind != OpKind.ADD:
        return None
    residual = next(t for t in add.inputs if t != lin.outputs[0])
    op = Op(
        name=lin.name,
        kind=OpKind.LINEAR_RESIDUAL,
        inputs=(lin.inputs[0], lin.inputs[1], residual),
        outputs=add.outputs,
        layer=lin.layer,
        fused=(lin.name, add.name),
    )
    return [op], {lin.name, add.name}


def _fuse_norm_linear(ops: list[Op], uses: _Uses, norm: Op) -> tuple[list[Op], set[str]] | None:
    lin = uses.only_consumer(norm.outputs[0])
    if lin is None or lin.kind != OpKind.LINEAR:
        return None
    op = Op(
        name=lin.name,
        kind=OpKind.NORM_LINEAR,
        inputs=(norm.inputs[0], norm.inputs[1], lin.inputs[1]),
        outputs=lin.outputs,
        layer=lin.layer,
        fused=(norm.name, lin.name),
    )
    return [op], {norm.name, lin.name}


# (root op kind, rule), tried in this order: larger patterns first.
_RULES = (
    (OpKind.RMSNORM, _fuse_qkv),
    (OpKind.RMSNORM, _fuse_gate_up),
    (OpKind.LINEAR, _fuse_linear_residual),
    (OpKind.RMSNORM, _fuse_norm_linear),
)


def fuse(graph: Graph) -> Graph:
    ops = list(graph.ops)
    shapes = {t.name: t for t in graph.tensors}
    for root_kind, rule in _RULES:
        uses = _Uses(ops)
        replaced: dict[str, list[Op]] = {}  # fused ops, placed where their last member stood
        gone: set[str] = set()
        for op in ops:
            if op.kind == root_kind and op.name not in gone:
                hit = rule(ops, uses, op)
                if hit is not None:
                    fused, members = hit
                    gone |= members
                    last = max(i for i, o in enumerate(ops) if o.name in members)
                    replaced[ops[last].name] = fused
        out: list[Op] = []
        for op in ops:
            if op.name in replaced:
                out += replaced[op.name]
            elif op.name not in gone:
                out.append(op)
        ops = out
    tensors = dict(shapes)
    for op in ops:  # tensors the rewrites introduced (the stacked qkv vector)
        if op.kind == OpKind.NORM_LINEAR and op.outputs[0] not in tensors:
            rows = sum(shapes[w].shape[0] for w in op.inputs[2:])
            tensors[op.outputs[0]] = TensorDecl(op.outputs[0], (rows,), Storage.ACT, op.layer)
    live = {t for op in ops for t in op.inputs + op.outputs}
    ordered = [t for t in tensors.values() if t.name in live]
    return replace(graph, ops=tuple(ops), tensors=tuple(ordered))
