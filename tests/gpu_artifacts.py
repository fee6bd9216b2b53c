"""Artifacts the GPU tests load, compiled where tilelang is (this machine, CI).

The device machines have no tilelang (too large to carry), so the prefill program's GPU
tests run on artifacts built here and carried:

    python tests/gpu_artifacts.py .art/gpu-tests        # here
    TILERT_GPU_ARTIFACTS=.art/gpu-tests pytest -m gpu   # there

Where tilelang is installed, the tests build what is missing themselves.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# name -> (bundled model, overrides, options): chunks of 128 rows in a 320-row cache, so
# prompts span several chunks and the last chunk is partial
BUILDS = {
    "tiny-llama": ("tiny-llama", {"max_seq_len": 320}, {"prefill_chunk": 128}),
    "tiny-qwen3": ("tiny-qwen3", {"max_seq_len": 320}, {"prefill_chunk": 128}),
    "tiny-qwen3-gqa4": (
        "tiny-qwen3",
        {"max_seq_len": 320, "heads": 8, "kv_heads": 2, "tie_embeddings": True},
        {"prefill_chunk": 128},
    ),
    # the whole cache in 32 chunks of the default 1024 tokens
    "tiny-llama-32k": ("tiny-llama", {"max_seq_len": 32768}, {}),
    # FP8 weights (issue 21): one scale per output channel (--quantize fp8), and block-wise
    # (128, 128) scales over K of 256 and 384 (fp8_block: the config's quantization)
    "tiny-llama-fp8": (
        "tiny-llama",
        {"max_seq_len": 320},
        {"prefill_chunk": 128, "quantize": "fp8"},
    ),
    "tiny-qwen3-fp8-block": (
        "tiny-qwen3",
        {
            "max_seq_len": 320,
            "hidden": 256,
            "intermediate": 384,
            "heads": 4,
            "kv_heads": 2,
            "head_dim": 64,
        },
        {"prefill_chunk": 128, "fp8_block": (128, 128)},
    ),  # fmt: skip
}


def folder() -> Path:
    return Path(os.environ.get("TILERT_GPU_ARTIFACTS", ".art/gpu-tests"))


def build(out: Path, names=None) -> None:
    import dataclasses

    import tilert_compiler as tc
    from tilert_compiler.models.config import load_config
    from tilert_compiler.models.quant import Quantization

    for name in names or BUILDS:
        model, overrides, options = BUILDS[name]
        options = dict(options)
        cfg = load_config(model, overrides=overrides)
        if "fp8_block" in options:
            block = options.pop("fp8_block")
            cfg = dataclasses.replace(cfg, quantization=Quantization(block=block))
        cm = tc.compile(cfg, **options)
        cm.save(out / name)


def artifact(name: str) -> Path:
    """The artifact of BUILDS[name]: prebuilt, or built now where tilelang is."""
    path = folder() / name
    if (path / "manifest.json").is_file():
        return path
    try:
        import tilelang  # noqa: F401
    except ImportError:
        raise RuntimeError(
            f"no prebuilt artifact {path} and no tilelang here to build it: run "
            f"'python tests/gpu_artifacts.py {folder()}' where tilelang is, and carry the folder"
        ) from None
    build(folder(), [name])
    return path


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else folder())
