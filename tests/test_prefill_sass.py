"""The prefill program's machine code has what its design relies on: the GEMMs and the
attention multiply on wgmma (HGMMA), the GEMMs load their tiles with TMA (UTMALDG) on
mbarriers, and no kernel spills to local memory. Read with cuobjdump (dev extra)."""

import re

import pytest
from test_sass import _sass

import tilert_compiler as tc


@pytest.fixture(scope="module")
def prefill():
    cm = tc.compile("llama-3.2-1b")
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


def test_the_row_kernels_stay_small(prefill):
    """The row-wise kernels are bandwidth-bound: few registers, no shared scratch beyond
    a reduction's."""
    spec = prefill.spec["kernels"]
    for k in spec.values():
        if k["kind"] in ("embed", "add_norm", "qk_cache"):
            r = prefill.resources[k["symbol"]]
            assert r["registers"] <= 64 and r["static_smem"] <= 1024, (k["symbol"], r)
