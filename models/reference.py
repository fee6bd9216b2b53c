"""The numerical oracle: Hugging Face transformers running a `ModelConfig` with given weights.

Nothing here is ours but the translation of the config; the model code is transformers',
so agreeing with it means agreeing with the implementation people deploy.
"""

from __future__ import annotations

import torch
import transformers

from tilert_compiler.models.schema import ModelConfig


def hf_config(cfg: ModelConfig) -> transformers.PreTrainedConfig:
    """LlamaConfig / Qwen3Config for `cfg`, rope in transformers 5's `rope_parameters` form,
    eager attention (plain matmul + softmax: the most literal reference)."""
    rope: dict[str, object] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    # max_position_embeddings only sizes nothing at runtime here (RoPE is computed on the
    # fly), but transformers warns unless it exceeds llama3's original context.
    max_positions = cfg.max_seq_len
    s = cfg.rope_scaling
    if s is not None:
        rope.update(
            rope_type=s.kind,
            factor=s.factor,
            low_freq_factor=s.low_freq_factor,
            high_freq_factor=s.high_freq_factor,
            original_max_position_embeddings=s.original_max_position,
        )
        max_positions = max(max_positions, int(s.original_max_position * s.factor))
    common = dict(
        hidden_size=cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        intermediate_size=cfg.intermediate,
        vocab_size=cfg.vocab,
        tie_word_embeddings=cfg.tie_embeddings,
        rms_norm_eps=cfg.norm_eps,
        max_position_embeddings=max_positions,
        rope_parameters=rope,
        hidden_act="silu",
        attention_bias=False,
        attn_implementation="eager",
    )
    if cfg.family == "llama":
        return transformers.LlamaConfig(mlp_bias=False, **common)
    return transformers.Qwen3Config(use_sliding_window=False, **common)


def hf_model(
    cfg: ModelConfig,
    weights: dict[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> transformers.PreTrainedModel:
    """A causal-LM in eval mode holding exactly `weights` (cast to `dtype`)."""
    config = hf_config(cfg)
    cls = transformers.LlamaForCausalLM if cfg.family == "llama" else transformers.Qwen3ForCausalLM
    # _from_config builds under `dtype` as from_pretrained does, so the RoPE inverse
    # frequencies stay float32 even in a bf16 model (a later .to(bf16) would round them).
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype)
    state = dict(weights)
    if cfg.tie_embeddings:
        # the state dict lists the tied head; it is the same parameter as the embedding
        state["lm_head.weight"] = weights["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    if cfg.tie_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight, "head not tied"
    return model.eval()


@torch.no_grad()
def reference_logits(model: transformers.PreTrainedModel, tokens: torch.Tensor) -> torch.Tensor:
    """[len] token ids -> [len, vocab] float32 logits, one causal forward with no cache.

    Position t's logits equal those of decode step t (tests check it), so one forward over
    a whole generated sequence replaces a step-by-step reference run.
    """
    device = next(model.parameters()).device
    ids = tokens.reshape(1, -1).to(device=device, dtype=torch.long)  # [1, len]
    out = model(input_ids=ids, use_cache=False)
    return out.logits[0].float()  # [len, vocab]
