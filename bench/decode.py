"""Batch-1 decode speed of a compiled artifact against the two baselines, one card, one run.

    python bench/decode.py build/llama-3.2-1b --context 512 --out bench/results/x.json

An FP8 artifact (`tilert-compile MODEL --quantize fp8`) is timed the same way; its floor
counts the bytes it stores (the baselines stay bf16).

Times, in this order and on the same card: the copy bandwidth (the floor's denominator),
our persistent kernel at `context`, Hugging Face generate with a static cache (which
transformers compiles), and a plain-PyTorch static-cache decode step (fused QKV and
gate/up weights, GQA over the cache) under torch.compile replayed as a CUDA graph.
Prints ms, tokens/s, fraction of the floor and the ratios; writes JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch
import torch.nn.functional as F
from measure import copy_bandwidth, events_median, provenance, step_ms

from tilert_compiler.models.config import load_config
from tilert_compiler.models.reference import hf_model
from tilert_compiler.models.rope import rope_inv_freq
from tilert_compiler.models.schema import ModelConfig
from tilert_compiler.models.weights import load_weights
from tilert_compiler.runtime.artifact import load_artifact, tensor_elements
from tilert_compiler.runtime.gpu import GpuModel


class StaticDecoder(torch.nn.Module):
    """What a PyTorch user writes for fast decode: stacked weights, a static KV cache."""

    def __init__(
        self, cfg: ModelConfig, w: dict, max_seq: int, dtype=torch.bfloat16, device="cuda"
    ):
        super().__init__()
        bf = dict(dtype=dtype, device=device)
        self.cfg, self.S = cfg, max_seq
        L = [f"model.layers.{i}." for i in range(cfg.layers)]
        self.embed = w["model.embed_tokens.weight"].to(**bf)
        self.lm = self.embed if cfg.tie_embeddings else w["lm_head.weight"].to(**bf)
        self.norm = w["model.norm.weight"].to(**bf)
        a = "self_attn."
        self.wqkv = [torch.cat([w[p + a + f"{n}_proj.weight"] for n in "qkv"]).to(**bf) for p in L]
        self.wo = [w[p + a + "o_proj.weight"].to(**bf) for p in L]
        self.wgu = [
            torch.cat([w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]]).to(**bf)
            for p in L
        ]
        self.wd = [w[p + "mlp.down_proj.weight"].to(**bf) for p in L]
        self.ln1 = [w[p + "input_layernorm.weight"].to(**bf) for p in L]
        self.ln2 = [w[p + "post_attention_layernorm.weight"].to(**bf) for p in L]
        if cfg.qk_norm:
            self.qn = [w[p + a + "q_norm.weight"].to(**bf) for p in L]
            self.kn = [w[p + a + "k_norm.weight"].to(**bf) for p in L]
        shape = (cfg.layers, 1, cfg.kv_heads, max_seq, cfg.head_dim)
        self.kc = torch.zeros(shape, **bf)
        self.vc = torch.zeros(shape, **bf)
        self.inv_freq = rope_inv_freq(cfg).to(device)

    def rms(self, x, g):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps)).to(
            x.dtype
        ) * g

    def rope(self, x, pos):  # x [1, heads, 1, hd]
        ang = pos.float() * self.inv_freq
        cos, sin = torch.cat([ang.cos()] * 2).to(x.dtype), torch.cat([ang.sin()] * 2).to(x.dtype)
        h = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin

    def forward(self, token, pos):  # token, pos: [1] int64 on the GPU
        c = self.cfg
        hd, H, KV = c.head_dim, c.heads, c.kv_heads
        x = self.embed[token]  # [1, D]
        mask = (torch.arange(self.S, device=pos.device) <= pos).view(1, 1, 1, -1)  # [1,1,1,S]
        for i in range(c.layers):
            qkv = self.rms(x, self.ln1[i]) @ self.wqkv[i].T
            q, k, v = qkv.split([H * hd, KV * hd, KV * hd], -1)
            q = q.view(1, H, 1, hd)
            k = k.view(1, KV, 1, hd)
            v = v.view(1, KV, 1, hd)
            if c.qk_norm:
                q, k = self.rms(q, self.qn[i]), self.rms(k, self.kn[i])
            q, k = self.rope(q, pos), self.rope(k, pos)
            self.kc[i].index_copy_(2, pos, k)
            self.vc[i].index_copy_(2, pos, v)
            o = F.scaled_dot_product_attention(
                q, self.kc[i], self.vc[i], attn_mask=mask, enable_gqa=True
            )
            x = x + o.reshape(1, H * hd) @ self.wo[i].T
            gu = self.rms(x, self.ln2[i]) @ self.wgu[i].T
            g, u = gu.chunk(2, -1)
            x = x + (F.silu(g) * u) @ self.wd[i].T
        return (self.rms(x, self.norm) @ self.lm.T).float()


def time_ours(artifact, weights, vocab: int, context: int, iters: int) -> float:
    m = GpuModel(artifact, weights=weights)
    return step_ms(m, torch.randint(0, vocab, (context + 1,)).tolist(), context, iters)


def time_hf_generate(cfg, weights, context: int, new_tokens: int = 96) -> float:
    """Median gap between consecutive tokens of one greedy generate() call with a static
    cache (transformers compiles the decode step), after a warm-up call of the same shape."""
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self):
            self.t: list[float] = []

        def put(self, value):
            torch.cuda.synchronize()
            self.t.append(time.perf_counter())

        def end(self):
            pass

    model = hf_model(cfg, weights, dtype=torch.bfloat16, device="cuda")
    prompt = torch.randint(0, cfg.vocab, (1, context), device="cuda")
    kw = dict(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        cache_implementation="static",
    )
    model.generate(prompt, **kw)  # compiles
    st = Stamps()
    model.generate(prompt, streamer=st, **kw)
    gaps = [b - a for a, b in zip(st.t[2:], st.t[3:], strict=False)]  # skip prompt + 1st token
    return statistics.median(gaps) * 1e3


def time_torch_step(cfg, weights, context: int, iters: int) -> float:
    dec = StaticDecoder(cfg, weights, max_seq=context + 64)
    step = torch.compile(dec, mode="reduce-overhead", fullgraph=True)
    tok = torch.zeros(1, dtype=torch.long, device="cuda")
    pos = torch.full((1,), context, dtype=torch.long, device="cuda")
    with torch.no_grad():
        for _ in range(5):
            step(tok, pos)
        ms = events_median(lambda: step(tok, pos), iters)
    return ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--only", choices=["torch", "hf"], help="run just one baseline")
    a = ap.parse_args()
    art = load_artifact(a.artifact)
    cfg = load_config(art.manifest["config"])
    weights = load_weights(cfg)
    # The floor's bytes: every weight tensor as the artifact stores it (FP8 projections:
    # e4m3 bytes and the scales of each row; bf16 elsewhere). The baselines run bf16.
    weight_bytes = 2 * sum(
        tensor_elements(t) for t in art.manifest["tensors"] if t["arena"] == "weights"
    )
    bw = copy_bandwidth()
    floor = weight_bytes / bw * 1e3
    ours = time_ours(a.artifact, weights, cfg.vocab, a.context, a.iters)
    res = {
        "model": cfg.name,
        **provenance(),
        "context": a.context,
        "copy_bw_TBps": bw / 1e12,
        "weights": "fp8" if art.fp8 else "bf16",
        "weight_GB": weight_bytes / 1e9,
        "floor_ms": floor,
        "ours_ms": ours,
        "tokens_per_s": 1e3 / ours,
        "fraction_of_floor": floor / ours,
    }
    print(
        f"{cfg.name} ({res['weights']}): ours {ours:.3f} ms ({1e3 / ours:.0f} tok/s), "
        f"floor {floor:.3f} ms "
        f"({floor / ours:.0%})",
        flush=True,
    )
    if not a.skip_baselines:
        gc.collect()
        torch.cuda.empty_cache()
        if a.only != "hf":
            res["torch_compiled_graph_ms"] = time_torch_step(cfg, weights, a.context, a.iters)
            res["speedup_vs_torch_graph"] = res["torch_compiled_graph_ms"] / ours
            print(
                f"plain PyTorch compiled step: {res['torch_compiled_graph_ms']:.3f} ms "
                f"(ours {res['speedup_vs_torch_graph']:.2f}x faster)",
                flush=True,
            )
            gc.collect()
            torch.cuda.empty_cache()
        if a.only != "torch":
            res["hf_generate_static_ms"] = time_hf_generate(cfg, weights, a.context)
            res["speedup_vs_hf_generate"] = res["hf_generate_static_ms"] / ours
            print(
                f"HF generate static cache: {res['hf_generate_static_ms']:.3f} ms "
                f"(ours {res['speedup_vs_hf_generate']:.2f}x faster)",
                flush=True,
            )
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
