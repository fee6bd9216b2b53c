"""FP8 checkpoints as published (issue 21): transformers' block-wise `fp8` format
(`X.weight_scale_inv`, Qwen3-*-FP8) and compressed-tensors `float-quantized`
(`X.weight_scale` per channel or per tensor, RedHatAI Llama-3.x FP8). A folder written here
with safetensors' torch API, fresh random values, streams each quantized weight as a
`QuantWeight` whose dequantized values are what transformers' own `Fp8Dequantize` (block
format) or the plain product fp8 * scale (compressed-tensors) make of the stored tensors;
every other tensor streams as stored. Each bad input is one ConfigError line naming the
tensor or field.

tests/real_configs/qwen3-8b-fp8 and llama-3.1-8b-instruct-fp8 are published FP8
checkpoints' configs, rebuilt from what could be verified (no hub is reachable here):
- Qwen/Qwen3-8B-FP8: the Qwen3-8B config.json beside it plus `quantization_config`
  {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
  "weight_block_size": [128, 128]}, the values and dims (hidden 4096, 36 layers, MLP 12288,
  vocab 151936) as a model report in the search tool's code index prints them for a local
  copy of Qwen3-8B-FP8 (its tensor list: e4m3 projections, `weight_scale_inv` [32, 32] for
  q_proj, embedding, norms and lm_head bf16). The same four fields appear in sglang's
  DeepSeek-V3 docs and several loaders' tests.
- RedHatAI (neuralmagic) Meta-Llama-3.1-8B-Instruct-FP8: the exact file was not found. The
  Llama-3.1-8B config beside it (Instruct's eos ids) plus a compressed-tensors
  `quantization_config` whose field names are those of compressed-tensors'
  `QuantizationConfig` / `QuantizationArgs` (vllm-project/compressed-tensors,
  src/compressed_tensors/quantization/quant_config.py, quant_args.py); per-tensor static
  weights and activations as a project using that checkpoint describes it ("8B FP8
  (per-tensor, neuralmagic)"), `ignore: ["lm_head"]`, `format: "float-quantized"`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tilert_compiler.cli import main as compile_main
from tilert_compiler.models.config import load_config
from tilert_compiler.models.quant import Quantization, QuantWeight, dequantize, quantize
from tilert_compiler.models.text import ConfigError
from tilert_compiler.models.weights import (
    check_weights,
    hf_weight_names,
    load_weights,
    stream_weights,
)

REAL = Path(__file__).parent / "real_configs"

# tiny-qwen3 and tiny-llama (models/bundled) as Hugging Face configs
TINY_QWEN3 = {
    "model_type": "qwen3",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "intermediate_size": 96,
    "vocab_size": 200,
    "tie_word_embeddings": False,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 64,
}
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 256,
    "tie_word_embeddings": True,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 64,
}


def fp8_config(block: list[int] | None = (128, 128)) -> dict:
    """transformers' fine-grained FP8, as Qwen/Qwen3-8B-FP8's config.json writes it."""
    return {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": None if block is None else list(block),
    }


def ct_config(strategy: str, input_activations: dict | None = None) -> dict:
    """compressed-tensors float-quantized, as llm-compressor writes it (one group)."""
    weights = {
        "actorder": None,
        "block_structure": None,
        "dynamic": False,
        "group_size": None,
        "num_bits": 8,
        "observer": "minmax",
        "observer_kwargs": {},
        "strategy": strategy,
        "symmetric": True,
        "type": "float",
    }
    return {
        "config_groups": {
            "group_0": {
                "input_activations": input_activations,
                "output_activations": None,
                "targets": ["Linear"],
                "weights": weights,
            }
        },
        "format": "float-quantized",
        "ignore": ["lm_head"],
        "kv_cache_scheme": None,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
    }


STATIC_TENSOR = {"dynamic": False, "num_bits": 8, "strategy": "tensor", "type": "float"}


def fresh(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random values, never zeros: N(0, 1) scaled like a weight, norms around 1."""
    t = torch.randn(shape, generator=gen)
    return t * 0.1 + 1.0 if len(shape) == 1 else t * shape[1] ** -0.5


