"""The prefill program on the GPU: parity and time against transformers, one model per call.

    python bench/prefill.py ART --prompts 1,7,64,512 --time 512 --request 1000,200 --out r.json
    python bench/prefill.py ART-FP8 --against ART-BF16 --time 512,4096 --out r.json

1. Parity: for each prompt length L, a seeded random prompt goes through the prefill
   program (all but its last token), then the last prompt token and `steps` more go
   through decode steps (teacher-forced). Their logits (the last prompt position and the
   steps after it) are judged against transformers float32 on the same weights by the
   decode rule: mean relative L2 <= 1.5x transformers-bf16's, no step above 3x, argmax
   equal wherever float32's top two differ by more than 0.01 * max(1, |top1|).
2. Time (CUDA events, median): our prefill of `time` tokens, its GEMMs alone (their
   TFLOP/s), against one transformers bf16 forward of the same tokens and the card's
   dense bf16 peak (a torch.matmul of 8192^3), all in this run.
3. A whole request: `generate` with a P-token prompt and N greedy new tokens against
   transformers `generate` with a static cache, wall time of each.
4. `--against ART2`: another build of the same model (an FP8 build's bf16 one, say), its
   prefill and GEMMs timed on the same prompts in the same run; ours / its.

An FP8 build (issue 21) is judged against transformers on its dequantized weights (the
values its arena holds: runtime.arena.held_values).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch
from measure import events_median, provenance, rel_l2

from tilert_compiler.models.config import load_config
from tilert_compiler.models.reference import hf_model
from tilert_compiler.models.weights import load_weights
from tilert_compiler.runtime.arena import held_values
from tilert_compiler.runtime.artifact import load_artifact
from tilert_compiler.runtime.gpu import GpuModel


def gemm_flops(spec: dict, n: int) -> float:
    """FLOPs of the GEMM launches for n prompt tokens (2 M N K each; gate/up twice N)."""
    total = 0.0
    for la in spec["launches"]:
        k = spec["kernels"][la["kernel"]]
        st = k["statics"]
        if k["kind"] == "gemm":
            total += 2 * n * st["N"] * st["K"]
        elif k["kind"] == "gemm_silu":
            total += 2 * n * 2 * st["N"] * st["K"]
    return total


def peak_tflops() -> float:
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ b
    ms = events_median(lambda: a @ b, 20)
    return 2 * 8192**3 / (ms / 1e3) / 1e12


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def against(a, weights: dict, timed: dict, res: dict, say) -> None:
    """The prefill of a.against (another build of the model) on the same prompts: its
    time and its GEMMs' beside ours, and ours / its."""
    other = GpuModel(a.against, weights=weights)
    if other._tiles is None:
        raise SystemExit(f"{a.against}: no prefill program to time against")
    res["against"] = {"artifact": a.against, "fp8": other.art.fp8}
    t = other._tiles
    for T, toks in timed.items():
        other.reset()
        other.prefill(toks, 0)  # warm-up
        ms = events_median(lambda toks=toks, t=t: t.run(toks, 0), a.iters)
        gemm_ms = events_median(
            lambda toks=toks, t=t: t.run(toks, 0, only=("gemm", "gemm_silu")), a.iters
        )
        r = res["prefill"][T]
        r |= {"against_ms": ms, "against_gemm_ms": gemm_ms, "vs_against": r["ours_ms"] / ms}
        r["gemm_vs_against"] = r["gemm_ms"] / gemm_ms
        say(
            f"against {a.against}: prefill {T} tokens {ms:.2f} ms (GEMMs {gemm_ms:.2f}); "
            f"ours / its {r['vs_against']:.3f} (GEMMs {r['gemm_vs_against']:.3f})"
        )
    del other, t
    gc.collect()
    torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--prompts", default="1,7,64,512")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--time", default="512", help="prompt lengths to time, comma-separated")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--request", default="", help="P,N: a generate call of P + N tokens")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument(
        "--against", default=None, help="another build of the model: its prefill timed too"
    )
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    t0 = time.time()

    def say(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

    art = load_artifact(a.artifact)
    cfg = load_config(art.manifest["config"])
    weights = load_weights(cfg)
    g = torch.Generator().manual_seed(a.seed)
    prompts = [int(x) for x in a.prompts.split(",") if x]
    seqs = {L: torch.randint(0, cfg.vocab, (L + a.steps,), generator=g) for L in prompts}
    m = GpuModel(a.artifact, weights=weights)
    tiles = m._tiles
    spec = tiles.spec if tiles is not None else None
    say(f"loaded {cfg.name}; prefill chunk {m.prefill_chunk}")

    ours = {}
    for L, seq in seqs.items():
        m.reset()
        toks = seq.tolist()
        if L > 1:
            m.prefill(toks[: L - 1], 0)
        ours[L] = torch.stack([m.step(toks[p], p) for p in range(L - 1, L + a.steps)]).cpu()
        say(f"ours: prompt {L}")

    res: dict = {"model": cfg.name, **provenance(), "chunk": m.prefill_chunk, "prefill": {}}
    res["fp8"] = art.fp8
    timed = {T: torch.randint(0, cfg.vocab, (T,), generator=g).tolist() for T in _ints(a.time)}
    for T, toks in timed.items():
        m.reset()
        m.prefill(toks, 0)  # warm-up
        ms = events_median(lambda toks=toks: tiles.run(toks, 0), a.iters)
        gemm_ms = events_median(
            lambda toks=toks: tiles.run(toks, 0, only=("gemm", "gemm_silu")), a.iters
        )
        fl = gemm_flops(spec, T)
        res["prefill"][T] = {"ours_ms": ms, "gemm_ms": gemm_ms, "gemm_tflops": fl / gemm_ms / 1e9}
        kinds = sorted({k["kind"] for k in spec["kernels"].values()})
        res["prefill"][T]["by_kind_ms"] = {
            kind: events_median(
                lambda toks=toks, kind=kind: tiles.run(toks, 0, only=(kind,)), a.iters
            )
            for kind in kinds
        }
        say(f"ours: by kind {res['prefill'][T]['by_kind_ms']}")
        say(
            f"ours: prefill {T} tokens {ms:.2f} ms; GEMMs alone {gemm_ms:.2f} ms "
            f"({fl / gemm_ms / 1e9:.0f} TFLOP/s)"
        )
    req = None
    if a.request:
        P, N = (int(x) for x in a.request.split(","))
        prompt = torch.randint(0, cfg.vocab, (P,), generator=g).tolist()
        m.generate(prompt, 8)  # warm-up
        walls = []
        for _ in range(3):
            torch.cuda.synchronize()
            s = time.perf_counter()
            out = m.generate(prompt, N, stop_ids=())
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - s)
        req = {"prompt": P, "new": N, "ours_s": statistics.median(walls), "ours_tokens": out}
        say(f"ours: generate {P}+{N}: {req['ours_s']:.3f} s")
    del m
    gc.collect()
    torch.cuda.empty_cache()
    if a.against:
        against(a, weights, timed, res, say)
    held_values(art.manifest, weights)  # an FP8 build's values, for transformers

    # transformers bf16: forward time, generate with a static cache, parity reference
    model = hf_model(cfg, weights, dtype=torch.bfloat16, device="cuda")
    refs_b = {}
    with torch.no_grad():
        for L, seq in seqs.items():
            refs_b[L] = model(seq[None].cuda()).logits[0, L - 1 :].float().cpu()
        for T in res["prefill"]:
            x = torch.randint(0, cfg.vocab, (1, T), generator=g).cuda()
            model(x)
            hf_ms = events_median(lambda x=x: model(x), a.iters)
            r = res["prefill"][T]
            r["hf_forward_ms"] = hf_ms
            r["ratio"] = r["ours_ms"] / hf_ms
            say(f"transformers bf16 forward {T}: {hf_ms:.2f} ms; ours/theirs {r['ratio']:.3f}")
    if req is not None:
        x = torch.tensor([prompt], device="cuda")
        kw = dict(
            max_new_tokens=N,
            min_new_tokens=N,
            do_sample=False,
            cache_implementation="static",
            pad_token_id=0,
        )
        model.generate(x, **kw)  # compiles
        walls = []
        for _ in range(2):
            torch.cuda.synchronize()
            s = time.perf_counter()
            hf_out = model.generate(x, **kw)
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - s)
        req["hf_s"] = min(walls)
        req["ratio"] = req["ours_s"] / req["hf_s"]
        hf_toks = hf_out[0, P:].tolist()
        same = next(
            (i for i, (p, q) in enumerate(zip(out, hf_toks, strict=False)) if p != q), len(out)
        )
        req["same_prefix"] = same
        del req["ours_tokens"]
        say(
            f"request {P}+{N}: ours {req['ours_s']:.3f} s, transformers generate static "
            f"{req['hf_s']:.3f} s, ratio {req['ratio']:.3f}; same greedy tokens for {same}"
        )
        res["request"] = req
    del model
    gc.collect()
    torch.cuda.empty_cache()
    model = hf_model(cfg, weights, dtype=torch.float32, device="cuda")
    res["parity"] = {}
    ok_all = True
    with torch.no_grad():
        for L, seq in seqs.items():
            f32 = model(seq[None].cuda()).logits[0, L - 1 :].float().cpu()
            e_o, e_b = rel_l2(ours[L], f32), rel_l2(refs_b[L], f32)
            top2 = f32.topk(2, dim=-1).values
            decisive = (top2[:, 0] - top2[:, 1]) > 0.01 * top2[:, 0].abs().clamp(min=1.0)
            mism = int((decisive & (ours[L].argmax(-1) != f32.argmax(-1))).sum())
            rm, rx = float(e_o.mean() / e_b.mean()), float((e_o / e_b).max())
            ok = rm <= 1.5 and rx <= 3.0 and mism == 0 and not ours[L].isnan().any()
            ok_all &= ok
            res["parity"][L] = {
                "err_ours": float(e_o.mean()),
                "err_bf16": float(e_b.mean()),
                "ratio_mean": rm,
                "ratio_max": rx,
                "mismatches": mism,
                "ok": ok,
            }
            say(
                f"parity prompt {L}: {'OK' if ok else 'FAIL'} err {e_o.mean():.2e} vs bf16 "
                f"{e_b.mean():.2e} (ratio {rm:.2f}, worst {rx:.2f}, argmax mismatches {mism})"
            )
    res["parity_ok"] = ok_all
    res["peak_tflops"] = peak_tflops()
    say(f"peak bf16 matmul 8192^3: {res['peak_tflops']:.0f} TFLOP/s")
    for r in res["prefill"].values():
        r["gemm_of_peak"] = r["gemm_tflops"] / res["peak_tflops"]
    print("RESULT " + json.dumps(res))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
