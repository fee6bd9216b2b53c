"""Measured timeline of one decode step from an artifact compiled with profile=True.

    python bench/timeline.py build/llama-3.2-1b-prof --pos 512 --trace trace.json

Prints, per task kind and per op of one layer: tasks, mean run time, mean dependency
wait, and the step's span; writes a Chrome/Perfetto trace (one track per SM).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict

import torch

from tilert_compiler.models.config import ModelConfig
from tilert_compiler.models.weights import load_weights
from tilert_compiler.runtime.artifact import load_artifact
from tilert_compiler.runtime.gpu import GpuModel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--pos", type=int, default=512)
    ap.add_argument("--trace", default=None)
    ap.add_argument("--iters", type=int, default=50)
    a = ap.parse_args()
    art = load_artifact(a.artifact)
    cfg = ModelConfig.from_dict(art.manifest["config"])
    m = GpuModel(a.artifact, weights=load_weights(cfg))
    toks = torch.randint(0, cfg.vocab, (a.pos + 1,)).tolist()
    for pos in range(a.pos):
        m.launch(toks[pos], pos)
    m.check()
    times = []
    for _ in range(a.iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        m.launch(toks[a.pos], a.pos)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    m.check()
    prof, sm_of = m.timeline()  # the last launch's timestamps
    t0 = prof[:, 0].min()
    prof = (prof - t0) / 1e3  # us from the step's first task
    rec = art.table.records
    kinds = [art.table.variants[int(k)].kind for k in rec[:, 0]]
    layers = [int(x) for x in rec[:, 1]]
    print(
        f"{cfg.name}: step {statistics.median(times):.3f} ms (median of {a.iters}, profiled "
        f"build), span of the profiled step {prof[:, 2].max():.1f} us"
    )
    by_kind: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for i, k in enumerate(kinds):
        by_kind[k].append((prof[i, 2] - prof[i, 1], prof[i, 1] - prof[i, 0]))
    print(f"{'kind':<18}{'tasks':>7}{'run us':>10}{'wait us':>10}{'run max':>10}")
    for k, v in by_kind.items():
        run = [x for x, _ in v]
        wait = [y for _, y in v]
        print(
            f"{k:<18}{len(v):>7}{statistics.mean(run):>10.2f}{statistics.mean(wait):>10.2f}"
            f"{max(run):>10.2f}"
        )
    mid = cfg.layers // 2
    print(f"layer {mid}: per kind, first start .. last end (us)")
    for k in ("norm_linear", "attention_decode", "linear_residual", "gate_up_silu"):
        idx = [i for i in range(len(kinds)) if layers[i] == mid and kinds[i] == k]
        if idx:
            print(
                f"  {k:<18} {prof[idx, 1].min():8.1f} .. {prof[idx, 2].max():8.1f}"
                f"  ({len(idx)} tasks)"
            )
    lay_span = []
    for layer in range(cfg.layers):
        idx = [i for i in range(len(kinds)) if layers[i] == layer]
        lay_span.append(prof[idx, 2].max())
    gaps = [b - a_ for a_, b in zip(lay_span, lay_span[1:], strict=False)]
    print(f"per-layer advance: median {statistics.median(gaps):.2f} us")
    if a.trace:
        events = []
        for i in range(len(kinds)):
            sm = sm_of[i]
            if prof[i, 1] > prof[i, 0]:
                events.append(
                    {
                        "name": "wait",
                        "ph": "X",
                        "pid": 0,
                        "tid": sm,
                        "ts": float(prof[i, 0]),
                        "dur": float(prof[i, 1] - prof[i, 0]),
                    }
                )
            events.append(
                {
                    "name": f"{kinds[i]} L{layers[i]}",
                    "ph": "X",
                    "pid": 0,
                    "tid": sm,
                    "ts": float(prof[i, 1]),
                    "dur": float(prof[i, 2] - prof[i, 1]),
                    "args": {"task": i},
                }
            )
        with open(a.trace, "w") as f:
            json.dump({"traceEvents": events, "displayTimeUnit": "ns"}, f)


if __name__ == "__main__":
    main()
