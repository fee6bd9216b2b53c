"""FP8 weight-only decode (issue 21): `--quantize fp8` and FP8 checkpoints' block-wise
scales. The interpreter dequantizes each FP8 row exactly as the kernel (models.quant's
rule: float(e4m3) * scale in float32) and must match transformers in float32 running the
weights the artifact holds: the dequantized projections, and bf16 where the artifact
keeps bf16 (embedding, norms, LM head)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

import tilert_compiler as tc
from tilert_compiler.codegen.nvcc import find_nvcc
from tilert_compiler.driver import compile_from_ir
from tilert_compiler.explain import weight_bytes
from tilert_compiler.ir.parse import parse
from tilert_compiler.ir.prefill import format_prefill
from tilert_compiler.ir.tile import format_schedule
from tilert_compiler.models.config import load_config
from tilert_compiler.models.quant import Quantization, dequantize, quantize
from tilert_compiler.models.reference import hf_model, reference_logits
from tilert_compiler.models.weights import random_weights
from tilert_compiler.runtime.arena import pack_weights

# case -> (bundled model, overrides, scale block): per output channel, and block-wise
# 128x128 as FP8 checkpoints ship it, on dims under 128 (one block covers the dim) and on
# dims that are not multiples of 128 (K = 192: blocks of 128 and 64; 320: 128, 128, 64)
CASES = {
    "llama-per-channel": ("tiny-llama", None, None),
    "qwen3-per-channel": ("tiny-qwen3", None, None),
    "llama-block": ("tiny-llama", None, (128, 128)),
    "qwen3-block-uneven": ("tiny-qwen3", {"hidden": 192, "intermediate": 320}, (128, 128)),
}


def fp8_config(model: str, overrides=None, block=None, ignore=()):
    cfg = load_config(model, overrides=overrides)
    source = "quantize" if block is None else "fp8"
    return replace(cfg, quantization=Quantization(block=block, ignore=ignore, source=source))


def held(cfg, weights: dict) -> dict:
    """The weights as the artifact holds them (float32): projections quantized with the
    config's block and dequantized, everything else rounded to bf16."""
    q = cfg.quantization
    return {
        n: dequantize(quantize(w, q.block)) if q.quantizes(n) else w.bfloat16().float()
        for n, w in weights.items()
    }


@pytest.mark.parametrize("case", list(CASES))
def test_interpreter_matches_transformers_on_the_dequantized_weights(case):
    model, overrides, block = CASES[case]
    cfg = fp8_config(model, overrides, block)
    cm = tc.compile(cfg, nvcc=False)
    seed = int(torch.randint(0, 2**31 - 1, ()))
    weights = random_weights(cfg, seed=seed)
    tokens = torch.randint(0, cfg.vocab, (16,))
    ours = cm.interpret(tokens.tolist(), weights=weights)  # quantized as they are packed
    ref = reference_logits(hf_model(cfg, held(cfg, weights)), tokens)
    err = (ours - ref).norm(dim=-1) / ref.norm(dim=-1)
    assert not ours.isnan().any()
    assert err.max() <= 1e-4, f"seed {seed}: per-step relative L2 {err.tolist()}"
    # and FP8 is not bf16: the unquantized weights give other logits
    bf16 = reference_logits(hf_model(cfg, weights), tokens)
    assert ((ours - bf16).norm(dim=-1) / bf16.norm(dim=-1)).max() > 1e-3


