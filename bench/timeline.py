"""Measured timeline of one decode step, from an artifact compiled with profile=True.

    python bench/timeline.py build/llama-3.2-1b-prof --plain build/llama-3.2-1b --out DIR

Writes DIR/trace.json (open in ui.perfetto.dev), DIR/timeline.png (per-SM Gantt of
measured times) and prints the summary, the cost model's predicted step against the
measured one, and the profiling overhead (the plain build timed in the same run).
`--layer L` prints that layer's chain too (each op's medians: inputs loaded, work done,
end; default the middle layer). Without a GPU, `--stamps DIR` reads the stamps.npy and
sm_of.npy an earlier run saved and prints the same summary and chain:

    python bench/timeline.py build/llama-3.2-1b-prof --stamps DIR --layer 8
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from measure import step_ms

from tilert_compiler.models.config import load_config
from tilert_compiler.models.weights import load_weights
from tilert_compiler.runtime.artifact import load_artifact
from tilert_compiler.runtime.gpu import GpuModel
from tilert_compiler.runtime.trace import timeline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--plain", help="the same model compiled without profile, for overhead")
    ap.add_argument("--pos", type=int, default=512)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", default=".")
    ap.add_argument("--layer", type=int, help="print this layer's chain (default: the middle one)")
    ap.add_argument("--stamps", help="no run: the stamps.npy and sm_of.npy saved in this folder")
    a = ap.parse_args()
    art = load_artifact(a.artifact)
    cfg = load_config(art.manifest["config"])
    layer = cfg.layers // 2 if a.layer is None else a.layer
    if a.stamps:
        stamps = np.load(os.path.join(a.stamps, "stamps.npy"))
        sm_of = np.load(os.path.join(a.stamps, "sm_of.npy")).tolist()
        tl = timeline(stamps, sm_of, art.table)
        print(tl.summary())
        print(tl.layer_chain(layer))
        return
    weights = load_weights(cfg)
    toks = torch.randint(0, cfg.vocab, (a.pos + 1,)).tolist()
    m = GpuModel(a.artifact, weights=weights)
    ms = step_ms(m, toks, a.pos, a.iters)
    stamps, sm_of = m.timeline()  # the last launch
    del m
    tl = timeline(stamps, sm_of, art.table)
    os.makedirs(a.out, exist_ok=True)
    tl.write_trace(os.path.join(a.out, "trace.json"))
    np.save(os.path.join(a.out, "stamps.npy"), stamps)  # raw, for analyses beyond the summary
    np.save(os.path.join(a.out, "sm_of.npy"), np.array(sm_of))
    tl.write_gantt(
        os.path.join(a.out, "timeline.png"),
        f"{cfg.name}: measured step at pos {a.pos} on {torch.cuda.get_device_name()}",
    )
    print(tl.summary())
    print(tl.layer_chain(layer))
    pred = art.manifest.get("predicted_step_us")
    print(
        f"{cfg.name}: profiled build {ms:.3f} ms/step; measured span {tl.span_us:.1f} us; "
        f"cost model predicted {pred:.1f} us"
        if pred
        else ""
    )
    if a.plain:
        plain = GpuModel(a.plain, weights=weights)
        ms_plain = step_ms(plain, toks, a.pos, a.iters)
        print(f"profiling overhead: {ms:.3f} vs {ms_plain:.3f} ms ({ms / ms_plain - 1:+.1%})")


if __name__ == "__main__":
    main()
