"""Loads an artifact and runs it: the GPU runtime (torch + CUDA driver bindings only) and the
CPU reference interpreter of the same task table. Nothing here imports the compiler."""

from __future__ import annotations

from typing import Any


def load(path, weights=None, **kw) -> Any:
    """Load a compiled artifact onto the GPU. See runtime.gpu.GpuModel."""
    from tilert_compiler.runtime.gpu import GpuModel

    return GpuModel(path, weights=weights, **kw)
