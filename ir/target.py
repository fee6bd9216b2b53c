"""The hardware a program is compiled for, described as data (capabilities, not arch checks)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    arch: str = "sm_90a"  # nvcc code name; sm_90a enables wgmma/setmaxnreg
    sms: int = 132  # streaming multiprocessors = persistent CTAs (one per SM)
    smem_per_block: int = 227 * 1024  # usable dynamic shared memory per block, bytes
    l2_bytes: int = 50 * 1024 * 1024
    threads_per_block: int = 256  # 8 warps per CTA
    hbm_bytes_per_s: float = 3.0e12  # measured copy bandwidth (read + write), the cost model's rate
    sm_bytes_per_s: float = 60e9  # what one SM streams alone at best, caps a lone task's rate
    task_overhead_s: float = 1.5e-6  # per task: prologue (input vector, norm) + ring fill
    # Per dependency: from the producer's release to the waiting SM's acquire and first
    # loads. Calibrated on the measured llama-3.2-1b timeline (H100, bench/NOTES.md run
    # S2-4: 1320 us measured, 1054 predicted without it, 1196 with it); placement is the
    # same with or without it on every bundled model, only the predicted times move.
    handoff_s: float = 2.0e-6
    # Weight bytes each SM's producer keeps in flight (bulk copies issued, not landed).
    # HBM needs only its bandwidth x latency in flight over the chip (a few MB); more can
    # only queue, and the hand-offs' loads queue with it. One 32 KiB copy per SM (4.2 MB
    # over 132 SMs) measured fastest on H100 for all three bundled models against 64 and
    # 96 KiB and the whole ring (128-176 KiB), and on llama-3.2-1b against 16 and 48 KiB
    # (bench/NOTES.md, runs S8-3 to S8-6). The plan keeps at least one copy in flight.
    copies_in_flight_bytes: int = 32 * 1024
    # Dense bf16 tensor-core rate: torch.matmul of 8192^3 measured 771 TFLOP/s on H100
    # (bench/NOTES.md, run P1); the prefill program's cost model scales it per kernel kind.
    tensor_flops_per_s: float = 7.7e14


KNOWN_ARCHS = ("sm_90", "sm_90a")

# Defaults per arch: H100 SXM (132 SMs, 227 KB shared memory per block, 50 MB L2).
DEFAULT_TARGET = Target()
