"""The prefill attention's tile shapes, swept on one card against torch's SDPA.

    python bench/attn_tiles.py build .art/attn-tiles            # here: lower + nvcc
    python bench/attn_tiles.py run .art/attn-tiles --out r.json  # on the GPU

qwen3-8b's shapes (32 q heads over 8 kv heads, head_dim 128), a chunk of 1024 queries at
cache position `pos` (0 and 3072: the first and the last chunk of a 4096-token prompt).
Each variant is checked against torch (float32 math on the same bf16-rounded inputs),
then timed (CUDA events, median) beside torch's scaled_dot_product_attention on bf16.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

M, H, KV, HD, S = 1024, 32, 8, 128, 4096
VARIANTS = [  # (pack, block_n, stages)
    (4, 64, 1),
    (4, 64, 2),
    (4, 128, 1),
    (4, 128, 2),
    (2, 64, 2),
]


def build(out: Path) -> None:
    from tile_variants import build as build_variants

    from tilert_compiler.ir.prefill import Kernel

    kernels = []
    for pack, bn, st in VARIANTS:
        statics = (
            ("M", M),
            ("H", H),
            ("KV", KV),
            ("HD", HD),
            ("S", S),
            ("pack", pack),
            ("block_n", bn),
            ("stages", st),
        )
        kernels.append(Kernel(f"attn_p{pack}_n{bn}_s{st}", "attention", statics, 128 // pack))
    build_variants(kernels, out, "attn")


def run(folder: Path, out: str | None) -> None:
    import torch
    from measure import events_median, provenance
    from tile_variants import launcher, load

    specs, fns = load(folder, "attn")
    q = torch.randn(M, H, HD, device="cuda").to(torch.bfloat16)
    kc = torch.randn(KV, S, HD, device="cuda").bfloat16().float()
    vc = torch.randn(KV, S, HD, device="cuda").bfloat16().float()
    results = []
    for pos in (0, S - M):
        n = M
        meta = torch.tensor([pos, n], dtype=torch.int32, device="cuda")
        keys = pos + n
        k = kc[:, :keys].repeat_interleave(H // KV, 0)
        v = vc[:, :keys].repeat_interleave(H // KV, 0)
        s = torch.einsum("rhd,hjd->hrj", q.float(), k) * HD**-0.5
        mask = (
            torch.arange(keys, device="cuda")[None, :]
            > (torch.arange(n, device="cuda") + pos)[:, None]
        )
        ref = torch.einsum("hrj,hjd->rhd", s.masked_fill(mask, float("-inf")).softmax(-1), v)
        qt = q.transpose(0, 1)[None]
        kt, vt = k.bfloat16()[None], v.bfloat16()[None]
        am = ~mask
        torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=am)
        sdpa = events_median(
            lambda qt=qt, kt=kt, vt=vt, am=am: torch.nn.functional.scaled_dot_product_attention(
                qt, kt, vt, attn_mask=am
            ),
            20,
        )
        flops = 4 * H * HD * (n * pos + n * (n + 1) / 2)
        for name, k_spec in specs.items():
            o = torch.full((M, H, HD), float("nan"), device="cuda", dtype=torch.bfloat16)
            addrs = {
                "Q": q.data_ptr(),
                "Kc": kc.data_ptr(),
                "Vc": vc.data_ptr(),
                "Out": o.data_ptr(),
                "meta": meta.data_ptr(),
            }
            launch, keep = launcher(fns[name], k_spec, addrs, name)
            launch()
            torch.cuda.synchronize()
            err = float((o.float() - ref).norm() / ref.norm())
            ms = events_median(launch, 20)
            r = {
                "name": name,
                "pos": pos,
                "rel_err": err,
                "ms": ms,
                "tflops": flops / ms / 1e9,
                "sdpa_ms": sdpa,
                "sdpa_tflops": flops / sdpa / 1e9,
            }
            results.append(r)
            print(
                f"{name:<20} pos {pos:5d} err {err:.1e} {ms:7.3f} ms {r['tflops']:5.0f} TFLOP/s"
                f"   torch SDPA (bf16, masked) {sdpa:7.3f} ms {r['sdpa_tflops']:5.0f}",
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
    a = ap.parse_args()
    build(Path(a.folder)) if a.what == "build" else run(Path(a.folder), a.out)


if __name__ == "__main__":
    main()
