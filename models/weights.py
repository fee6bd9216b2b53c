"""Model weights by their Hugging Face names: the fixed name/shape list every later stage
relies on, the seeded random generator, and loading (and checking) *.safetensors folders.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tilert_compiler.models.config import ConfigError, ModelConfig

WeightList = list[tuple[str, tuple[int, ...]]]

# Saved by some older checkpoints; a recomputed buffer, not a weight.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def hf_weight_names(cfg: ModelConfig) -> WeightList:
    """HF parameter names and shapes ([out, in] for matrices) in a fixed order, which is also
    the order `random_weights` draws them in."""
    h, hd, inter = cfg.hidden, cfg.head_dim, cfg.intermediate
    names: WeightList = [("model.embed_tokens.weight", (cfg.vocab, h))]
    for i in range(cfg.layers):
        p = f"model.layers.{i}"
        names += [
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.self_attn.q_proj.weight", (cfg.q_dim, h)),
            (f"{p}.self_attn.k_proj.weight", (cfg.kv_dim, h)),
            (f"{p}.self_attn.v_proj.weight", (cfg.kv_dim, h)),
            (f"{p}.self_attn.o_proj.weight", (h, cfg.q_dim)),
        ]
        if cfg.qk_norm:
            names += [
                (f"{p}.self_attn.q_norm.weight", (hd,)),
                (f"{p}.self_attn.k_norm.weight", (hd,)),
            ]
        names += [
            (f"{p}.post_attention_layernorm.weight", (h,)),
            (f"{p}.mlp.gate_proj.weight", (inter, h)),
            (f"{p}.mlp.up_proj.weight", (inter, h)),
            (f"{p}.mlp.down_proj.weight", (h, inter)),
        ]
    names.append(("model.norm.weight", (h,)))
    if not cfg.tie_embeddings:
        names.append(("lm_head.weight", (cfg.vocab, h)))
    return names


def num_params(cfg: ModelConfig) -> int:
    return sum(_numel(shape) for _, shape in hf_weight_names(cfg))


def random_weights(cfg: ModelConfig, seed: int | None = None) -> dict[str, torch.Tensor]:
    """float32 CPU tensors from one torch.Generator(seed), drawn in `hf_weight_names` order.

    Scales keep activations O(1) so logits are not flat: matrices N(0, 1/fan_in), the
    embedding N(0, 1), norm weights 1 + 0.1 N(0, 1) (not all ones, so a kernel that skips a
    norm's weight is caught). Same config and seed, same tensors, on any machine.
    """
    seed = cfg.weights.seed if seed is None else seed
    if seed is None:
        raise ConfigError(f"{cfg.name}: random_weights needs a seed (weights come from a path)")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, shape in hf_weight_names(cfg):
        # randn then scale in place: one buffer per tensor, which matters at 8B x float32
        t = torch.randn(shape, generator=gen, dtype=torch.float32)
        if len(shape) == 1:
            t.mul_(0.1).add_(1.0)
        elif name != "model.embed_tokens.weight":
            t.mul_(shape[1] ** -0.5)
        out[name] = t
    return out


def load_weights(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """All weights named by `hf_weight_names`, float32 on the CPU: the seeded generator, or
    the *.safetensors files of `cfg.weights.path` checked name by name and shape by shape."""
    if cfg.weights.path is None:
        return random_weights(cfg)
    from safetensors import safe_open

    folder = Path(cfg.weights.path)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{cfg.name}: field 'weights.path' holds no *.safetensors ({folder})")
    expected = dict(hf_weight_names(cfg))
    out: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if name == "lm_head.weight" and cfg.tie_embeddings:
                    continue  # tied: the embedding is the head
                if name.endswith(_IGNORED_SUFFIXES):
                    continue
                if name not in expected:
                    raise ConfigError(
                        f"{file.name}: tensor '{name}' is not a weight of {cfg.family} "
                        f"'{cfg.name}' (a different model?)"
                    )
                out[name] = _checked(name, f.get_tensor(name), expected[name], file.name)
    for name, shape in expected.items():
        if name not in out:
            raise ConfigError(f"{folder}: tensor '{name}' {list(shape)} is missing")
    # hf_weight_names order, so iteration order never depends on shard layout
    return {name: out[name] for name in expected}


def _checked(name: str, t: torch.Tensor, shape: tuple[int, ...], file: str) -> torch.Tensor:
    if tuple(t.shape) != shape:
        raise ConfigError(
            f"{file}: tensor '{name}' has shape {list(t.shape)}, the config needs {list(shape)}"
        )
    return t.to(torch.float32)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
