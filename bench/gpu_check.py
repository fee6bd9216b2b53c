"""Parity and step time of a compiled artifact on the GPU, against Hugging Face transformers.

    python bench/gpu_check.py build/llama-3.2-1b --context 128 --steps 32 --out result.json

Teacher-forced: a seeded random prompt of `context` tokens then `steps` more, all through
the kernel one launch per token. The referee is transformers in float32 on the same
weights; transformers' own bf16 run gives the error budget (ours: mean <= 1.5x, every
step <= 3x of bf16's). Argmax must match float32 wherever float32's top two logits are
further apart than 0.01 * max(1, |top1|). Then the cache is filled to `time_pos` and the
step is timed there with CUDA events (median of `iters`).
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch
from measure import copy_bandwidth, provenance, rel_l2, step_ms

from tilert_compiler.models.config import load_config
from tilert_compiler.models.reference import hf_model, reference_logits
from tilert_compiler.models.weights import load_weights
from tilert_compiler.runtime.artifact import load_artifact
from tilert_compiler.runtime.gpu import GpuModel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--time-pos", type=int, default=512)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default=None)
    ap.add_argument("--time-only", action="store_true", help="skip the transformers referee")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    t0 = time.time()
    cfg = load_config(load_artifact(a.artifact).manifest["config"])
    weights = load_weights(cfg)
    print(f"[{time.time() - t0:6.1f}s] weights ready ({cfg.name})", flush=True)
    g = torch.Generator().manual_seed(a.seed)
    n = a.context + a.steps
    tokens = torch.randint(0, cfg.vocab, (n,), generator=g)

    m = GpuModel(a.artifact, weights=weights)
    if a.time_only:
        extra = torch.randint(0, cfg.vocab, (a.time_pos + 1,), generator=g).tolist()
        for pos in range(a.time_pos):
            m.launch(extra[pos], pos)
        m.check()
        ms = step_ms(m, extra, a.time_pos, a.iters, fill=False)
        print(f"TIME {a.artifact}: {ms:.3f} ms at pos {a.time_pos} ({cfg.name})")
        return
    ours = []
    for pos, tok in enumerate(tokens.tolist()):
        logits = m.step(tok, pos)
        if pos >= a.context:
            ours.append(logits)
    ours_t = torch.stack(ours).float().cpu()  # [steps, vocab]
    assert m.epoch == n, "one launch per step"
    print(f"[{time.time() - t0:6.1f}s] kernel ran {n} steps, one launch each", flush=True)

    ms = None
    if a.time_pos < m.max_seq_len:  # fill the cache up to time_pos, then time there
        extra = torch.randint(0, cfg.vocab, (a.time_pos + 1,), generator=g).tolist()
        for pos in range(n, a.time_pos):
            m.launch(extra[pos], pos)
        m.check()
        ms = step_ms(m, extra, a.time_pos, a.iters, fill=False)
        print(f"[{time.time() - t0:6.1f}s] step at pos {a.time_pos}: {ms:.3f} ms", flush=True)
    del m
    gc.collect()
    torch.cuda.empty_cache()

    refs = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = hf_model(cfg, weights, dtype=dtype, device="cuda")
        refs[name] = reference_logits(model, tokens)[a.context :].float().cpu()
        del model
        gc.collect()
        torch.cuda.empty_cache()
        print(f"[{time.time() - t0:6.1f}s] transformers {name} done", flush=True)
    bw = copy_bandwidth()

    f32, b16 = refs["fp32"], refs["bf16"]
    err_ours, err_bf16 = rel_l2(ours_t, f32), rel_l2(b16, f32)
    top2 = f32.topk(2, dim=-1).values
    decisive = (top2[:, 0] - top2[:, 1]) > 0.01 * top2[:, 0].abs().clamp(min=1.0)
    agree = ours_t.argmax(-1) == f32.argmax(-1)
    mismatches = int((decisive & ~agree).sum())
    ratio_mean = float(err_ours.mean() / err_bf16.mean())
    ratio_max = float((err_ours / err_bf16).max())
    ok = ratio_mean <= 1.5 and ratio_max <= 3.0 and mismatches == 0 and not ours_t.isnan().any()
    weight_bytes = sum(t.numel() for t in weights.values()) * 2
    floor_ms = weight_bytes / bw * 1e3
    result = {
        "model": cfg.name,
        **provenance(),
        "context": a.context,
        "steps": a.steps,
        "rel_l2_ours_mean": float(err_ours.mean()),
        "rel_l2_ours_max": float(err_ours.max()),
        "rel_l2_bf16_mean": float(err_bf16.mean()),
        "ratio_mean": ratio_mean,
        "ratio_max_step": ratio_max,
        "decisive_steps": int(decisive.sum()),
        "argmax_mismatches_decisive": mismatches,
        "parity_ok": bool(ok),
        "step_ms": ms,
        "time_pos": a.time_pos,
        "tokens_per_s": 1e3 / ms if ms else None,
        "copy_bw_TBps": bw / 1e12,
        "weight_GB": weight_bytes / 1e9,
        "floor_ms": floor_ms,
        "fraction_of_floor": floor_ms / ms if ms else None,
    }
    print(json.dumps(result, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    step = f"step {ms:.3f} ms at pos {a.time_pos}, floor {floor_ms:.3f} ms ({floor_ms / ms:.0%})"
    print(
        f"RESULT {cfg.name}: parity {'OK' if ok else 'FAIL'} (err {err_ours.mean():.2e} vs bf16 "
        f"{err_bf16.mean():.2e}, ratio {ratio_mean:.2f}, worst step {ratio_max:.2f}, "
        f"argmax mismatches {mismatches}/{int(decisive.sum())}); " + (step if ms else "")
    )


if __name__ == "__main__":
    main()
