"""The error FP8 weights add against the bf16 original (issue 21), with transformers as the
oracle: the same model in float32 twice, once holding the bf16 weights and once with its
linear projections quantized to e4m3 and dequantized as the artifact holds them (one
scale per output channel, as `--quantize fp8`, or `--block 128x128` as the published
block-wise checkpoints; embedding, norms and LM head stay bf16). The kernel and the
interpreter match the second model (tests/test_gpu.py, tests/test_fp8.py), so this is the
error an FP8 build adds to a bf16 build's.

Reports, over `--steps` tokens after a random prompt:
- the mean (and worst) relative L2 of the FP8 logits against the bf16 ones, teacher-forced
  on the bf16 model's own greedy continuation;
- the fraction of those steps whose argmax agrees;
- how many tokens the two models' own greedy continuations share before they part.

    python bench/quant_error.py llama-3.2-1b --steps 128
    python bench/quant_error.py /path/to/Llama-3.2-1B --steps 128   # a checkpoint folder

Runs on the GPU when torch sees one, else on the CPU (1B models: a few minutes). A
bundled description without a checkpoint gets seeded random weights, which say how the
mechanism behaves, not what a trained model loses: trained weights have outlier rows and
columns that per-channel scales handle worse than Gaussian ones.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tilert_compiler.models.config import load_config
from tilert_compiler.models.quant import Quantization, dequantize, quantize
from tilert_compiler.models.reference import hf_model, reference_logits
from tilert_compiler.models.weights import load_weights, random_weights


@torch.no_grad()
def greedy(model, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """prompt + `steps` greedy tokens (transformers' generate, its KV cache)."""
    device = next(model.parameters()).device
    out = model.generate(
        prompt[None].to(device),
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        pad_token_id=0,
    )
    return out[0].cpu()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", help="a bundled name, model.yaml or checkpoint folder")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--block", default=None, help="scale blocks, e.g. 128x128 (default: per row)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    t0 = time.time()
    block = tuple(int(v) for v in a.block.split("x")) if a.block else None
    cfg = load_config(a.model)
    real = cfg.weights.path is not None
    weights = load_weights(cfg) if real else random_weights(cfg, seed=a.seed)
    quant = Quantization(block=block, source="quantize" if block is None else "fp8")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(a.seed)
    prompt = torch.randint(0, cfg.vocab, (a.prompt_len,), generator=gen)
    print(f"[{time.time() - t0:6.1f}s] {cfg.name}: weights ready ({'real' if real else 'random'})")

    # The bf16 original: its greedy continuation, then its logits along it.
    for name in list(weights):
        weights[name] = weights[name].bfloat16().float()
    model = hf_model(cfg, weights, device=device)
    seq = greedy(model, prompt, a.steps)
    ref = reference_logits(model, seq).cpu()
    del model
    print(f"[{time.time() - t0:6.1f}s] bf16: {a.steps} greedy tokens and their logits")

    # FP8: the projections quantized (from the bf16 values, as from a bf16 checkpoint).
    for name in list(weights):
        if quant.quantizes(name):
            weights[name] = dequantize(quantize(weights[name], block))
    model = hf_model(cfg, weights, device=device)
    ours = reference_logits(model, seq).cpu()
    own = greedy(model, prompt, a.steps)
    del model
    print(f"[{time.time() - t0:6.1f}s] FP8: logits along the bf16 tokens, own greedy tokens")

    steps = slice(a.prompt_len - 1, a.prompt_len - 1 + a.steps)  # the steps that drew a token
    rel = ((ours[steps] - ref[steps]).norm(dim=-1) / ref[steps].norm(dim=-1)).double()
    agree = (ours[steps].argmax(-1) == ref[steps].argmax(-1)).double().mean()
    new_ref, new_own = seq[a.prompt_len :], own[a.prompt_len :]
    parted = (new_ref != new_own).nonzero()
    shared = int(parted[0]) if len(parted) else a.steps
    result = {
        "model": cfg.name,
        "weights": "real" if real else f"random (seed {a.seed})",
        "scales": "per output channel" if block is None else f"{block[0]}x{block[1]} blocks",
        "steps": a.steps,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "rel_l2_mean": float(rel.mean()),
        "rel_l2_max": float(rel.max()),
        "argmax_agreement": float(agree),
        "greedy_tokens_shared": shared,
    }
    print(
        f"RESULT {cfg.name} ({result['weights']}, {result['scales']}): logits rel L2 mean "
        f"{result['rel_l2_mean']:.4f} (worst {result['rel_l2_max']:.4f}), argmax agreement "
        f"{agree:.3f} over {a.steps} teacher-forced steps, greedy continuations share "
        f"{shared} of {a.steps} tokens"
    )
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
