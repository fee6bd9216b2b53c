"""The prefill program of an FP8 build (issue 21, weight-only): its GEMMs read the FP8
rows of the weights arena (tile_programs.gemm_fp8) and its reference (runtime/prefill.py)
computes what those kernels compute. The oracle is transformers on the dequantized weights
(models.quant.dequantize; the arena's bf16 tensors as bf16): float32 to 1e-4, and with the
kernels' rounding within the bf16 budget; per output channel scales (--quantize fp8) and
block-wise (128, 128) ones."""

import dataclasses

import pytest
import torch

import tilert_compiler as tc
from tilert_compiler.models import random_weights
from tilert_compiler.models.config import load_config
from tilert_compiler.models.quant import Quantization, QuantWeight, dequantize, quantize
from tilert_compiler.models.reference import hf_model, reference_logits
from tilert_compiler.runtime.interpreter import Interpreter
from tilert_compiler.runtime.prefill import PrefillReference

# hidden 256 and intermediate 384: K spans several 128-column scale blocks (and a partial
# one for the down projection's with per-channel scales too); q/k norm; GQA 2:1
SHAPES = {"hidden": 256, "intermediate": 384, "heads": 4, "kv_heads": 2, "head_dim": 64}
SCALES = {"per-channel": None, "block-128": (128, 128)}


def _compile(block):
    cfg = load_config("tiny-qwen3", overrides={**SHAPES, "max_seq_len": 320})
    cfg = dataclasses.replace(cfg, quantization=Quantization(block=block))
    return tc.compile(cfg, nvcc=False, prefill_chunk=128)


@pytest.fixture(scope="module", params=list(SCALES))
def build(request):
    block = SCALES[request.param]
    return block, _compile(block)


