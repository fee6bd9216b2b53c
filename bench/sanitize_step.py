"""A few decode steps of a (tiny) artifact, one multi-step launch, then a prefill (full chunks,
as many as the cache holds, and a partial one) and a step after it, for compute-sanitizer:

compute-sanitizer --tool memcheck python3 bench/sanitize_step.py ART
compute-sanitizer --tool racecheck python3 bench/sanitize_step.py ART
"""

import sys

import torch

from tilert_compiler.models.config import load_config
from tilert_compiler.models.weights import load_weights
from tilert_compiler.runtime.artifact import load_artifact
from tilert_compiler.runtime.gpu import GpuModel
from tilert_compiler.runtime.sampling import Sampling

art = sys.argv[1]
cfg = load_config(load_artifact(art).manifest["config"])
m = GpuModel(art, weights=load_weights(cfg))
logits = [m.step(t, p) for p, t in enumerate([3, 1, 4, 1, 5])]
print("steps ok, finite:", bool(torch.isfinite(torch.stack(logits)).all()))
# One multi-step launch: prompt, then tokens drawn by the sample task (top-k and top-p).
m.reset()
drawn = m.run([3, 1, 4], 0, 8, Sampling(temperature=0.8, top_k=20, top_p=0.9, seed=5))
print("multi-step launch ok:", drawn)
# The prefill program (decode steps without one): two full chunks and a partial one, as far
# as the cache allows, then a decode step on its cache.
m.reset()
chunk = m.prefill_chunk
prompt = [(7 * i + 3) % cfg.vocab for i in range(min(2 * chunk + 3, cfg.max_seq_len - 1))]
m.prefill(prompt, 0)
last = m.step(1, len(prompt))
print(
    f"prefill ok ({len(prompt)} tokens, chunks of {chunk}), finite:",
    bool(torch.isfinite(last).all()),
)