def write_checkpoint(
    folder: Path,
    hf: dict,
    *,
    scale_dtype: torch.dtype = torch.float32,
    scale_form: str = "grid",
    shards: int = 1,
    extra: dict | None = None,
) -> tuple[dict, dict]:
    """config.json plus safetensors for `hf`: each weight its quantization_config quantizes
    as float8_e4m3fn beside its scale tensor, in the checkpoint's own form (`scale_form`:
    "grid" as stored by the fp8 format, "column" [N, 1], "scalar" [] or "one" [1]); every
    other weight bf16. With `shards` 2 the scales go to a second file named by an index.
    Returns (tensors written by name, the scale of each FP8 weight)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf))
    cfg = load_config(folder)
    q = cfg.quantization
    gen = torch.Generator().manual_seed(torch.seed() % 2**63)
    weights, scales = {}, {}
    for name, shape in hf_weight_names(cfg):
        w = fresh(shape, gen)
        if q is not None and q.quantizes(name):
            if scale_form == "grid":
                qw = quantize(w, q.block)
                s = qw.scale
            else:  # per channel or per tensor: one absolute maximum a row or the whole
                amax = (
                    w.abs().amax(dim=1, keepdim=True) if scale_form == "column" else w.abs().max()
                )
                s = amax / 448.0
                qw = QuantWeight((w / s).to(torch.float8_e4m3fn), s, (1, 1))
                s = s.reshape({"column": (-1, 1), "scalar": (), "one": (1,)}[scale_form])
            weights[name] = qw.data
            scales[name] = s.to(scale_dtype)
        else:
            weights[name] = w.to(torch.bfloat16)
    suffix = "weight_scale_inv" if q is not None and q.source == "fp8" else "weight_scale"
    stored = {n.removesuffix("weight") + suffix: s.contiguous() for n, s in scales.items()}
    extra = extra or {}
    if shards == 1:
        save_file({**weights, **stored, **extra}, str(folder / "model.safetensors"))
    else:
        save_file({**weights, **extra}, str(folder / "model-00001-of-00002.safetensors"))
        save_file(stored, str(folder / "model-00002-of-00002.safetensors"))
        index = {n: "model-00001-of-00002.safetensors" for n in {**weights, **extra}}
        index |= {n: "model-00002-of-00002.safetensors" for n in stored}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    return weights, scales


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------ the two formats


@pytest.mark.parametrize(
    ("block", "scale_dtype"),
    [((128, 128), torch.float32), ((128, 128), torch.bfloat16), ((64, 64), torch.float32)],
)
def test_block_fp8_streams_quantweights_as_transformers_dequantizes_them(
    block, scale_dtype, tmp_path
):
    # transformers' own dequantizer of this format (its backward pass, the one that takes
    # the block size: `Fp8Dequantize` infers the block from the grid, wrong for partial ones)
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    hf = TINY_QWEN3 | {"quantization_config": fp8_config(block)}
    weights, scales = write_checkpoint(tmp_path, hf, scale_dtype=scale_dtype)
    cfg = load_config(tmp_path)
    assert cfg.quantization == Quantization(block=block, source="fp8")
    got = dict(stream_weights(cfg))
    assert list(got) == [n for n, _ in hf_weight_names(cfg)]
    for name, t in got.items():
        if name not in scales:  # norms, embedding, head: bf16 as stored
            assert t.dtype == torch.bfloat16 and torch.equal(t, weights[name]), name
            continue
        assert isinstance(t, QuantWeight) and t.block == block, name
        assert t.data.dtype == torch.float8_e4m3fn and torch.equal(t.data, weights[name])
        n, k = t.shape
        assert t.scale.dtype == torch.float32
        assert tuple(t.scale.shape) == (-(-n // block[0]), -(-k // block[1]))
        want = _dequantize_fp8_weight(weights[name], scales[name], list(block), torch.float32)
        torch.testing.assert_close(dequantize(t), want, rtol=0, atol=0)
    # the partial blocks of 64x64 over intermediate 96 are there and counted
    if block == (64, 64):
        assert tuple(got["model.layers.0.mlp.down_proj.weight"].scale.shape) == (1, 2)


@pytest.mark.parametrize("form", ["column", "scalar", "one"])
def test_compressed_tensors_streams_quantweights_of_fp8_times_scale(form, tmp_path):
    strategy = "channel" if form == "column" else "tensor"
    hf = TINY_QWEN3 | {"quantization_config": ct_config(strategy, STATIC_TENSOR)}
    # a W8A8 checkpoint's activation scales: read past
    extra = {"model.layers.0.self_attn.q_proj.input_scale": torch.tensor([0.02])}
    weights, scales = write_checkpoint(tmp_path, hf, scale_form=form, extra=extra)
    cfg = load_config(tmp_path)
    assert cfg.quantization == Quantization(ignore=("lm_head",), source="compressed-tensors")
    got = dict(stream_weights(cfg))
    assert list(got) == [n for n, _ in hf_weight_names(cfg)]
    assert got["lm_head.weight"].dtype == torch.bfloat16  # in `ignore`
    for name, s in scales.items():
        t = got[name]
        n, k = t.shape
        want_block, want_grid = ((1, k), (n, 1)) if form == "column" else ((n, k), (1, 1))
        assert isinstance(t, QuantWeight) and t.block == want_block, name
        assert tuple(t.scale.shape) == want_grid and t.scale.dtype == torch.float32
        want = weights[name].float() * (s.reshape(-1, 1) if form == "column" else s)
        torch.testing.assert_close(dequantize(t), want, rtol=0, atol=0)


def test_scales_may_live_in_another_shard(tmp_path):
    hf = TINY_LLAMA | {"quantization_config": fp8_config((32, 32))}
    weights, scales = write_checkpoint(tmp_path, hf, shards=2)
    cfg = load_config(tmp_path)
    for name, t in stream_weights(cfg):
        if name in scales:
            assert torch.equal(t.scale, scales[name]) and torch.equal(t.data, weights[name])


def test_load_weights_gives_the_dequantized_float32_values(tmp_path):
    hf = TINY_LLAMA | {"quantization_config": ct_config("channel")}
    weights, scales = write_checkpoint(tmp_path, hf, scale_form="column")
    cfg = load_config(tmp_path)
    w = load_weights(cfg)
    name = "model.layers.1.mlp.down_proj.weight"
    assert w[name].dtype == torch.float32
    torch.testing.assert_close(w[name], weights[name].float() * scales[name], rtol=0, atol=0)
    assert torch.equal(w["model.norm.weight"], weights["model.norm.weight"].float())


def test_random_weights_of_an_fp8_config_stream_quantized(tmp_path):
    hf = TINY_QWEN3 | {"quantization_config": fp8_config((32, 32))}
    cfg = load_config(hf, overrides={"weights": {"random": 3}})
    got = dict(stream_weights(cfg))
    q = got["model.layers.0.self_attn.o_proj.weight"]
    assert isinstance(q, QuantWeight) and q.block == (32, 32)
    assert got["model.embed_tokens.weight"].dtype == torch.float32
    check_weights(cfg, got)  # what streams is what the Python API takes


def test_model_yaml_quantization_round_trips_and_matches_the_hf_one(tmp_path):
    hf = load_config(TINY_QWEN3 | {"quantization_config": ct_config("channel")})
    d = hf.to_dict()
    assert d["quantization"] == {
        "method": "fp8",
        "format": "e4m3",
        "block": None,
        "ignore": ["lm_head"],
        "source": "compressed-tensors",
    }
    assert load_config(d) == hf
    d["quantization"] = {"method": "fp8", "format": "e4m3", "block": [128, 128], "source": "fp8"}
    cfg = load_config(d)
    assert cfg.quantization == Quantization(block=(128, 128), source="fp8")
    assert load_config(cfg.to_dict()) == cfg
    # a bf16 description writes no quantization field, as before
    assert "quantization" not in load_config("tiny-qwen3").to_dict()


def test_a_folder_compiles_through_import_without_nvcc(tmp_path, capsys):
    hf = TINY_LLAMA | {"quantization_config": fp8_config()}
    write_checkpoint(tmp_path / "ckpt", hf)
    rc = compile_main([str(tmp_path / "ckpt"), "--no-nvcc", "--no-run", "-o", str(tmp_path / "a")])
    assert rc == 0, capsys.readouterr().err


def cfg_block(hf: dict):
    """The block-wise FP8 config's weight_block_size, as a tuple (None for others)."""
    size = hf["quantization_config"].get("weight_block_size")
    return tuple(size) if size else None


