"""Rotary-embedding frequencies, including llama3 frequency scaling.

Computed once at compile time in float32 (as transformers does) and baked into the
artifact, so the kernel and the interpreter only compute `pos * inv_freq`.
"""

from __future__ import annotations

import math

import torch


def rope_inv_freq(cfg) -> torch.Tensor:
    """[head_dim / 2] float32 inverse frequencies for `cfg` (ModelConfig)."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    s = cfg.rope_scaling
    if s is None:
        return inv
    # llama3: keep high frequencies, divide low ones by `factor`, blend in between.
    low_wavelen = s.original_max_position / s.low_freq_factor
    high_wavelen = s.original_max_position / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / s.factor, inv)
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, blended, scaled).float()
