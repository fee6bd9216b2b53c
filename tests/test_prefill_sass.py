"""The prefill program's machine code has what its design relies on: the GEMMs and the
attention multiply on wgmma (HGMMA), the GEMMs load their tiles with TMA (UTMALDG) on
mbarriers, and no kernel spills to local memory; FP8 builds' GEMMs (gemm_fp8) too.
Read with cuobjdump (dev extra)."""

import dataclasses
import re

import pytest
from test_sass import _sass

import tilert_compiler as tc
from tilert_compiler.models.config import load_config
from tilert_compiler.models.quant import Quantization


@pytest.fixture(scope="module")
def prefill():
    cm = tc.compile("llama-3.2-1b")
    if cm.tiles is None or cm.tiles.cubin is None:
        pytest.skip("needs nvcc to build the prefill cubin")
    return cm.tiles


def _fp8_build(which: str):
    if which == "llama-3.2-1b":  # --quantize fp8: one scale per output channel
        return tc.compile("llama-3.2-1b", quantize="fp8")
    # block-wise (128, 128) scales over K of 256 and 384: scales by TMA each k-step
    shapes = {"hidden": 256, "intermediate": 384, "heads": 4, "kv_heads": 2, "head_dim": 64}
    cfg = load_config("tiny-qwen3", overrides={**shapes, "max_seq_len": 320})
    return tc.compile(dataclasses.replace(cfg, quantization=Quantization(block=(128, 128))))


@pytest.fixture(scope="module", params=["llama-3.2-1b", "block-128"])
def prefill_fp8(request):
    cm = _fp8_build(request.param)
    if cm.tiles is None or cm.tiles.cubin is None:
        pytest.skip("needs nvcc to build the prefill cubin")
    return cm.tiles


def _functions(sass: str) -> dict[str, str]:
    """SASS text per kernel symbol."""
    parts = re.split(r"\n\s*Function : (\w+)\n", sass)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_gemms_are_tma_fed_wgmma_pipelines_and_nothing_spills(prefill, tmp_path):
    fns = _functions(_sass(prefill.cubin, tmp_path))
    spec = prefill.spec["kernels"]
    assert set(fns) == {k["symbol"] for k in spec.values()}
    for name, k in spec.items():
        code = fns[k["symbol"]]
        if k["kind"] != "qk_cache":  # sincosf's slow path keeps a local array
            assert "LDL" not in code and "STL" not in code, name  # no local memory, no spills
        if k["kind"] in ("gemm", "gemm_silu"):
            assert "HGMMA" in code, name
            assert "UTMALDG" in code, name
            assert "SYNCS" in code, name  # mbarrier arrive / wait
        if k["kind"] == "attention":
            assert "HGMMA" in code, name


def test_fp8_gemms_widen_tma_fed_e4m3_tiles_for_wgmma_and_nothing_spills(prefill_fp8, tmp_path):
    """An FP8 build's GEMMs: the e4m3 tiles come by TMA (a uint8 descriptor over the
    weight's rows), are widened to bf16 (F2FP) and multiply on wgmma; no local memory."""
    fns = _functions(_sass(prefill_fp8.cubin, tmp_path))
    gemms = {n: k for n, k in prefill_fp8.spec["kernels"].items() if "QBK" in k["statics"]}
    assert {k["kind"] for k in gemms.values()} == {"gemm", "gemm_silu"}
    for name, k in gemms.items():
        code = fns[k["symbol"]]
        for op in ("HGMMA", "UTMALDG", "SYNCS", "F2FP"):
            assert op in code, (name, op)
        assert "LDL" not in code and "STL" not in code, name
        b = [p["tmap"] for p in k["params"] if p["kind"] == "tmap" and p["name"] == "B"]
        assert b[0]["dtype"] == 0 and b[0]["strides"] == [k["statics"]["RB"]], name


def test_the_row_kernels_stay_small(prefill):
    """The row-wise kernels are bandwidth-bound: few registers, no shared scratch beyond
    a reduction's."""
    spec = prefill.spec["kernels"]
    for k in spec.values():
        if k["kind"] in ("embed", "add_norm", "qk_cache"):
            r = prefill.resources[k["symbol"]]
            assert r["registers"] <= 64 and r["static_smem"] <= 1024, (k["symbol"], r)
