"""Token generation on top of any stepper (the GPU kernel or the CPU interpreter).

The prompt is fed one position at a time (prefill runs through the decode step), then
each new token is sampled from the last logits and fed back. Sampling: greedy when
temperature is 0; otherwise temperature, then top-k, then top-p (nucleus), then a draw
from a seeded torch.Generator, so the same seed gives the same tokens. This loop runs on
the host: one launch per token (multi-step launches are issue 5's next step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class GenerationError(ValueError):
    """The request does not fit the artifact (cache length, vocabulary, parameters)."""


def sample(
    logits: torch.Tensor,  # [vocab] float
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> int:
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise GenerationError(
            f"sampling needs temperature >= 0, 0 < top_p <= 1, top_k >= 0 "
            f"(got {temperature}, {top_p}, {top_k})"
        )
    if temperature == 0:
        return int(torch.argmax(logits))
    z = logits.float() / temperature
    if 0 < top_k < z.numel():
        kth = torch.topk(z, top_k).values[-1]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1:
        order = torch.argsort(z, descending=True)
        probs = torch.softmax(z[order], dim=-1)
        # keep the smallest prefix whose mass reaches top_p (always the top token)
        drop = torch.cumsum(probs, dim=-1) - probs >= top_p
        z[order[drop]] = float("-inf")
    probs = torch.softmax(z, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def generate_on(model, prompt_ids: Sequence[int], max_new_tokens: int, **kw) -> list[int]:
    """`generate` on a model with reset(), step(token, pos), max_seq_len and vocab (the GPU
    model or the interpreter), from a fresh cache."""
    model.reset()
    return generate(
        model.step,
        prompt_ids,
        max_new_tokens,
        max_seq_len=model.max_seq_len,
        vocab=model.vocab,
        **kw,
    )


def generate(
    step: Callable[[int, int], torch.Tensor],
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    max_seq_len: int,
    vocab: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_ids: Sequence[int] = (),
    seed: int = 0,
    stream: Callable[[int], None] | None = None,
) -> list[int]:
    """New tokens (stop id included, if one ended it). `step(token, pos)` -> logits."""
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise GenerationError("the prompt needs at least one token")
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise GenerationError(f"prompt token {bad[0]} is outside the vocabulary (0..{vocab - 1})")
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
    if len(prompt) + max_new_tokens - 1 > max_seq_len:
        raise GenerationError(
            f"{len(prompt)} prompt + {max_new_tokens} new tokens need "
            f"{len(prompt) + max_new_tokens - 1} cache rows; the KV cache holds {max_seq_len} "
            "(recompile with a larger --max-seq-len)"
        )
    gen = torch.Generator().manual_seed(seed)
    for pos, tok in enumerate(prompt[:-1]):
        step(tok, pos)
    logits = step(prompt[-1], len(prompt) - 1)
    out: list[int] = []
    while True:
        tok = sample(logits, temperature, top_k, top_p, gen)
        out.append(tok)
        if stream is not None:
            stream(tok)
        if tok in stop_ids or len(out) == max_new_tokens:
            return out
        logits = step(tok, len(prompt) + len(out) - 1)
