"""The machine code nvcc produced has the instructions the design relies on.

Reads the cubin with cuobjdump (PyPI's nvidia-cuda-cuobjdump / -nvdisasm, dev extra).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tilert_compiler as tc


def _cuobjdump() -> tuple[str, dict] | None:
    """cuobjdump and an environment whose PATH has nvdisasm, or None."""
    exe = shutil.which("cuobjdump")
    if exe is None:
        for base in map(Path, sys.path):
            cand = base / "nvidia" / "cu13" / "bin" / "cuobjdump"
            if cand.is_file():
                exe = str(cand)
                break
    if exe is None:
        return None
    env = dict(os.environ, PATH=str(Path(exe).parent) + os.pathsep + os.environ.get("PATH", ""))
    if shutil.which("nvdisasm", path=env["PATH"]) is None:
        return None
    return exe, env


def _sass(cubin: bytes, tmp_path) -> str:
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump/nvdisasm not installed (pip install '.[dev]')")
    exe, env = tool
    f = tmp_path / "k.cubin"
    f.write_bytes(cubin)
    return subprocess.run(
        [exe, "-sass", str(f)], capture_output=True, text=True, env=env, check=True
    ).stdout


@pytest.fixture(scope="module")
def llama():
    return tc.compile("llama-3.2-1b")


def test_weight_ring_uses_bulk_copies_and_mbarriers(llama, tmp_path):
    sass = _sass(llama.cubin, tmp_path)
    assert "UBLKCP" in sass  # cp.async.bulk global -> shared
    assert "SYNCS.PHASECHK" in sass  # mbarrier try_wait
    assert "SYNCS.ARRIVE" in sass  # mbarrier arrive (expect_tx, release)


def test_dependencies_are_acquire_loads_and_release_reductions(llama, tmp_path):
    sass = _sass(llama.cubin, tmp_path)
    assert "LDG.E.STRONG.GPU" in sass  # ld.acquire.gpu on the counters
    assert "RED.E.ADD.STRONG.GPU" in sass or "REDG.E.ADD.STRONG.GPU" in sass


def test_weights_and_activations_move_as_16_byte_vectors(llama, tmp_path):
    sass = _sass(llama.cubin, tmp_path)
    assert "LDG.E.128" in sass  # float4 activation loads
    assert "LDS.128" in sass  # weight chunks read from the ring as 16-byte vectors


def test_no_local_memory_outside_the_trig_slow_path(llama, tmp_path):
    """ptxas reports no spills; the only local memory is libdevice's sinf/cosf argument
    reduction for |x| > 105615, a 6-word array (RoPE angles never get there)."""
    sass = _sass(llama.cubin, tmp_path)
    local = [line for line in sass.splitlines() if " STL" in line or " LDL" in line]
    assert len(local) <= 12, local
    assert llama.resources.spill_stores == 0 and llama.resources.spill_loads == 0


def test_fp8_weights_use_the_packed_hardware_convert(tmp_path):
    """FP8 rows (tiny-qwen3, --quantize fp8): e4m3 pairs become halves with one F2FP
    instruction each (cvt.rn.f16x2.e4m3x2), then floats; the bf16 build has none."""
    fp8 = tc.compile("tiny-qwen3", quantize="fp8")
    sass = _sass(fp8.cubin, tmp_path)
    assert sass.count("F2FP.F16.E4M3.UNPACK_B") >= 12  # 4 per 8 weights, 3 GEMV kinds
    assert "LDS.64" in sass  # 8 e4m3 weights a lane reads from the ring at a time
    assert fp8.resources.spill_stores == 0 and fp8.resources.spill_loads == 0
    bf16 = tc.compile("tiny-qwen3", prefill_chunk=0)
    assert "E4M3" not in _sass(bf16.cubin, tmp_path)


@pytest.mark.parametrize(
    "block,intermediate",
    [(None, 384), ((128, 128), 384), ((128, 128), 8192)],
    ids=["per-channel", "block", "block-wide"],
)
def test_fp8_mma_gemvs_are_tensor_core_tiles_fed_by_16_byte_loads(block, intermediate, tmp_path):
    """fp8_gemv "mma": the FP8 GEMVs take mma.sync m16n8k16 with f16 inputs and float32
    accumulators (HMMA.16816.F32), their weights converted a pair per F2FP reading either
    half of a 16-byte load's words (no shift before it); the FFMA build has no HMMA. With
    K = 8192 (3 rows a ring stage) the down-proj takes the one-row-per-mma loop."""
    from test_fp8 import fp8_config

    cfg = fp8_config("tiny-qwen3", {"hidden": 256, "intermediate": intermediate}, block)
    mma = tc.compile(cfg, prefill_chunk=0, fp8_gemv="mma")
    assert mma.schedule.plan.fp8_mma
    sass = _sass(mma.cubin, tmp_path)
    lines = sass.splitlines()
    hmma = [i for i, line in enumerate(lines) if "HMMA.16816.F32 " in line]
    assert len(hmma) >= 3 * 4  # 4 k-steps a 64-column span, 3 GEMV kinds
    assert "HMMA.16816.F32.BF16" not in sass  # f16 inputs: e4m3 is exact in f16
    # around each mma: converts that read the high half in place, and 16-byte weight loads
    near = "\n".join(lines[min(hmma) - 40 : max(hmma) + 8])
    assert "F2FP.F16.E4M3.UNPACK_B" in near and ".H1" in near and "LDS.128" in near
    assert mma.resources.spill_stores == 0 and mma.resources.spill_loads == 0
    ffma = tc.compile(cfg, prefill_chunk=0)
    assert not ffma.schedule.plan.fp8_mma and "HMMA" not in _sass(ffma.cubin, tmp_path)
