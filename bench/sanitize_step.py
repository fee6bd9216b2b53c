"""A few decode steps of a (tiny) artifact, then one multi-step launch, for compute-sanitizer:

compute-sanitizer --tool memcheck python3 bench/sanitize_step.py ART
compute-sanitizer --tool racecheck python3 bench/sanitize_step.py ART
"""

import sys

import torch

from tilert_compiler.models.config import ModelConfig
from tilert_compiler.models.weights import load_weights
from tilert_compiler.runtime.artifact import load_artifact
from tilert_compiler.runtime.gpu import GpuModel
from tilert_compiler.runtime.sampling import Sampling

art = sys.argv[1]
cfg = ModelConfig.from_dict(load_artifact(art).manifest["config"])
m = GpuModel(art, weights=load_weights(cfg))
logits = [m.step(t, p) for p, t in enumerate([3, 1, 4, 1, 5])]
print("steps ok, finite:", bool(torch.isfinite(torch.stack(logits)).all()))
# One multi-step launch: prompt, then tokens drawn by the sample task (top-k and top-p).
m.reset()
drawn = m.run([3, 1, 4], 0, 8, Sampling(temperature=0.8, top_k=20, top_p=0.9, seed=5))
print("multi-step launch ok:", drawn)
