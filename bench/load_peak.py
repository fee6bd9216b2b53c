"""Host memory of putting a checkpoint's weights onto the GPU (issue 20's memory target).

    python bench/load_peak.py build/qwen3-8b --shard-gb 5 --out peak.json

Writes a Hugging Face style checkpoint of the artifact's model (random bf16 weights,
`--shard-gb` per shard, with model.safetensors.index.json) into --folder, then, in a fresh
child process, loads the artifact onto the GPU with those weights (`runtime.load`, which
streams them a tensor at a time) and reports the child's peak RSS against its RSS after
imports, with the largest shard for the target (largest shard + 1 GB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from tilert_compiler.models.config import load_config
from tilert_compiler.models.weights import hf_weight_names
from tilert_compiler.runtime.artifact import load_artifact

CHILD = """
import sys, time, torch
import tilert_compiler as tc

def status(key):  # bytes, from /proc/self/status
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024

# ru_maxrss would count the parent's pages at the fork (19 GiB in run S12-2): the peak
# (VmHWM) is reset here instead, after the imports
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS")
torch.zeros(1, device="cuda")  # the CUDA context, counted apart
ctx = status("VmHWM")
t0 = time.perf_counter()
m = tc.runtime.load(sys.argv[1], device="cuda", weights=sys.argv[2])
torch.cuda.synchronize()
dt = time.perf_counter() - t0
peak = status("VmHWM")
print(base, ctx, peak, dt)
"""


def write_checkpoint(cfg, folder: Path, shard_bytes: int) -> int:
    """Random bf16 weights in shards of at most `shard_bytes`, one shard in memory at a
    time; the largest shard's bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    groups: list[list] = [[]]
    size = [0]
    for name, shape in hf_weight_names(cfg):
        n = 2 * torch.Size(shape).numel()
        if size[-1] and size[-1] + n > shard_bytes:
            groups.append([])
            size.append(0)
        groups[-1].append((name, shape))
        size[-1] += n
    index = {}
    for k, group in enumerate(groups):
        file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        part = {n: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for n, s in group}
        save_file(part, str(folder / file))
        index.update(dict.fromkeys(part, file))
        del part
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    (folder / "config.json").write_text(json.dumps({"model_type": "stub"}))  # not read
    return max(size)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--shard-gb", type=float, default=5.0)
    ap.add_argument("--folder", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    cfg = load_config(load_artifact(a.artifact).manifest["config"])
    folder = Path(a.folder or tempfile.mkdtemp(prefix="ckpt-"))
    t0 = time.perf_counter()
    largest = write_checkpoint(cfg, folder, int(a.shard_gb * 2**30))
    print(
        f"[{time.perf_counter() - t0:.0f}s] checkpoint in {folder}, largest shard "
        f"{largest / 2**30:.2f} GiB",
        flush=True,
    )
    out = subprocess.run(
        [sys.executable, "-c", CHILD, a.artifact, str(folder)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(out.stderr[-3000:])
    base, ctx, peak, dt = (float(x) for x in out.stdout.split()[-4:])
    r = {
        "model": cfg.name,
        "params": sum(torch.Size(s).numel() for _, s in hf_weight_names(cfg)),
        "largest_shard_GiB": largest / 2**30,
        "rss_after_imports_GiB": base / 2**30,
        "rss_with_cuda_context_GiB": ctx / 2**30,
        "peak_rss_GiB": peak / 2**30,
        "load_s": dt,
        "target_GiB": largest / 2**30 + 1 + ctx / 2**30,
    }
    print(json.dumps(r, indent=1))
    print(
        f"RESULT {cfg.name}: peak RSS {peak / 2**30:.2f} GiB (imports {base / 2**30:.2f}, "
        f"+CUDA context {ctx / 2**30:.2f}); largest shard {largest / 2**30:.2f} GiB; "
        f"loaded in {dt:.1f} s"
    )
    if a.out:
        Path(a.out).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
