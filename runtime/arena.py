"""The artifact's two arenas at run time, shared by the GPU runtime and the interpreter:
the weights arena (every weight tensor flattened at its manifest offset) and the act arena
(activations and KV cache), which starts as NaN so that reading anything no task wrote
poisons the logits instead of passing silently."""

from __future__ import annotations

import torch

from tilert_compiler.models.text import ConfigError
from tilert_compiler.runtime.artifact import Artifact


def pack_weights(
    art: Artifact,
    weights: dict[str, torch.Tensor],
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The weights arena [manifest arenas.weights] in `dtype`: each weight of the manifest
    at its offset. A tensor missing, of another shape, or not finite once in `dtype` (NaN
    or Inf handed in, or past bf16's range) is one ConfigError naming it."""
    arena = torch.zeros(art.manifest["arenas"]["weights"], dtype=dtype, device=device)
    for t in art.manifest["tensors"]:
        if t["arena"] != "weights":
            continue
        w = weights.get(t["name"])
        if w is None:
            raise ConfigError(f"weights: missing tensor '{t['name']}'")
        if tuple(w.shape) != tuple(t["shape"]):
            raise ConfigError(
                f"weights: '{t['name']}' has shape {tuple(w.shape)}, the artifact expects "
                f"{tuple(t['shape'])}"
            )
        n = w.numel()
        seg = arena[t["offset"] : t["offset"] + n]
        seg.copy_(w.reshape(-1).to(dtype))
        if not bool(torch.isfinite(seg).all()):
            raise ConfigError(
                f"weights: tensor '{t['name']}' holds NaN or Inf (as {str(dtype)[6:]}); "
                "a damaged checkpoint?"
            )
    return arena


def act_arena(art: Artifact, device: torch.device | str = "cpu") -> torch.Tensor:
    """The act arena [manifest arenas.act], float32, all NaN."""
    return torch.full((art.manifest["arenas"]["act"],), float("nan"), device=device)
