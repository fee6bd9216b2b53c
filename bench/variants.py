"""A/B timing of builds of one model (an ablation, or kernel variants), on one card, in one run.

    python bench/variants.py .art/llama-3.2-1b .art/llama-no-l2 --pos 512 --rounds 4

Every artifact must be a build of the same model (the same config, but for max_seq_len). The
weights are drawn once; each build gets its own copy on the GPU. Each build runs the same
teacher-forced tokens up to `pos`; its logits at the last steps are compared with the
first build's (a schedule or streaming change must not change one bit: the same products
in the same order). Then the step at `pos` is timed round-robin, `rounds` times `iters`
launches per build, so drifts of the card's clock or temperature hit every build alike.
Prints the median per round and over all rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from measure import events_median, provenance

from tilert_compiler.models.config import load_config
from tilert_compiler.models.weights import load_weights
from tilert_compiler.runtime.artifact import load_artifact
from tilert_compiler.runtime.gpu import GpuModel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--pos", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--compare", type=int, default=4, help="last steps whose logits must agree")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    t0 = time.time()
    configs = [load_artifact(x).manifest["config"] for x in a.artifacts]

    # The same model: the same config but for the KV cache's capacity (no weight depends
    # on it; a smaller one leaves attention less shared memory to hold, the ring more).
    def model(c: dict) -> dict:
        return {k: v for k, v in c.items() if k != "max_seq_len"}

    if any(model(c) != model(configs[0]) for c in configs):
        raise SystemExit("the artifacts are builds of different models (their configs differ)")
    cfg = load_config(configs[0])
    weights = load_weights(cfg)
    tokens = torch.randint(
        0, cfg.vocab, (a.pos + 1,), generator=torch.Generator().manual_seed(a.seed)
    )
    tokens = tokens.tolist()
    print(f"[{time.time() - t0:6.1f}s] weights ready ({cfg.name})", flush=True)

    models, same = [], {}
    for x in a.artifacts:
        m = GpuModel(x, weights=weights)
        last = []
        for p in range(a.pos):
            if p >= a.pos - a.compare:
                last.append(m.step(tokens[p], p).float().cpu())
            else:
                m.launch(tokens[p], p)
        m.check()
        if models:
            same[x] = all(torch.equal(u, v) for u, v in zip(last, models[0][1], strict=True))
        models.append((m, last))
        print(f"[{time.time() - t0:6.1f}s] {x}: filled to pos {a.pos}", flush=True)

    rounds: dict[str, list[float]] = {x: [] for x in a.artifacts}
    for _ in range(a.rounds):
        for x, (m, _) in zip(a.artifacts, models, strict=True):
            for _ in range(5):
                m.launch(tokens[a.pos], a.pos)
            rounds[x].append(events_median(lambda m=m: m.launch(tokens[a.pos], a.pos), a.iters))
            m.check()
    base = statistics.median(rounds[a.artifacts[0]])
    result = {"model": cfg.name, **provenance(), "pos": a.pos, "builds": {}}
    for x in a.artifacts:
        med = statistics.median(rounds[x])
        agree = "first build" if x == a.artifacts[0] else ("identical" if same[x] else "DIFFER")
        print(
            f"VARIANT {x}: {med:.3f} ms ({med / base:.3f}x of the first) rounds "
            + " ".join(f"{r:.3f}" for r in rounds[x])
            + f"; logits of the last {a.compare} steps vs the first build: {agree}"
        )
        result["builds"][x] = {"ms": med, "rounds": rounds[x], "logits": agree}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
