"""One decode step of an artifact, framed for Nsight Compute (the profiler's range only).

    ncu --profile-from-start off --clock-control none --section WarpStateStats \
        --section SourceCounters -o step python bench/ncu_step.py .art/llama-3.2-1b

Fills the KV cache up to `pos` with teacher-forced random tokens (not profiled), then
launches the step at `pos` between cudaProfilerStart and cudaProfilerStop, so ncu
profiles that launch alone. The artifact should be built with nvcc's -lineinfo (the
default): `ncu -i step.ncu-rep --page source --print-source sass --csv` then gives
samples per SASS instruction, which `nvdisasm --print-line-info` of the artifact's
kernel.cubin maps back to lines of its kernel.cu.
"""

from __future__ import annotations

import argparse

import torch

from tilert_compiler.models.config import load_config
from tilert_compiler.models.weights import load_weights
from tilert_compiler.runtime.artifact import load_artifact
from tilert_compiler.runtime.gpu import GpuModel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--pos", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()

    cfg = load_config(load_artifact(a.artifact).manifest["config"])
    m = GpuModel(a.artifact, weights=load_weights(cfg))
    g = torch.Generator().manual_seed(a.seed)
    tokens = torch.randint(0, cfg.vocab, (a.pos + 1,), generator=g).tolist()
    for p in range(a.pos):
        m.launch(tokens[p], p)
    m.check()
    cudart = torch.cuda.cudart()
    cudart.cudaProfilerStart()
    m.launch(tokens[a.pos], a.pos)
    m.check()
    cudart.cudaProfilerStop()
    print(f"profiled the step at pos {a.pos} of {cfg.name}", flush=True)


if __name__ == "__main__":
    main()
