"""Loads an artifact and runs it: the GPU runtime (torch + CUDA driver bindings only) and the
CPU reference interpreter of the same task table, with text (tokenizer, chat template,
generation_config.json) on top, and the OpenAI-compatible server (runtime/serve.py).
Nothing here imports the compiler."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["load"]


def load(
    path: str | os.PathLike,
    device: str | None = None,
    *,
    weights: Any = None,
    tokenizer: str | os.PathLike | None = None,
    **kw: Any,
) -> Any:
    """A compiled artifact ready to run, as a runtime.model.Model: `generate` takes text or
    ids, `chat` a conversation, on device="cuda" (the kernel) or "cpu" (the interpreter);
    default: the GPU where there is one. See runtime.model.load."""
    from tilert_compiler.runtime.model import load as _load

    return _load(path, device, weights=weights, tokenizer=tokenizer, **kw)
