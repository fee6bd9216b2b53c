"""The prefill GEMMs' tile shapes, swept on one card against cuBLAS (torch.matmul).

    python bench/gemm_tiles.py build .art/gemm-tiles      # here: lower + nvcc every variant
    python bench/gemm_tiles.py run .art/gemm-tiles --out r.json   # on the GPU

Each variant is a TileLang GEMM (or the gate/up GEMM with SiLU·mul) of a model's shape,
`m` rows; the run checks it against torch on fresh random inputs (relative L2), then
times it (CUDA events, median) beside torch.matmul of the same shape, in one process.
`build --fp8 row` (or `128`, or `row,128`) adds each variant's FP8 twin (gemm_fp8: the
weight as FP8 rows with one scale per row, or per 128 x 128 block), checked against
torch on the weight as that kernel dequantizes it.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

# qwen3-8b's prefill GEMMs: (name, N, K); gate/up is gemm_silu with N = intermediate
SHAPES = [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 12288, 4096), ("down", 4096, 12288)]
ROWS = [512, 4096]
TILES = [  # (block_m, block_n, block_k, stages, swizzle)
    (128, 128, 64, 3, 0),
    (128, 128, 64, 4, 0),
    (128, 256, 64, 3, 0),
    (128, 256, 64, 4, 0),
    (128, 256, 64, 3, 8),
    (128, 128, 64, 4, 8),
]
SILU_TILES = [(128, 64, 64, 3, 0), (128, 128, 64, 3, 0), (128, 128, 64, 4, 0), (128, 128, 64, 3, 8)]
# tiles only FP8 twins have room for (an e4m3 B stage takes half a bf16 one's shared
# memory): 4 stages of 256-wide tiles, 128 deep k-steps (half the steps and syncs)
FP8_TILES = [(128, 256, 64, 4, 8), (128, 128, 128, 3, 8)]
FP8_SILU_TILES = [(128, 128, 64, 4, 8)]


def build(out: Path, fp8: list[str]) -> None:
    from tile_variants import build as build_variants

    from tilert_compiler.ir.precision import fp8_row_bytes, kernel_block
    from tilert_compiler.ir.prefill import Kernel

    kernels = []
    for (name, n, k), m in itertools.product(SHAPES, ROWS):
        kind = "gemm_silu" if name == "gate_up" else "gemm"
        tiles = SILU_TILES if kind == "gemm_silu" else TILES
        extra = (FP8_SILU_TILES if kind == "gemm_silu" else FP8_TILES) if fp8 else []
        for bm, bn, bk, st, sw in tiles + extra:
            twin_only = (bm, bn, bk, st, sw) in extra
            statics = (
                ("M", m),
                ("N", n),
                ("K", k),
                ("block_n", bn),
                ("block_k", bk),
                ("stages", st),
                ("swizzle", sw),
            )
            kname = f"{name}_m{m}_{bm}x{bn}x{bk}_s{st}_w{sw}"
            if not twin_only:
                kernels.append(Kernel(kname, kind, statics, bm))
            for scales in fp8:  # the FP8 twin: QBK, RB as passes/prefill.py gives them
                qbk = kernel_block(k, k if scales == "row" else int(scales))
                fp8_st = (("QBK", qbk), ("RB", fp8_row_bytes(k, qbk)))
                kernels.append(Kernel(f"{kname}_fp8{scales}", kind, statics + fp8_st, bm))
    build_variants(kernels, out, "gemm")


def fp8_weight(rows: int, k: int, st: dict):
    """(the FP8 rows of a random weight [rows, k], uint8 [rows, RB] on the GPU; the
    weight as gemm_fp8 multiplies it, float32 [rows, k], scales applied)."""
    import torch

    from tilert_compiler.runtime.arena import fp8_rows
    from tilert_compiler.runtime.prefill import read_fp8_rows

    w = torch.randn(rows, k) * 0.05
    qbk = st["QBK"]
    raw = fp8_rows("B", w, (1, k) if qbk >= k else (qbk, qbk), st["RB"])
    q, s = read_fp8_rows(raw, k, qbk)
    deq = q * s.repeat_interleave(qbk, 1)[:, :k]
    if qbk < k:  # k-blocks: the tile is rounded to bf16 before the MMA
        deq = deq.bfloat16().float()
    return raw.cuda(), deq.cuda()


def run(folder: Path, out: str | None) -> None:
    import torch
    from measure import events_median, provenance
    from tile_variants import launcher, load

    specs, fns = load(folder, "gemm")
    results = []
    cublas: dict = {}
    for name, k in specs.items():
        st = k["statics"]
        m, n, kk = st["M"], st["N"], st["K"]
        silu = k["kind"] == "gemm_silu"
        a = torch.randn(m, kk, device="cuda", dtype=torch.bfloat16)
        b = torch.randn((2 if silu else 1) * n, kk, device="cuda", dtype=torch.bfloat16) * 0.05
        bw = b.float()  # the weight as the kernel multiplies it
        if "QBK" in st:
            b, bw = fp8_weight(b.shape[0], kk, st)
        c = torch.full(
            (m, n), float("nan"), device="cuda", dtype=torch.bfloat16 if silu else torch.float32
        )
        addrs = {"A": a.data_ptr(), "B": b.data_ptr(), "C": c.data_ptr()}
        launch, keep = launcher(fns[name], k, addrs, name)
        launch()
        torch.cuda.synchronize()
        ref = a.float() @ bw.T
        if silu:
            ref = torch.nn.functional.silu(ref[:, :n]) * ref[:, n:]
        err = float((c.float() - ref).norm() / ref.norm())
        for _ in range(3):
            launch()
        ms = events_median(launch, 20)
        flops = 2 * m * kk * b.shape[0]
        key = (m, b.shape[0], kk)
        if key not in cublas:
            bb = bw.bfloat16()
            a @ bb.T
            cublas[key] = events_median(lambda a=a, b=bb: a @ b.T, 20)
        r = {
            "name": name,
            "rel_err": err,
            "ms": ms,
            "tflops": flops / ms / 1e9,
            "cublas_ms": cublas[key],
            "cublas_tflops": flops / cublas[key] / 1e9,
        }
        results.append(r)
        print(
            f"{name:<34} err {err:.1e}  {ms:8.3f} ms {r['tflops']:6.0f} TFLOP/s   "
            f"cuBLAS {cublas[key]:8.3f} ms {r['cublas_tflops']:6.0f}",
            flush=True,
        )
        del keep
    if out:
        Path(out).write_text(json.dumps({**provenance(), "results": results}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["build", "run"])
    ap.add_argument("folder")
    ap.add_argument("--out")
    ap.add_argument("--fp8", default="", help="build: FP8 twins, scales 'row' and/or '128'")
    a = ap.parse_args()
    if a.what == "build":
        build(Path(a.folder), [x for x in a.fp8.split(",") if x])
    else:
        run(Path(a.folder), a.out)


if __name__ == "__main__":
    main()
