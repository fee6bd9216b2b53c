"""models/: config loading and validation, weights, and the transformers reference (CPU, tiny)."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tilert_compiler.models import (
    ConfigError,
    WeightsSpec,
    bundled_names,
    describe,
    hf_weight_names,
    load_config,
    load_weights,
    num_params,
    random_weights,
)

TINY = ("tiny-llama", "tiny-qwen3")

# What a real checkpoint's config.json says (transformers < 5 form: rope_theta + rope_scaling),
# scaled down to the tiny configs.
HF_TINY_LLAMA_OLD = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 256,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 64,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 64,
        "rope_type": "llama3",
    },
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
}
HF_TINY_QWEN3_OLD = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "intermediate_size": 96,
    "vocab_size": 200,
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 64,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "use_sliding_window": False,
    "sliding_window": None,
    "max_window_layers": 2,
    "hidden_act": "silu",
    "attention_bias": False,
}


def _new_rope_form(hf: dict[str, Any]) -> dict[str, Any]:
    """The same config as transformers 5 saves it: theta moves into `rope_parameters`."""
    hf = dict(hf)
    params = dict(hf.pop("rope_scaling") or {"rope_type": "default"})
    params["rope_theta"] = hf.pop("rope_theta")
    hf["rope_parameters"] = params
    return hf


def _write_hf(folder: Path, hf: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf, indent=2))
    return folder / "config.json"


def _tiny_dict(name: str = "tiny-llama") -> dict[str, Any]:
    return load_config(name).to_dict()


def _deep_update(data: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict) and key != "weights":
            _deep_update(data[key], value)
        else:
            data[key] = value
    return data


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("name", bundled_names())
def test_bundled_config_loads_and_round_trips(name: str) -> None:
    cfg = load_config(name)
    assert cfg.name == name
    assert load_config(cfg.to_dict()) == cfg
    assert yaml.safe_load(yaml.safe_dump(cfg.to_dict())) == cfg.to_dict()  # plain types only
    assert "\n" not in describe(cfg)


def test_bundled_real_models_match_brief() -> None:
    # weight bytes in bf16 from BRIEF.md's table; these fix every shape at once
    for name, gb in (("llama-3.2-1b", 2.47), ("qwen3-0.6b", 1.19), ("qwen3-8b", 16.38)):
        cfg = load_config(name)
        assert round(2 * num_params(cfg) / 1e9, 2) == gb, name
        assert (cfg.target.arch, cfg.target.sms, cfg.max_seq_len) == ("sm_90a", 132, 1024)
    assert load_config("llama-3.2-1b").rope_scaling is not None
    assert not load_config("qwen3-8b").tie_embeddings
    assert load_config("qwen3-0.6b").qk_norm


@pytest.mark.parametrize("form", ["old", "new"])
@pytest.mark.parametrize(
    "name, hf", [("tiny-llama", HF_TINY_LLAMA_OLD), ("tiny-qwen3", HF_TINY_QWEN3_OLD)]
)
def test_hf_config_json_matches_yaml(tmp_path: Path, name: str, hf: dict, form: str) -> None:
    hf = hf if form == "old" else _new_rope_form(hf)
    path = _write_hf(tmp_path / name, hf)
    expected = load_config(name)
    overrides = {"target": {"sms": 8}, "weights": {"random": 0}}  # no safetensors: asked for
    assert load_config(path, overrides=overrides) == expected  # the file
    assert load_config(path.parent, overrides=overrides) == expected  # its folder
    assert load_config(hf, overrides={**overrides, "name": name}) == expected  # a dict


@pytest.mark.parametrize("name", bundled_names())
def test_hf_config_from_reference_loads_back(tmp_path: Path, name: str) -> None:
    from tilert_compiler.models.reference import hf_config

    cfg = load_config(name)
    _write_hf(tmp_path / name, hf_config(cfg).to_dict())
    keep = {"max_seq_len": cfg.max_seq_len, "target": cfg.to_dict()["target"]}
    keep["weights"] = cfg.to_dict()["weights"]
    assert load_config(tmp_path / name, overrides=keep) == cfg


def test_hf_defaults_follow_transformers(tmp_path: Path) -> None:
    # old-style "type" key, no original_max_position_embeddings, no kv heads, no head_dim,
    # no tie flag: transformers' LlamaConfig defaults fill them
    hf = {
        k: v
        for k, v in HF_TINY_LLAMA_OLD.items()
        if k not in ("num_key_value_heads", "head_dim", "tie_word_embeddings", "rope_scaling")
    }
    hf["rope_scaling"] = {
        "type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    }
    hf["max_position_embeddings"] = 131072
    cfg = load_config(_write_hf(tmp_path / "m", hf))
    assert (cfg.kv_heads, cfg.head_dim, cfg.tie_embeddings) == (4, 16, False)
    assert cfg.rope_scaling is not None and cfg.rope_scaling.original_max_position == 131072
    assert cfg.max_seq_len == 4096  # capped: the KV cache is sized for it
    assert not cfg.weights.bound  # no safetensors next to it: no random weights unasked
    assert cfg.weights.none is not None and "no weight files" in cfg.weights.none


def test_overrides_merge_before_validation() -> None:
    cfg = load_config("llama-3.2-1b", overrides={"max_seq_len": 256, "target": {"sms": 8}})
    assert (cfg.max_seq_len, cfg.target.sms, cfg.target.arch) == (256, 8, "sm_90a")
    with pytest.raises(ConfigError, match="'max_seq_len'"):
        load_config("llama-3.2-1b", overrides={"max_seq_len": 0})


def test_yaml_file_with_relative_weights_path(tmp_path: Path) -> None:
    cfg = load_config("tiny-qwen3")
    (tmp_path / "ckpt").mkdir()
    _save_safetensors(tmp_path / "ckpt", random_weights(cfg))
    data = cfg.to_dict()
    data["weights"] = {"path": "ckpt"}
    data["norm_eps"] = "1e-6"  # how PyYAML reads `1e-6` (no dot): a string, still accepted
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(data))
    loaded = load_config(tmp_path / "model.yaml")
    assert loaded.weights.path == str((tmp_path / "ckpt").resolve())
    assert loaded.norm_eps == 1e-6
    assert load_config(tmp_path) == loaded  # a folder holding model.yaml


# --------------------------------------------------------------------------- bad input

BAD_YAML = [
    # (field the message must name, change deep-merged into tiny-llama's dict)
    ("heads", {"heads": -4}),
    ("heads", {"heads": True}),  # bool is not an int
    ("kv_heads", {"kv_heads": 3}),
    ("head_dim", {"head_dim": 15}),
    ("head_dim", {"head_dim": 512}),
    ("hidden", {"hidden": 60}),
    ("intermediate", {"intermediate": 100}),
    ("vocab", {"vocab": 0}),
    ("layers", {"layers": 2.0}),
    ("family", {"family": "mistral"}),
    ("dtype", {"dtype": "fp16"}),
    ("tie_embeddings", {"tie_embeddings": "yes"}),
    ("qk_norm", {"qk_norm": True}),  # llama has no q/k norm
    ("norm_eps", {"norm_eps": 1.5}),
    ("norm_eps", {"norm_eps": "tiny"}),
    ("rope.theta", {"rope": {"theta": 0.0}}),
    ("rope.scaling.type", {"rope": {"scaling": {"type": "yarn"}}}),
    ("rope.scaling.high_freq_factor", {"rope": {"scaling": {"high_freq_factor": 0.5}}}),
    ("weights", {"weights": {"random": 0, "path": "."}}),
    ("weights.path", {"weights": {"path": "does/not/exist"}}),
    ("weights.random", {"weights": {"random": -1}}),
    ("max_seq_len", {"max_seq_len": 65536}),
    ("target.arch", {"target": {"arch": "sm_80"}}),
    ("target.sms", {"target": {"sms": 0}}),
    ("target.threads_per_block", {"target": {"threads_per_block": 100}}),
    ("hiden", {"hiden": 64}),  # unknown field
]


@pytest.mark.parametrize(
    "field, change", BAD_YAML, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_YAML)]
)
def test_bad_yaml_names_field(tmp_path: Path, field: str, change: dict) -> None:
    data = _deep_update(_tiny_dict(), change)
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert f"'{field}'" in msg and msg.startswith("model.yaml: ") and "\n" not in msg, msg


def test_missing_and_misspelled_fields() -> None:
    data = _tiny_dict()
    del data["layers"]
    with pytest.raises(ConfigError, match="field 'layers' is missing"):
        load_config(data)
    data = _tiny_dict()
    data["kv_head"] = data.pop("kv_heads")
    with pytest.raises(ConfigError, match="did you mean 'kv_heads'"):
        load_config(data)
    with pytest.raises(ConfigError, match="did you mean 'llama-3.2-1b'"):
        load_config("llama-3.2-1B")


BAD_HF = [
    ("attention_bias", {"attention_bias": True}),
    ("mlp_bias", {"mlp_bias": True}),
    ("hidden_act", {"hidden_act": "gelu"}),
    ("rope_type", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}),
    ("use_sliding_window", {"use_sliding_window": True}),
    ("model_type", {"model_type": "mistral"}),
    ("intermediate_size", {"intermediate_size": None}),
    ("num_attention_heads", {"num_attention_heads": 5}),  # after conversion, named both ways
]


@pytest.mark.parametrize("field, change", BAD_HF, ids=[f for f, _ in BAD_HF])
def test_bad_hf_config_names_field(tmp_path: Path, field: str, change: dict) -> None:
    path = _write_hf(tmp_path / "m", {**HF_TINY_LLAMA_OLD, **change})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert f"'{field}'" in msg and msg.startswith("config.json: ") and "\n" not in msg, msg


def test_broken_files_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "model.yaml").write_text("name: x\nhidden: [64\n")
    with pytest.raises(ConfigError, match=r"^model\.yaml: not valid YAML: .*line \d+$"):
        load_config(tmp_path / "model.yaml")
    (tmp_path / "config.json").write_text('{"model_type": "llama",\n "hidden_size": }')
    with pytest.raises(ConfigError, match=r"^config\.json: not valid JSON: .*line 2$"):
        load_config(tmp_path / "config.json")


def test_hf_name_prefers_saved_repo_id(tmp_path: Path) -> None:
    hf = {**HF_TINY_QWEN3_OLD, "_name_or_path": "Qwen/Qwen3-0.6B"}
    assert load_config(_write_hf(tmp_path / "0123abcd", hf)).name == "Qwen3-0.6B"


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("name", TINY)
def test_random_weights_deterministic_and_shaped(name: str) -> None:
    cfg = load_config(name)
    a, b, c = random_weights(cfg, 3), random_weights(cfg, 3), random_weights(cfg, 4)
    assert [(k, tuple(v.shape)) for k, v in a.items()] == hf_weight_names(cfg)
    assert all(v.dtype == torch.float32 for v in a.values())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.norm.weight"], c["model.norm.weight"])
    assert torch.equal(
        random_weights(cfg)["model.norm.weight"], random_weights(cfg, 0)["model.norm.weight"]
    )
    assert ("lm_head.weight" in a) != cfg.tie_embeddings
    assert ("model.layers.0.self_attn.q_norm.weight" in a) == cfg.qk_norm


def test_random_weights_scales() -> None:
    cfg = load_config("tiny-llama", overrides={"hidden": 256, "intermediate": 1024})
    w = random_weights(cfg)
    down = w["model.layers.0.mlp.down_proj.weight"]  # fan_in = intermediate
    assert abs(down.std().item() * cfg.intermediate**0.5 - 1) < 0.05
    assert abs(w["model.embed_tokens.weight"].std().item() - 1) < 0.05
    norm = w["model.layers.1.input_layernorm.weight"]
    assert abs(norm.mean().item() - 1) < 0.05 and abs(norm.std().item() - 0.1) < 0.03


def _save_safetensors(folder: Path, weights: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))


@pytest.mark.parametrize("name", TINY)
def test_safetensors_round_trip(tmp_path: Path, name: str) -> None:
    from tilert_compiler.models.reference import hf_config

    cfg = load_config(name)
    weights = random_weights(cfg, 7)
    on_disk = {k: v.to(torch.bfloat16) for k, v in weights.items()}
    if cfg.tie_embeddings:  # some checkpoints store the tied head too; it must be dropped
        on_disk["lm_head.weight"] = on_disk["model.embed_tokens.weight"].clone()
    folder = tmp_path / name
    _write_hf(folder, hf_config(cfg).to_dict())
    _save_safetensors(folder, on_disk)

    loaded_cfg = load_config(folder)
    assert loaded_cfg.weights.path == str(folder.resolve())
    loaded = load_weights(loaded_cfg)
    assert list(loaded) == [n for n, _ in hf_weight_names(cfg)]
    for k, v in loaded.items():
        assert v.dtype == torch.float32 and torch.equal(v, on_disk[k].float()), k


def test_load_weights_rejects_wrong_shape_and_missing(tmp_path: Path) -> None:
    cfg = load_config("tiny-qwen3")
    weights = random_weights(cfg)
    name = "model.layers.1.mlp.up_proj.weight"
    _save_safetensors(tmp_path, {**weights, name: weights[name][:, :32]})
    bad = dataclasses.replace(cfg, weights=WeightsSpec(path=str(tmp_path)))
    with pytest.raises(
        ConfigError, match=rf"'{name}' has shape \[96, 32\], the config needs \[96, 64\]"
    ):
        load_weights(bad)
    del weights["lm_head.weight"]
    _save_safetensors(tmp_path, weights)
    with pytest.raises(ConfigError, match="'lm_head.weight' .* is missing"):
        load_weights(bad)


# --------------------------------------------------------------------------- reference


@pytest.mark.parametrize("name", TINY)
def test_full_sequence_logits_equal_cached_decode(name: str) -> None:
    """reference_logits (one causal forward) equals transformers' own step-by-step decode with
    a KV cache, so one forward over a generated sequence can check every decode step."""
    from tilert_compiler.models.reference import hf_model, reference_logits

    cfg = load_config(name)
    weights = random_weights(cfg, seed=int(torch.randint(0, 2**31, ()).item()))
    model = hf_model(cfg, weights)
    tokens = torch.randint(0, cfg.vocab, (cfg.max_seq_len // 2,))
    full = reference_logits(model, tokens)
    assert full.shape == (len(tokens), cfg.vocab) and full.dtype == torch.float32

    # transformers renamed past_key_values to cache (5.2x deprecates the old name)
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    past, steps = None, []
    with torch.no_grad():
        for t in tokens:
            out = model(input_ids=t.view(1, 1), use_cache=True, **{key: past})
            past = getattr(out, key)
            steps.append(out.logits[0, -1])
    step = torch.stack(steps)
    rel = (full - step).norm(dim=-1) / step.norm(dim=-1)
    assert rel.max().item() <= 1e-5, rel.max().item()
    assert full.std() > 0.5  # weights scaled so logits are not flat


@pytest.mark.parametrize("name", TINY)
def test_hf_model_holds_exactly_the_weights(name: str) -> None:
    from tilert_compiler.models.reference import hf_model

    cfg = load_config(name)
    weights = random_weights(cfg)
    model = hf_model(cfg, weights)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == cfg.tie_embeddings
    assert not model.training


def test_tiny_llama_rope_scaling_changes_frequencies() -> None:
    """tiny-llama's llama3 scaling leaves some RoPE frequencies alone, divides some by the
    factor and ramps some in between, so a kernel that skips any regime is caught."""
    from tilert_compiler.models.reference import hf_model

    cfg = load_config("tiny-llama")
    s = cfg.rope_scaling
    assert s is not None
    model = hf_model(cfg, random_weights(cfg), dtype=torch.bfloat16)
    scaled = model.model.rotary_emb.inv_freq
    assert scaled.dtype == torch.float32  # kept float32 in a bf16 model, as from_pretrained does
    plain = cfg.rope_theta ** -(
        torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim
    )
    ratio = plain / scaled.double()
    kept = torch.isclose(ratio, torch.tensor(1.0, dtype=torch.float64))
    divided = torch.isclose(ratio, torch.tensor(s.factor, dtype=torch.float64))
    assert kept.any() and divided.any() and (~kept & ~divided).any(), ratio
