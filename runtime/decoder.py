"""`Decoder`: what a loaded artifact offers at run time, whichever runs it. GpuModel (the
kernel on the GPU, runtime/gpu.py) and Interpreter (the same task table on the CPU,
runtime/interpreter.py) both are one; runtime/generate.py and tilert-run are written
against this surface only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from tilert_compiler.runtime.sampling import Sampling


class Decoder(Protocol):
    """One artifact's decode program and its KV cache (positions 0 .. max_seq_len - 1)."""

    vocab: int
    max_seq_len: int

    @property
    def prefill_chunk(self) -> int:
        """Prompt tokens per prefill chunk (1: no prefill program, prompts run as decode
        steps)."""
        ...

    def reset(self) -> None:
        """Forget the cache and restart the counters (a new sequence, or after an error)."""
        ...

    def step(self, token: int, pos: int) -> torch.Tensor:
        """One decode step of `token` at cache position `pos`: float32 logits [vocab]."""
        ...

    def prefill(self, tokens: Sequence[int], pos: int = 0) -> None:
        """Write the cache rows of `tokens` at pos, pos + 1, ... (no logits)."""
        ...

    def run(
        self,
        tokens: Sequence[int],
        pos: int,
        n_steps: int,
        sampling: Sampling,
        stop_ids: Sequence[int] = (),
        on_token: Callable[[int], None] | None = None,
    ) -> list[int]:
        """What one multi-step launch of the kernel does: step i feeds tokens[i] while they
        last, then the token step i - 1 drew by `sampling`, at pos + i. Returns the drawn
        tokens, ending at a stop id or after n_steps steps."""
        ...

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, **kw: Any) -> list[int]:
        """New tokens for a prompt from a fresh cache (runtime.generate.generate_on)."""
        ...
