"""Model description -> graph IR: one decode step of a llama- or qwen3-family decoder.

Both families share the block structure (pre-norm attention with GQA and rotate-half
RoPE, pre-norm SwiGLU MLP); qwen3 adds an RMSNorm over each q and k head before RoPE.
Weight tensors carry their Hugging Face names, so the artifact's weight layout maps
straight onto a checkpoint.
"""

from __future__ import annotations

from tilert_compiler.ir.graph import Graph, Op, OpKind, Storage, TensorDecl, attrs
from tilert_compiler.models.text import ConfigError


def build_graph(cfg) -> Graph:
    hd, H, KV = cfg.head_dim, cfg.heads, cfg.kv_heads
    D, F, V, S = cfg.hidden, cfg.intermediate, cfg.vocab, cfg.max_seq_len
    tensors: list[TensorDecl] = []
    ops: list[Op] = []

    quant = getattr(cfg, "quantization", None)

    def w(name: str, *shape: int, layer: int = -1) -> str:
        # FP8 projections carry their scale block (per output channel: (1, K))
        block = None
        if quant is not None and quant.quantizes(name):
            block = quant.block or (1, shape[1])
        tensors.append(TensorDecl(name, tuple(shape), Storage.WEIGHT, layer, block))
        return name

    def a(name: str, *shape: int, layer: int = -1, storage: Storage = Storage.ACT) -> str:
        tensors.append(TensorDecl(name, tuple(shape), storage, layer))
        return name

    def op(name, kind, ins, outs, layer=-1, **kw) -> None:
        ops.append(Op(name, kind, tuple(ins), tuple(outs), layer, attrs(**kw)))

    embed = w("model.embed_tokens.weight", V, D)
    x = a("x.0", D, layer=0)
    op("embed", OpKind.EMBED, [embed], [x])
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        L = f"L{i}."
        ln1 = w(p + "input_layernorm.weight", D, layer=i)
        wq = w(p + "self_attn.q_proj.weight", H * hd, D, layer=i)
        wk = w(p + "self_attn.k_proj.weight", KV * hd, D, layer=i)
        wv = w(p + "self_attn.v_proj.weight", KV * hd, D, layer=i)
        wo = w(p + "self_attn.o_proj.weight", D, H * hd, layer=i)
        xn = a(f"xn.{i}", D, layer=i)
        q_raw, k_raw = a(f"q_raw.{i}", H * hd, layer=i), a(f"k_raw.{i}", KV * hd, layer=i)
        v = a(f"v.{i}", KV * hd, layer=i)
        op(L + "input_norm", OpKind.RMSNORM, [x, ln1], [xn], i)
        op(L + "q_proj", OpKind.LINEAR, [xn, wq], [q_raw], i)
        op(L + "k_proj", OpKind.LINEAR, [xn, wk], [k_raw], i)
        op(L + "v_proj", OpKind.LINEAR, [xn, wv], [v], i)
        if cfg.qk_norm:
            qn_w = w(p + "self_attn.q_norm.weight", hd, layer=i)
            kn_w = w(p + "self_attn.k_norm.weight", hd, layer=i)
            qn, kn = a(f"qn.{i}", H * hd, layer=i), a(f"kn.{i}", KV * hd, layer=i)
            op(L + "q_norm", OpKind.HEAD_RMSNORM, [q_raw, qn_w], [qn], i, head_dim=hd)
            op(L + "k_norm", OpKind.HEAD_RMSNORM, [k_raw, kn_w], [kn], i, head_dim=hd)
            q_raw, k_raw = qn, kn
        q, k = a(f"q.{i}", H * hd, layer=i), a(f"k.{i}", KV * hd, layer=i)
        op(L + "q_rope", OpKind.ROPE, [q_raw], [q], i, head_dim=hd)
        op(L + "k_rope", OpKind.ROPE, [k_raw], [k], i, head_dim=hd)
        # Cache layout [kv_head, max_seq, head_dim]: one head's history is contiguous.
        kc = a(f"k_cache.{i}", KV, S, hd, layer=i, storage=Storage.CACHE)
        vc = a(f"v_cache.{i}", KV, S, hd, layer=i, storage=Storage.CACHE)
        op(L + "k_write", OpKind.KV_WRITE, [k], [kc], i)
        op(L + "v_write", OpKind.KV_WRITE, [v], [vc], i)
        att = a(f"attn.{i}", H * hd, layer=i)
        op(L + "attention", OpKind.ATTENTION, [q, kc, vc], [att], i, group=H // KV)
        o = a(f"o.{i}", D, layer=i)
        h = a(f"h.{i}", D, layer=i)
        op(L + "o_proj", OpKind.LINEAR, [att, wo], [o], i)
        op(L + "attn_residual", OpKind.ADD, [x, o], [h], i)

        ln2 = w(p + "post_attention_layernorm.weight", D, layer=i)
        wg = w(p + "mlp.gate_proj.weight", F, D, layer=i)
        wu = w(p + "mlp.up_proj.weight", F, D, layer=i)
        wd = w(p + "mlp.down_proj.weight", D, F, layer=i)
        hn = a(f"hn.{i}", D, layer=i)
        g, u, act = a(f"gate.{i}", F, layer=i), a(f"up.{i}", F, layer=i), a(f"act.{i}", F, layer=i)
        dn = a(f"down.{i}", D, layer=i)
        x_next = a(f"x.{i + 1}", D, layer=i + 1)
        op(L + "post_norm", OpKind.RMSNORM, [h, ln2], [hn], i)
        op(L + "gate_proj", OpKind.LINEAR, [hn, wg], [g], i)
        op(L + "up_proj", OpKind.LINEAR, [hn, wu], [u], i)
        op(L + "silu_mul", OpKind.SILU_MUL, [g, u], [act], i)
        op(L + "down_proj", OpKind.LINEAR, [act, wd], [dn], i)
        op(L + "mlp_residual", OpKind.ADD, [h, dn], [x_next], i)
        x = x_next

    _check_stacked_precisions(tensors)
    norm = w("model.norm.weight", D)
    lm = embed if cfg.tie_embeddings else w("lm_head.weight", V, D)
    xf = a("xf", D)
    logits = a("logits", V, storage=Storage.OUT)
    op("final_norm", OpKind.RMSNORM, [x, norm], [xf])
    op("lm_head", OpKind.LINEAR, [xf, lm], [logits])
    # The next token, as a float (exact below 2^24): multi-step launches feed it back.
    token = a("token", 1)
    op("sample", OpKind.SAMPLE, [logits], [token])
    consts = attrs(
        hidden=D,
        heads=H,
        kv_heads=KV,
        head_dim=hd,
        intermediate=F,
        vocab=V,
        layers=cfg.layers,
        max_seq_len=S,
        norm_eps=float(cfg.norm_eps),
        qk_norm=bool(cfg.qk_norm),
    )
    return Graph(cfg.name, tuple(tensors), tuple(ops), consts)


def _check_stacked_precisions(tensors: list[TensorDecl]) -> None:
    """q, k and v (one stacked GEMV) and gate and up (one task) stream through one kernel
    loop: a quantization's `ignore` list must keep or quantize them together."""
    block = {t.name: t.fp8_block for t in tensors}
    for name in block:
        for group in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
            if f".{group[0]}." not in name:
                continue
            names = [name.replace(group[0], g) for g in group]
            if len({block[n] for n in names}) > 1:
                raise ConfigError(
                    f"quantization: {', '.join(names)} must all be FP8 or all stay bf16 "
                    "(they stream as one GEMV); list all of them in `ignore`, or none"
                )
