"""Generation on the GPU against Hugging Face generate, and what one launch per request buys.

    python bench/generate.py build/llama-3.2-1b --prompt 64 --new 128 --prefill 512

1. Greedy, `--new` tokens after a seeded random `--prompt`: the prompt through the prefill
   program, then the rest of the request in one multi-step launch (argmax on the GPU),
   against transformers' greedy generate in float32 on the same weights, compared up to
   the first near tie (a step where transformers' top two logits differ by less than
   0.01 * max(1, |top1|)), which bf16 rounding may flip; the check says where it was.
2. The same request one launch per token (argmax on the host): the same tokens, and the
   decode rate of both (tokens after the first, over the time between the first and the
   last token's arrival on the host); then the one-launch rate when the kernel samples
   (temperature 0.8; then with top-k 50 and top-p 0.9).
3. Prefill of `--prefill` tokens: ours through the prefill program (median of 5), and
   through decode steps in one launch (the path without it); transformers (bf16, eager)
   runs one forward over the whole prompt (median of 10).
`--rates-only` stops after 1 and 2's one-launch rates (greedy, then sampled, in the same
run: issue 20's sampled / greedy ratio), weights streamed, no transformers.
Writes JSON with card, date and commit when --out is given.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch
from measure import provenance, rel_l2

from tilert_compiler.models.config import load_config
from tilert_compiler.models.reference import hf_model
from tilert_compiler.models.weights import load_weights, stream_weights
from tilert_compiler.runtime.artifact import load_artifact
from tilert_compiler.runtime.gpu import GpuModel
from tilert_compiler.runtime.sampling import Sampling


def timed_generate(m: GpuModel, prompt: list[int], new: int, per_token: bool, **sampling):
    """Tokens, and host arrival times of each (perf_counter seconds)."""
    stamps: list[float] = []
    toks = m.generate(
        prompt,
        new,
        per_token=per_token,
        stream=lambda t: stamps.append(time.perf_counter()),
        **sampling,
    )
    return toks, stamps


def decode_rate(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--out", default=None)
    ap.add_argument("--rates-only", action="store_true", help="greedy and sampled rates only")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = load_config(load_artifact(a.artifact).manifest["config"])
    weights = stream_weights(cfg) if a.rates_only else load_weights(cfg)
    g = torch.Generator().manual_seed(a.seed)
    prompt = torch.randint(0, cfg.vocab, (a.prompt,), generator=g).tolist()
    m = GpuModel(a.artifact, weights=weights)

    timed_generate(m, prompt, 8, False)  # warm-up: module load, first launch
    ours, st_one = timed_generate(m, prompt, a.new, per_token=False)
    ours_pt, st_pt = timed_generate(m, prompt, a.new, per_token=True)
    rate_one, rate_pt = decode_rate(st_one), decode_rate(st_pt)
    print(f"one launch: {rate_one:.1f} tok/s; one launch per token: {rate_pt:.1f} tok/s")
    # Sampled decoding in one launch: the sample task merges the LM head's candidates.
    rates_sampled = {}
    for name, kw in (
        ("temperature", dict(temperature=0.8, seed=a.seed)),
        ("temperature+top_k+top_p", dict(temperature=0.8, top_k=50, top_p=0.9, seed=a.seed)),
    ):
        _, st = timed_generate(m, prompt, a.new, per_token=False, **kw)
        rates_sampled[name] = decode_rate(st)
    print(f"one launch, sampled: {rates_sampled}")
    if a.rates_only:
        ratios = {k: v / rate_one for k, v in rates_sampled.items()}
        result = {
            "model": cfg.name,
            **provenance(),
            "prompt": a.prompt,
            "new_tokens": a.new,
            "tok_s_one_launch": rate_one,
            "tok_s_one_launch_sampled": rates_sampled,
            "sampled_over_greedy": ratios,
        }
        if a.out:
            with open(a.out, "w") as f:
                json.dump(result, f, indent=1)
        print(
            f"RESULT {cfg.name}: {a.new} new tokens in one launch, greedy {rate_one:.0f} tok/s; "
            + ", ".join(f"{k} {rates_sampled[k]:.0f} ({ratios[k]:.3f}x)" for k in ratios)
        )
        return

    long_prompt = torch.randint(0, cfg.vocab, (a.prefill,), generator=g).tolist()
    m.reset()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    m.run(long_prompt, 0, a.prefill, Sampling())
    steps_prefill_ms = (time.perf_counter() - t0) * 1e3
    times = []
    for _ in range(6):  # the first is a warm-up
        m.reset()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        m.prefill(long_prompt, 0)  # synchronises
        times.append((time.perf_counter() - t0) * 1e3)
    ours_prefill_ms = sorted(times[1:])[2]
    # Parity of the prefill program: its cache, then one decode step on the last token,
    # against transformers' forward over the whole prompt (below).
    m.reset()
    m.prefill(long_prompt[:-1], 0)
    ours_last = m.step(long_prompt[-1], a.prefill - 1).float().cpu()
    print(
        f"prefill {a.prefill}: {ours_prefill_ms:.1f} ms (chunks of {m.prefill_chunk} tokens), "
        f"{steps_prefill_ms:.1f} ms as decode steps"
    )
    chunk = m.prefill_chunk
    del m
    gc.collect()
    torch.cuda.empty_cache()

    model = hf_model(cfg, weights, dtype=torch.float32, device="cuda")
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt], device="cuda"),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device="cuda"),
            max_new_tokens=a.new,
            min_new_tokens=a.new,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    ref = out.sequences[0, len(prompt) :].tolist()
    with torch.no_grad():
        ref_last = model(torch.tensor([long_prompt], device="cuda")).logits[0, -1].float().cpu()
    near_tie = None
    for i, lg in enumerate(out.logits):
        top2 = lg[0].float().topk(2).values
        if top2[0] - top2[1] < 0.01 * max(1.0, abs(float(top2[0]))):
            near_tie = i
            break
    upto = a.new if near_tie is None else near_tie
    first_diff = next((i for i in range(a.new) if ours[i] != ref[i]), None)
    identical = ours[:upto] == ref[:upto]
    del model
    gc.collect()
    torch.cuda.empty_cache()

    model = hf_model(cfg, weights, dtype=torch.bfloat16, device="cuda")
    ids = torch.tensor([long_prompt], device="cuda")
    with torch.no_grad():
        for _ in range(3):
            model(ids)
        times = []
        for _ in range(10):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(ids)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
        bf16_last = model(ids).logits[0, -1].float().cpu()
    hf_prefill_ms = sorted(times)[len(times) // 2]
    err_ours, err_bf16 = float(rel_l2(ours_last, ref_last)), float(rel_l2(bf16_last, ref_last))

    result = {
        "model": cfg.name,
        **provenance(),
        "prompt": a.prompt,
        "new_tokens": a.new,
        "greedy_identical_up_to_near_tie": identical,
        "first_near_tie_step": near_tie,
        "first_difference_step": first_diff,
        "per_token_same_tokens": ours_pt == ours,
        "tok_s_one_launch": rate_one,
        "tok_s_per_token_launch": rate_pt,
        "tok_s_one_launch_sampled": rates_sampled,
        "prefill_tokens": a.prefill,
        "prefill_chunk": chunk,
        "prefill_ms_ours": ours_prefill_ms,
        "prefill_ms_ours_decode_steps_one_launch": steps_prefill_ms,
        "prefill_ms_hf_bf16_forward": hf_prefill_ms,
        # last-position logits after the prompt, relative L2 against transformers float32
        "prefill_rel_err_ours": err_ours,
        "prefill_rel_err_hf_bf16": err_bf16,
        "prefill_argmax_equal": int(ours_last.argmax()) == int(ref_last.argmax()),
    }
    print(json.dumps(result, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    print(
        f"RESULT {cfg.name}: greedy {a.new} tokens "
        f"{'identical' if identical else 'DIFFERENT'} to transformers up to "
        f"{'the end' if near_tie is None else f'the near tie at step {near_tie}'} "
        f"(first difference: {first_diff}); one launch {rate_one:.0f} tok/s vs one launch per "
        f"token {rate_pt:.0f} tok/s ({rate_one / rate_pt:.2f}x); prefill {a.prefill}: ours "
        f"{ours_prefill_ms:.1f} ms (chunks of {chunk} tokens; {steps_prefill_ms:.1f} ms as "
        f"decode steps), transformers bf16 {hf_prefill_ms:.1f} ms; logits after it: error "
        f"{err_ours:.2e} vs transformers bf16's {err_bf16:.2e} (ratio {err_ours / err_bf16:.2f}); "
        "sampled in one launch: "
        + ", ".join(f"{k} {v:.0f} tok/s" for k, v in rates_sampled.items())
    )


if __name__ == "__main__":
    main()
