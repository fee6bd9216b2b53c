"""Shared by the tile sweeps (gemm_tiles.py, attn_tiles.py): build variants of the
prefill program's kernels here into one cubin, and launch them on the GPU alone."""

from __future__ import annotations

import json
from pathlib import Path


def build(kernels, out: Path, stem: str) -> None:
    """Lower and compile the Kernel records into out/<stem>.cubin with their launch specs
    (and kind and statics) in out/<stem>.json."""
    from tilert_compiler.codegen.nvcc import compile_cubin
    from tilert_compiler.codegen.prefill import lower_prefill, nvcc_flags
    from tilert_compiler.ir.prefill import PrefillProgram

    source, specs, _ = lower_prefill(PrefillProgram(0, (), tuple(kernels), (), ()), "sm_90a", print)
    cubin, res, warnings = compile_cubin(source, "sm_90a", "", extra=nvcc_flags())
    if warnings:
        print(warnings)
    for k in kernels:
        specs[k.name]["kind"], specs[k.name]["statics"] = k.kind, dict(k.statics)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.cubin").write_bytes(cubin)
    (out / f"{stem}.json").write_text(json.dumps(specs, indent=1))
    print(res.report)


def load(folder: Path, stem: str) -> tuple[dict, dict]:
    """(specs, {name: function}) of a built folder, on the current GPU."""
    import torch

    from tilert_compiler.runtime.prefill import load_kernels

    torch.empty(1, device="cuda")  # a context
    specs = json.loads((folder / f"{stem}.json").read_text())
    _, fns = load_kernels((folder / f"{stem}.cubin").read_bytes(), specs)
    return specs, fns


def launcher(fn, spec: dict, addrs: dict, name: str):
    """A no-argument function launching `fn` on the current stream with its parameters
    bound to `addrs`, and the objects its argument array points into (keep them)."""
    import torch

    from tilert_compiler.runtime.prefill import kernel_argv, launch_kernel

    argv, keep = kernel_argv(spec, addrs.__getitem__, name)
    stream = torch.cuda.current_stream().cuda_stream
    return (lambda: launch_kernel(fn, spec, argv, stream)), keep