@pytest.mark.parametrize(
    ("hf", "form"),
    [
        (TINY_LLAMA | {"quantization_config": fp8_config()}, "grid"),  # one block per dim
        (TINY_QWEN3 | {"quantization_config": fp8_config((32, 32))}, "grid"),
        (TINY_QWEN3 | {"quantization_config": ct_config("channel")}, "column"),
        (TINY_LLAMA | {"quantization_config": ct_config("tensor")}, "scalar"),
    ],
    ids=["fp8-128", "fp8-32", "ct-channel", "ct-tensor"],
)
def test_an_fp8_checkpoint_builds_the_fp8_kernel_and_interprets_as_transformers(
    hf, form, tmp_path, capsys
):
    """The checkpoint's QuantWeights go into the arena as they are stored (its e4m3 bytes
    and scales): the interpreter matches float32 transformers on the dequantized weights
    (load_weights), within tests/test_fp8.py's bound."""
    from tilert_compiler.models.reference import hf_model, reference_logits
    from tilert_compiler.runtime.arena import pack_weights
    from tilert_compiler.runtime.artifact import load_artifact
    from tilert_compiler.runtime.interpreter import Interpreter

    write_checkpoint(tmp_path / "ckpt", hf, scale_form=form)
    out = tmp_path / "a"
    argv = [str(tmp_path / "ckpt"), "--no-nvcc", "--tokens", "2", "-o", str(out)]
    if cfg_block(hf) == (32, 32):  # the prefill GEMM steps 64 columns: it names the way out
        assert compile_main(argv) == 2
        assert "scale blocks of 32 columns" in capsys.readouterr().err
        assert not out.exists()
        argv.append("--prefill-chunk=0")
    assert compile_main(argv) == 0, capsys.readouterr().err  # the CLI's CPU run too
    cfg = load_config(tmp_path / "ckpt")
    art = load_artifact(out)
    assert load_config(art.manifest["config"]).quantization == cfg.quantization
    fp8 = {t["name"] for t in art.manifest["tensors"] if t.get("dtype") == "fp8e4m3"}
    assert fp8 == {n for n, _ in hf_weight_names(cfg) if cfg.quantization.quantizes(n)}
    assert any("QBK" in v["static"] for v in art.manifest["variants"])
    it = Interpreter(art, pack_weights(art, stream_weights(cfg), torch.bfloat16))
    tokens = torch.randint(0, cfg.vocab, (12,))
    ours = torch.stack([it.step(int(t), pos) for pos, t in enumerate(tokens)])
    ref = reference_logits(hf_model(cfg, load_weights(cfg)), tokens)
    err = (ours - ref).norm(dim=-1) / ref.norm(dim=-1)
    assert err.max() <= 1e-4, f"per-step relative L2 {err.tolist()}"