def _weights(cm, block):
    """(what the artifact is given: FP8 projections as QuantWeight, the rest as drawn;
    the values it then holds, for transformers: dequantized, and bf16 elsewhere)."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    w = random_weights(cm.config, seed=seed)
    q = cm.config.quantization
    given = {n: quantize(t, block) if q.quantizes(n) else t for n, t in w.items()}
    held = {
        n: dequantize(t) if isinstance(t, QuantWeight) else t.bfloat16().float()
        for n, t in given.items()
    }
    return seed, given, held


def _rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() - b.double()).norm(dim=-1) / b.double().norm(dim=-1)


def _float32_program(cm, given) -> Interpreter:
    """The interpreter with the prefill program's reference in float32 (no bf16 rounding
    between its kernels)."""
    it = Interpreter(cm.artifact, given)
    it._tiles = PrefillReference(
        cm.manifest, cm.tiles.spec, it.B.view(torch.bfloat16), it.A, bf16=False
    )
    return it


def test_an_fp8_build_has_a_prefill_program_whose_gemms_read_fp8_rows(build):
    block, cm = build
    assert cm.tiles is not None
    tensors = {t["name"]: t for t in cm.manifest["tensors"]}
    for la in cm.tiles.spec["launches"]:
        k = cm.tiles.spec["kernels"][la["kernel"]]
        if k["kind"] not in ("gemm", "gemm_silu"):
            continue
        t = tensors[la["args"]["B"].removeprefix("w:")]
        st = k["statics"]
        assert t["dtype"] == "fp8e4m3" and st["RB"] == t["row_bytes"], la
        assert st["QBK"] == (st["K"] if block is None else min(128, st["K"])), la
        # the values and, with k-blocks, the scales come by TMA; per row, the scales are
        # read in the epilogue through a pointer
        kinds = [p["kind"] for p in k["params"]]
        assert kinds == (
            ["tmap", "ptr", "tmap", "ptr"] if block is None else ["tmap"] * 3 + ["ptr"]
        )
        assert all(p["name"] in ("A", "B", "C") for p in k["params"])


def test_the_fp8_program_in_float32_matches_transformers_on_the_dequantized_weights(build):
    block, cm = build
    seed, given, held = _weights(cm, block)
    n = 300
    tokens = torch.randint(0, cm.config.vocab, (n,))
    ref = reference_logits(hf_model(cm.config, held), tokens)
    it = _float32_program(cm, given)
    cut = 150  # two calls: the second starts mid-chunk, on cached rows
    it.prefill(tokens[:cut].tolist(), 0)
    it.prefill(tokens[cut:-1].tolist(), cut)
    ours = it.step(int(tokens[-1]), n - 1)
    err = float(_rel(ours, ref[-1]))
    assert not ours.isnan().any()
    assert err <= 1e-4, f"seed {seed}: relative L2 {err}"


def test_with_the_kernels_rounding_it_keeps_the_decode_rule(build):
    """The interpreter's prefill rounds as the FP8 kernels do (bf16 A; per-channel: exact
    e4m3 operands; block-wise: bf16(e4m3 * scale)): within the bf16 budget of transformers
    on the same dequantized weights."""
    block, cm = build
    seed, given, held = _weights(cm, block)
    L, steps = 200, 8
    tokens = torch.randint(0, cm.config.vocab, (L + steps,))
    f32 = reference_logits(hf_model(cm.config, held), tokens)[L - 1 :]
    b16 = reference_logits(hf_model(cm.config, held, dtype=torch.bfloat16), tokens)[L - 1 :]
    it = Interpreter(cm.artifact, given)
    it.prefill(tokens[: L - 1].tolist(), 0)
    ours = torch.stack([it.step(int(tokens[p]), p) for p in range(L - 1, L + steps)])
    e_ours, e_b16 = _rel(ours, f32), _rel(b16.float(), f32)
    assert float(e_ours.mean() / e_b16.mean()) <= 1.5, f"seed {seed}"
    assert float((e_ours / e_b16).max()) <= 3.0, f"seed {seed}"


def test_the_prefill_writes_the_cache_the_decode_steps_write(build):
    """Unrounded, the prefill program's cache rows are the FP8 decode steps' (the same
    dequantization rule on both paths)."""
    block, cm = build
    _, given, _ = _weights(cm, block)
    n = 140
    tokens = torch.randint(0, cm.config.vocab, (n,)).tolist()
    steps = Interpreter(cm.artifact, given)
    for p, t in enumerate(tokens):
        steps.step(t, p)
    pre = _float32_program(cm, given)
    pre.prefill(tokens, 0)
    for t in cm.manifest["tensors"]:
        if t["storage"] != "cache":
            continue
        kv, s, hd = t["shape"]
        a = pre.A[t["offset"] : t["offset"] + kv * s * hd].view(kv, s, hd)[:, :n]
        b = steps.A[t["offset"] : t["offset"] + kv * s * hd].view(kv, s, hd)[:, :n]
        err = float((a - b).norm() / b.norm())
        assert err < 1e-5, (t["name"], err)


def test_a_scale_block_narrower_than_a_gemm_step_is_refused_in_one_line():
    from tilert_compiler.passes.prefill import PrefillPlanError

    with pytest.raises(PrefillPlanError, match="scale blocks of 32 columns.*--prefill-chunk 0"):
        _compile((32, 32))


def test_layers_that_keep_a_module_bf16_launch_the_bf16_gemm_there():
    """An ignore list that keeps layer 0's MLP bf16: its gate/up and down GEMMs run the
    bf16 kernels, every other layer's the FP8 ones, and the program still computes the
    model (float32, against transformers)."""
    # three layers: the last one's MLP feeds only the LM head, so layer 1 has the FP8 MLP
    cfg = load_config("tiny-llama", overrides={"max_seq_len": 320, "layers": 3})
    quant = Quantization(ignore=("model.layers.0.mlp",), source="compressed-tensors")
    cm = tc.compile(dataclasses.replace(cfg, quantization=quant), nvcc=False, prefill_chunk=128)
    by_layer = {(la.layer, la.kernel) for la in cm.tiles.program.launches}
    assert {(0, "gemm_silu"), (0, "gemm_down"), (1, "gemm_silu_fp8")} <= by_layer
    assert (0, "gemm_qkv_fp8") in by_layer and (0, "gemm_silu_fp8") not in by_layer
    seed, given, held = _weights(cm, None)
    n = 200
    tokens = torch.randint(0, cm.config.vocab, (n,))
    ref = reference_logits(hf_model(cm.config, held), tokens)
    it = _float32_program(cm, given)
    it.prefill(tokens[:-1].tolist(), 0)
    err = float(_rel(it.step(int(tokens[-1]), n - 1), ref[-1]))
    assert err <= 1e-4, f"seed {seed}: relative L2 {err}"
