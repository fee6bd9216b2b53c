"""The artifact's two arenas at run time, shared by the GPU runtime and the interpreter:
the weights arena (every weight tensor flattened at its manifest offset) and the act arena
(activations and KV cache), which starts as NaN so that reading anything no task wrote
poisons the logits instead of passing silently."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from tilert_compiler.models.text import ConfigError
from tilert_compiler.runtime.artifact import Artifact


def pack_weights(
    art: Artifact,
    weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The weights arena [manifest arenas.weights] in `dtype` on `device`: each weight of
    the manifest at its offset. `weights`: a dict, or (name, tensor) pairs as
    `models.weights.stream_weights` yields them, each copied into place as it comes (so
    the host never holds more than one). A tensor missing, of another shape, or not finite
    once in `dtype` (NaN or Inf handed in, or past bf16's range) is one ConfigError naming
    it; a name the manifest does not have is ignored, as a dict's extra keys are."""
    places = {t["name"]: t for t in art.manifest["tensors"] if t["arena"] == "weights"}
    arena = torch.zeros(art.manifest["arenas"]["weights"], dtype=dtype, device=device)
    pairs = weights.items() if isinstance(weights, Mapping) else weights
    placed: set[str] = set()
    bar = _progress(sum(math.prod(t["shape"]) for t in places.values()), device)
    for name, w in pairs:
        t = places.get(name)
        if t is None:
            continue
        if tuple(w.shape) != tuple(t["shape"]):
            raise ConfigError(
                f"weights: '{name}' has shape {tuple(w.shape)}, the artifact expects "
                f"{tuple(t['shape'])}"
            )
        seg = arena[t["offset"] : t["offset"] + w.numel()]
        seg.copy_(w.reshape(-1))  # converts to the arena's dtype (on the device, for bf16)
        if not _finite(seg):
            raise ConfigError(
                f"weights: tensor '{name}' holds NaN or Inf (as {str(dtype)[6:]}); "
                "a damaged checkpoint?"
            )
        placed.add(name)
        bar.update(w.numel())
    bar.close()
    missing = [n for n in places if n not in placed]
    if missing:
        raise ConfigError(f"weights: missing tensor '{missing[0]}'")
    return arena


def _finite(seg: torch.Tensor, chunk: int = 1 << 24) -> bool:
    """Whether every value of `seg` is finite, checked 16 M values at a time: on the CPU
    `isfinite` of a whole 262 M-value embedding took 1.7 GB of temporaries."""
    return all(bool(torch.isfinite(seg[i : i + chunk]).all()) for i in range(0, seg.numel(), chunk))


def _progress(total: int, device: torch.device | str):
    """A tqdm bar over weight elements, on stderr when it is a terminal and the weights are
    big enough to take seconds (over 100 M parameters)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="param",
        unit_scale=True,
        desc=f"weights to {device}",
        disable=None if total > 100_000_000 else True,
        leave=False,
    )


def weights_arena(
    art: Artifact,
    weights: torch.Tensor | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The weights arena a runtime runs with: `weights` itself when it is one packed
    already (checked: arenas.weights values of `dtype` on `device`, else one ConfigError),
    otherwise `pack_weights` of it."""
    if not isinstance(weights, torch.Tensor):
        return pack_weights(art, weights, dtype, device)
    n, dev = art.manifest["arenas"]["weights"], torch.device(device)
    if weights.dtype != dtype or weights.device != dev or tuple(weights.shape) != (n,):
        raise ConfigError(
            f"weights: a packed weights arena must be {n} {str(dtype)[6:]} values on {dev} (got "
            f"{tuple(weights.shape)} {str(weights.dtype)[6:]} on {weights.device})"
        )
    return weights


def act_arena(art: Artifact, device: torch.device | str = "cpu") -> torch.Tensor:
    """The act arena [manifest arenas.act], float32, all NaN."""
    return torch.full((art.manifest["arenas"]["act"],), float("nan"), device=device)