# ------------------------------------------------------------------ published configs


def test_published_qwen3_8b_fp8_config_imports_block_wise():
    cfg = load_config(REAL / "qwen3-8b-fp8")
    assert cfg.quantization == Quantization(
        method="fp8", fmt="e4m3", block=(128, 128), ignore=(), source="fp8"
    )
    assert (cfg.hidden, cfg.layers, cfg.intermediate) == (4096, 36, 12288)
    assert load_config(cfg.to_dict()) == cfg


def test_published_llama_3_1_8b_fp8_config_imports_compressed_tensors():
    cfg = load_config(REAL / "llama-3.1-8b-instruct-fp8")
    assert cfg.quantization == Quantization(
        method="fp8", fmt="e4m3", block=None, ignore=("lm_head",), source="compressed-tensors"
    )
    assert (cfg.hidden, cfg.layers, cfg.intermediate) == (4096, 32, 14336)
    assert load_config(cfg.to_dict()) == cfg


# ------------------------------------------------------------------ bad input


def _scale_key(name: str) -> str:
    return name.removesuffix("weight") + "weight_scale_inv"


def _rewrite(folder: Path, change) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


K_PROJ = "model.layers.0.self_attn.k_proj.weight"  # [32, 64]: 2 x 2 blocks of 32x32 (tiny-llama)
BAD_CHECKPOINTS = {
    "scale_shape": (
        lambda t: t.update({_scale_key(K_PROJ): torch.rand(3, 3) + 0.5}),
        f"tensor '{_scale_key(K_PROJ)}' has shape [3, 3], its FP8 weight needs [1, 2] "
        "(one scale per 32x32 block of [32, 64])",
    ),
    "e5m2": (
        lambda t: t.update({K_PROJ: t[K_PROJ].float().to(torch.float8_e5m2)}),
        f"tensor '{K_PROJ}' is F8_E5M2; the quantization config promises e4m3",
    ),
    "missing_scale": (
        lambda t: t.pop(_scale_key(K_PROJ)),
        f"tensor '{_scale_key(K_PROJ)}' is missing: the scales of the FP8 weight '{K_PROJ}'",
    ),
    "bf16_where_fp8_is_promised": (
        lambda t: t.update({K_PROJ: t[K_PROJ].to(torch.bfloat16)}),
        f"tensor '{K_PROJ}' is BF16, but the quantization config stores it as FP8 e4m3; if",
    ),
    "fp8_where_none_is_promised": (
        lambda t: t.update({"model.norm.weight": t["model.norm.weight"].to(torch.float8_e4m3fn)}),
        "tensor 'model.norm.weight' is F8_E4M3, but the quantization config keeps it as stored",
    ),
    "scale_not_a_float": (
        lambda t: t.update({_scale_key(K_PROJ): torch.ones(1, 2, dtype=torch.int32)}),
        f"tensor '{_scale_key(K_PROJ)}' is I32; scales must be F32, BF16, F16",
    ),
    "foreign_scale": (
        lambda t: t.update({"model.norm.weight_scale_inv": torch.ones(1)}),
        "tensor 'model.norm.weight_scale_inv' is not a weight of llama",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_a_bad_fp8_checkpoint_is_one_line_naming_the_tensor(case, tmp_path):
    change, fragment = BAD_CHECKPOINTS[case]
    hf = TINY_LLAMA | {"quantization_config": fp8_config((32, 32))}
    write_checkpoint(tmp_path, hf)
    _rewrite(tmp_path, change)
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert fragment in one_line(e)


def test_an_fp8_tensor_in_the_ignore_list_is_refused(tmp_path):
    qc = ct_config("channel")
    qc["ignore"] = ["lm_head", "model.layers.1.mlp.up_proj"]
    write_checkpoint(tmp_path, TINY_QWEN3 | {"quantization_config": qc}, scale_form="column")
    name = "model.layers.1.mlp.up_proj.weight"
    _rewrite(tmp_path, lambda t: t.update({name: t[name].to(torch.float8_e4m3fn)}))
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert f"tensor '{name}' is F8_E4M3, but the quantization config keeps it" in one_line(e)


def test_an_fp8_checkpoint_without_quantization_config_is_refused(tmp_path):
    write_checkpoint(tmp_path, TINY_LLAMA | {"quantization_config": fp8_config()})
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert "is F8_E4M3, but the config has no quantization" in one_line(e)


def _ct(change) -> dict:
    qc = ct_config("channel")
    change(qc)
    return qc


def _group_weights(qc: dict) -> dict:
    return qc["config_groups"]["group_0"]["weights"]


BAD_HF = {
    "unknown_method": (
        {"quant_method": "gptq", "bits": 4},
        "field 'quantization_config.quant_method' must be one of fp8, compressed-tensors: "
        "FP8 checkpoints only (got 'gptq')",
    ),
    "e5m2_fmt": (
        fp8_config() | {"fmt": "e5m2"},
        "field 'quantization_config.fmt' must be 'e4m3'",
    ),
    "ue8m0_scales": (fp8_config() | {"scale_fmt": "ue8m0"}, "'quantization_config.scale_fmt'"),
    "bad_block": (
        fp8_config() | {"weight_block_size": [128]},
        "field 'quantization.block' (from 'quantization_config.weight_block_size') must be "
        "[rows, cols]",
    ),
    "ct_int8": (
        _ct(lambda qc: _group_weights(qc).update(type="int")),
        "must have num_bits 8 and type 'float' (FP8 e4m3) (got num_bits 8, type 'int')",
    ),
    "ct_group_strategy": (
        _ct(lambda qc: _group_weights(qc).update(strategy="group", group_size=128)),
        "'quantization_config.config_groups.group_0.weights.strategy' must be one of channel",
    ),
    "ct_pack_format": (
        _ct(lambda qc: qc.update(format="pack-quantized")),
        "field 'quantization_config.format' must be 'float-quantized'",
    ),
    "ct_regex_ignore": (
        _ct(lambda qc: qc.update(ignore=["re:.*gate$"])),
        "field 'quantization_config.ignore' must list module names: the pattern 're:.*gate$'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_HF))
def test_a_bad_quantization_config_is_one_line_naming_the_field(case):
    qc, fragment = BAD_HF[case]
    with pytest.raises(ConfigError) as e:
        load_config(TINY_QWEN3 | {"quantization_config": copy.deepcopy(qc)})
    assert fragment in one_line(e)


BAD_YAML = {
    "format": ({"format": "e5m2"}, "field 'quantization.format' must be e4m3"),
    "method": ({"method": "int8"}, "field 'quantization.method' must be one of fp8"),
    "block": ({"block": [128, 0]}, "field 'quantization.block' must be an integer in [1,"),
    "block_shape": ({"block": 128}, "field 'quantization.block' must be [rows, cols]"),
    "ignore": ({"ignore": "lm_head"}, "field 'quantization.ignore' must be a list of module"),
    "source": (
        {"source": "gptq"},
        "field 'quantization.source' must be one of fp8, compressed-tensors, quantize",
    ),
    "typo": ({"blocks": [128, 128]}, "'quantization.blocks' is not a known field; did you mean"),
}


@pytest.mark.parametrize("case", sorted(BAD_YAML))
def test_a_bad_model_yaml_quantization_is_one_line(case):
    value, fragment = BAD_YAML[case]
    d = load_config("tiny-qwen3").to_dict() | {"quantization": value}
    with pytest.raises(ConfigError) as e:
        load_config(d)
    assert fragment in one_line(e)


def test_check_weights_refuses_fp8_handed_in_the_wrong_form(tmp_path):
    cfg = load_config(
        TINY_LLAMA | {"quantization_config": fp8_config((32, 32))},
        overrides={"weights": {"random": 1}},
    )
    w = dict(stream_weights(cfg))
    bad = dict(w)
    bad["model.norm.weight"] = quantize(w["model.norm.weight"].reshape(1, -1))
    with pytest.raises(ConfigError, match="'model.norm.weight' is a QuantWeight"):
        check_weights(cfg, bad)
    bad = dict(w)
    q = w[K_PROJ]
    bad[K_PROJ] = QuantWeight(q.data, torch.ones(3, 3), q.block)
    with pytest.raises(ConfigError, match=r"scales have shape \[3, 3\], block \[32, 32\]"):
        check_weights(cfg, bad)
    bad[K_PROJ] = q.data
    with pytest.raises(ConfigError, match="handed in as a QuantWeight"):
        check_weights(cfg, bad)


def test_nan_in_fp8_values_or_scales_is_refused_when_loaded(tmp_path):
    write_checkpoint(tmp_path, TINY_LLAMA | {"quantization_config": fp8_config((32, 32))})

    def nan_byte(t):
        bits = t[K_PROJ].view(torch.uint8).clone()
        bits[1, 2] = 0x7F  # e4m3fn's NaN
        t[K_PROJ] = bits.view(torch.float8_e4m3fn)

    _rewrite(tmp_path, nan_byte)
    with pytest.raises(ConfigError) as e:
        load_weights(load_config(tmp_path))
    assert f"tensor '{K_PROJ}' holds NaN (1 of 2048 FP8 values)" in one_line(e)
    _rewrite(tmp_path, lambda t: t.update({_scale_key(K_PROJ): torch.full((1, 2), float("nan"))}))
    with pytest.raises(ConfigError, match=r"its scales\)' holds NaN or Inf \(2 of 2 values\)"):
        load_weights(load_config(tmp_path))
