"""Token generation on top of any Decoder (the GPU kernel or the CPU interpreter).

`generate_on` (what GpuModel.generate and Interpreter.generate call) writes the prompt's
cache rows with the prefill program, a chunk of tokens at a time, then runs the prompt's last
token and every new one in one multi-step launch that samples on the GPU. `generate` is
the host loop: one decode step per token (the prompt too), each new token sampled from
the last logits by the rules of runtime.sampling (the kernel's sample task follows the
same ones) and fed back.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch

from tilert_compiler.runtime.decoder import Decoder
from tilert_compiler.runtime.sampling import (
    GREEDY,
    GenerationError,
    RequestTypeError,
    Sampling,
    check_tokens,
    sample_token,
)

__all__ = ["GenerationError", "check_request", "generate", "generate_on"]


def generate_on(
    model: Decoder,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    per_token: bool = False,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_ids: Sequence[int] = (),
    seed: int = 0,
    stream: Callable[[int], None] | None = None,
    keep: int = 0,
) -> list[int]:
    """Generation on the GPU model or the interpreter, from a fresh cache, or with `keep`
    > 0 from the cache rows 0 .. keep - 1 the caller vouches hold prompt_ids[:keep] (an
    earlier request's: runtime.model.Model's prefix reuse), which are not run again. By
    default the prompt but its last token goes through the prefill program
    (`model.prefill`, when the artifact has one), then the rest of the request is one
    multi-step run, sampled by the kernel's sample task (`model.run`); `per_token` runs one
    step per token and samples on the host."""
    if not keep:
        model.reset()
    rules = Sampling(temperature, top_k, top_p, seed)
    stop_ids = check_tokens(stop_ids, model.vocab, "stop_ids", empty=True)
    prompt = check_request(
        prompt_ids, max_new_tokens, max_seq_len=model.max_seq_len, vocab=model.vocab
    )
    if not 0 <= keep < len(prompt):
        raise ValueError(f"keep {keep}: the prompt's last token must run (it has {len(prompt)})")
    if per_token:
        # The prompt takes the same path as in one run (the prefill program's rounding is
        # not a decode step's), so a seed draws the same tokens either way.
        start = keep
        if len(prompt) - keep > 1 and model.prefill_chunk > 1:
            model.prefill(prompt[keep:-1], keep)
            start = len(prompt) - 1
        return generate(
            model.step,
            prompt[start:],
            max_new_tokens,
            max_seq_len=model.max_seq_len,
            vocab=model.vocab,
            rules=rules,
            stop_ids=stop_ids,
            stream=stream,
            start=start,
        )
    if len(prompt) - keep > 1 and model.prefill_chunk > 1:
        model.prefill(prompt[keep:-1], keep)
        pos = len(prompt) - 1
        return model.run(prompt[-1:], pos, max_new_tokens, rules, stop_ids, stream)
    steps = len(prompt) - keep + max_new_tokens - 1
    return model.run(prompt[keep:], keep, steps, rules, stop_ids, stream)


def generate(
    step: Callable[[int, int], torch.Tensor],
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    max_seq_len: int,
    vocab: int,
    rules: Sampling = GREEDY,
    stop_ids: Sequence[int] = (),
    stream: Callable[[int], None] | None = None,
    start: int = 0,
) -> list[int]:
    """New tokens (stop id included, if one ended it). `step(token, pos)` -> logits, one
    step per token, sampled on the host by `rules`; the prompt's first token at cache
    position `start` (the rows before it already written)."""
    prompt = check_request(prompt_ids, max_new_tokens, max_seq_len=max_seq_len - start, vocab=vocab)
    stop_ids = check_tokens(stop_ids, vocab, "stop_ids", empty=True)
    for pos, tok in enumerate(prompt[:-1], start):
        step(tok, pos)
    pos = start + len(prompt) - 1
    logits = step(prompt[-1], pos)
    out: list[int] = []
    while True:
        tok = sample_token(logits, rules, pos)
        out.append(tok)
        if stream is not None:
            stream(tok)
        if tok in stop_ids or len(out) == max_new_tokens:
            return out
        pos += 1
        logits = step(tok, pos)


def check_request(prompt_ids, max_new_tokens: int, *, max_seq_len: int, vocab: int) -> list[int]:
    """The prompt as ints, after checking it and the length against the cache."""
    prompt = check_tokens(prompt_ids, vocab, "the prompt")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral):
        raise RequestTypeError(
            f"max_new_tokens must be an integer (got {type(max_new_tokens).__name__})"
        )
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
    if len(prompt) + max_new_tokens - 1 > max_seq_len:
        raise GenerationError(
            f"{len(prompt)} prompt + {max_new_tokens} new tokens need "
            f"{len(prompt) + max_new_tokens - 1} cache rows; the KV cache holds {max_seq_len} "
            "(recompile with a larger --max-seq-len)"
        )
    return prompt