def test_a_checkpoints_quant_weights_pack_as_its_own_scales():
    """QuantWeight values (as the FP8 checkpoint readers give them) are packed as they
    are; per-tensor scales (grid [1, 1]) are repeated into the artifact's blocks."""
    cfg = fp8_config("tiny-qwen3", {"hidden": 192, "intermediate": 320}, (128, 128))
    cm = tc.compile(cfg, nvcc=False)
    w = random_weights(cfg, seed=int(torch.randint(0, 2**31 - 1, ())))
    qw = {n: quantize(t, (128, 128)) if cfg.quantization.quantizes(n) else t for n, t in w.items()}
    name = "model.layers.1.mlp.down_proj.weight"  # [192, 320]
    qw[name] = quantize(w[name], tuple(w[name].shape))  # per-tensor
    ref = held(cfg, w)
    ref[name] = dequantize(qw[name])
    tokens = torch.randint(0, cfg.vocab, (8,))
    ours = cm.interpret(tokens.tolist(), weights=qw)
    want = reference_logits(hf_model(cfg, ref), tokens)
    assert ((ours - want).norm(dim=-1) / want.norm(dim=-1)).max() <= 1e-4
    # the arena holds the e4m3 bytes handed in
    art = cm.artifact
    arena = pack_weights(art, qw, torch.bfloat16).view(torch.uint8)
    t = art.tensor("model.layers.0.self_attn.q_proj.weight")
    rows = arena[2 * t["offset"] : 2 * (t["offset"] + t["elements"])].view(t["shape"][0], -1)
    q = qw["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(rows[:, : t["shape"][1]], q.data.view(torch.uint8))


def test_coarser_checkpoint_scales_than_the_kernels_blocks_are_refused():
    from tilert_compiler.models.text import ConfigError

    cfg = fp8_config("tiny-qwen3", {"hidden": 192, "intermediate": 320}, (128, 128))
    cm = tc.compile(cfg, nvcc=False)
    w = random_weights(cfg, seed=1)
    name = "model.layers.0.mlp.down_proj.weight"  # K = 320: kernel blocks of 128
    w[name] = quantize(w[name], (64, 96))
    with pytest.raises(ConfigError, match="scale blocks 64x96"):
        pack_weights(cm.artifact, w, torch.bfloat16)


def test_an_fp8_weight_holding_nan_is_refused_by_name():
    from tilert_compiler.models.quant import QuantWeight
    from tilert_compiler.models.text import ConfigError

    cfg = fp8_config("tiny-llama")
    cm = tc.compile(cfg, nvcc=False)
    w = random_weights(cfg, seed=2)
    name = "model.layers.1.self_attn.o_proj.weight"
    q = quantize(w[name])
    data = q.data.clone()
    data.view(torch.uint8)[3, 5] = 0x7F  # e4m3fn NaN
    w[name] = QuantWeight(data, q.scale, q.block)
    with pytest.raises(ConfigError, match=f"'{name}' holds NaN"):
        pack_weights(cm.artifact, w, torch.bfloat16)


def test_the_ir_carries_each_weights_precision_and_parses_back():
    cm = tc.compile("tiny-qwen3", nvcc=False, quantize="fp8")
    text = cm.ir("layout")
    assert re.search(
        r"tensor model\.layers\.0\.mlp\.down_proj\.weight \[64x96\] weight "
        r"layer=0 fp8e4m3=1x96\n",
        text,
    )
    assert re.search(r"tensor lm_head\.weight \[200x64\] weight layer=-1\n", text)  # bf16
    assert "fp8" not in tc.compile("tiny-qwen3", nvcc=False).ir("layout")
    sched = cm.stages["layout"]
    assert parse(format_schedule(sched)) == sched
    # the GEMV variants carry the scale k-block; the LM head's does not
    gemv = [v for v in cm.table.variants if "K" in dict(v.static)]
    assert {dict(v.static).get("QBK") for v in gemv if v.kind != "norm_linear"} == {64, 96, 128}
    head = [v for v in gemv if dict(v.static).get("CANDS")]
    assert head and all("QBK" not in dict(v.static) for v in head)


def test_a_dump_of_an_fp8_build_compiles_to_the_same_table(tmp_path):
    """The tile dump alone says which weights are FP8 (its config line may not: a
    checkpoint's block-wise quantization), and the build from it has the same prefill
    program (its GEMMs read the FP8 rows)."""
    cm = tc.compile(fp8_config("tiny-llama", None, (128, 128)), nvcc=False, dump_ir=str(tmp_path))
    again = compile_from_ir(tmp_path / "02-tile.tir", nvcc=False)
    assert again.table.variants == cm.table.variants
    assert (again.table.stream == cm.table.stream).all()
    assert again.artifact.fp8
    assert format_prefill(again.tiles.program) == format_prefill(cm.tiles.program)


def test_an_ignore_list_that_splits_a_stacked_gemv_is_one_config_error():
    from tilert_compiler.models.text import ConfigError

    cfg = load_config("tiny-llama")
    ignore = ("model.layers.1.self_attn.k_proj", "model.layers.0.mlp")
    quant = Quantization(ignore=ignore, source="compressed-tensors")
    with pytest.raises(ConfigError, match="q_proj.weight, .*k_proj.weight, .*v_proj.weight"):
        tc.compile(replace(cfg, quantization=quant), nvcc=False)
    # a whole module kept bf16 is fine: layer 0's MLP stays bf16, the rest is FP8
    cm = tc.compile(replace(cfg, quantization=replace(quant, ignore=ignore[1:])), nvcc=False)
    fp8 = {t["name"] for t in cm.manifest["tensors"] if t.get("dtype")}
    assert "model.layers.0.mlp.up_proj.weight" not in fp8
    assert "model.layers.1.mlp.up_proj.weight" in fp8
    w = random_weights(cm.config, seed=int(torch.randint(0, 2**31 - 1, ())))
    tokens = torch.randint(0, cm.config.vocab, (8,))
    ours = cm.interpret(tokens.tolist(), weights=w)
    ref = reference_logits(hf_model(cm.config, held(cm.config, w)), tokens)
    assert ((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max() <= 1e-4


def test_fp8_builds_have_a_prefill_program_whose_gemms_read_fp8_rows():
    cm = tc.compile("tiny-llama", nvcc=False, quantize="fp8")
    gemms = [k for k in cm.tiles.program.kernels if k.kind in ("gemm", "gemm_silu")]
    assert gemms and all(k.name.endswith("_fp8") and "QBK" in dict(k.statics) for k in gemms)
    assert cm.artifact.fp8 and not tc.compile("tiny-llama", nvcc=False).artifact.fp8


def test_the_fp8_arena_is_about_half_of_bf16s_on_llama_3_2_1b():
    """Projections take e4m3 bytes plus a float32 scale per row (padded to 16 bytes);
    embedding (also the tied LM head) and norms stay bf16."""
    bf16 = tc.compile("llama-3.2-1b", nvcc=False, prefill_chunk=0)
    fp8 = tc.compile("llama-3.2-1b", nvcc=False, quantize="fp8")
    n_bf16, n_fp8 = bf16.manifest["arenas"]["weights"], fp8.manifest["arenas"]["weights"]
    proj = [t for t in fp8.manifest["tensors"] if t.get("dtype") == "fp8e4m3"]
    assert len(proj) == 7 * 16
    proj_bf16 = sum(t["shape"][0] * t["shape"][1] for t in proj)
    proj_fp8 = sum(t["elements"] for t in proj)
    assert proj_fp8 <= 0.505 * proj_bf16  # 2048-wide rows: 16 bytes of scale per 2048
    embed = 128256 * 2048  # units, unchanged
    assert n_fp8 - embed <= 0.51 * (n_bf16 - embed)
    assert n_fp8 <= 0.61 * n_bf16
    # the floor --explain gives counts the FP8 bytes
    assert weight_bytes(fp8.schedule) <= 0.61 * weight_bytes(bf16.schedule)


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc not installed")
@pytest.mark.parametrize("block", [None, (128, 128)], ids=["per-channel", "block"])
def test_fp8_kernels_compile_without_warnings_or_spills(block):
    cfg = fp8_config("tiny-qwen3", {"hidden": 192, "intermediate": 320}, block)
    cm = tc.compile(cfg)  # a warning or a spill left is a CodegenError
    assert cm.resources.spill_stores == 0 and cm.resources.spill_loads == 0
    for name, r in cm.tiles.resources.items():  # the prefill program's kernels too
        assert r.get("spill_stores", 0) == 0 and r.get("spill_loads", 0) == 0, name


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc not installed")
@pytest.mark.parametrize("model", ["qwen3-8b-fp8", "llama-3.1-8b-instruct-fp8"])
def test_fp8_mma_builds_of_published_fp8_checkpoints_compile_without_spills(model):
    """fp8_gemv "mma" on the real FP8 configs (128x128 blocks, K up to 12288; one scale a
    channel, K = 14336): no spill once the register choices are made. Its first version
    held x in registers across a barrier to convert it in place and spilled 56 bytes on
    Llama-3.1-8B whatever was chosen."""
    from pathlib import Path

    cm = tc.compile(Path(__file__).parent / "real_configs" / model, prefill_chunk=0, fp8_gemv="mma")
    assert cm.schedule.plan.fp8_mma and "kFp8Mma = true;" in cm.source
    assert cm.resources.spill_stores == 0 and cm.resources.spill_loads == 0
