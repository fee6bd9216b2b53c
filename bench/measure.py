"""Timing helpers shared by the bench scripts (CUDA events, copy bandwidth, provenance)."""

from __future__ import annotations

import datetime
import os
import statistics
import subprocess

import torch


def events_median(fn, iters: int) -> float:
    """Median ms of fn() over `iters` calls, CUDA events around each."""
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Device-to-device copy of 512 MiB: bytes read + written per second (median of 20)."""
    n = 1 << 28  # bf16 elements
    a = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty_like(a)
    for _ in range(5):
        b.copy_(a)
    ms = events_median(lambda: b.copy_(a), 20)
    return 2 * n * 2 / (ms / 1e3)


def step_ms(m, tokens: list[int], pos: int, iters: int, fill: bool = True) -> float:
    """Median ms of one launch at `pos`, after filling the cache up to it (if `fill`)."""
    if fill:
        for p in range(pos):
            m.launch(tokens[p], p)
    for _ in range(10):
        m.launch(tokens[pos], pos)
    m.check()
    ms = events_median(lambda: m.launch(tokens[pos], pos), iters)
    m.check()
    return ms


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row ||a - b|| / ||b||."""
    return (a.double() - b.double()).norm(dim=-1) / b.double().norm(dim=-1)


def provenance() -> dict:
    """Card, date and commit for a result file."""
    # The device machine's copy of the repository may carry a stale .git: the command line
    # can pass the commit it was started from (TILERT_COMMIT=$(git rev-parse --short HEAD)).
    commit = (
        os.environ.get("TILERT_COMMIT")
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    )
    return {
        "card": torch.cuda.get_device_name(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit or None,
    }
