"""The kernel on a GPU, against transformers (float32) and the interpreter, tiny configs.
Run on a GPU machine: pytest -m gpu tests/test_gpu.py"""

import pytest
import torch

import tilert_compiler as tc
from tilert_compiler.models import load_weights

pytestmark = pytest.mark.gpu

TINY = ["tiny-llama", "tiny-qwen3"]


@pytest.fixture(scope="module", params=TINY)
def loaded(request, tmp_path_factory):
    from tilert_compiler.runtime.gpu import GpuModel

    cm = tc.compile(request.param)
    out = cm.save(tmp_path_factory.mktemp(request.param))
    w = load_weights(cm.config)
    return cm, GpuModel(out, weights=w), w


def test_kernel_matches_transformers_float32(loaded):
    from tilert_compiler.models.reference import hf_model, reference_logits

    cm, m, w = loaded
    m.reset()
    toks = torch.randint(0, cm.config.vocab, (24,))
    ours = torch.stack([m.step(int(t), p).cpu() for p, t in enumerate(toks)])
    ref = reference_logits(hf_model(cm.config, w), toks)
    err = (ours - ref).norm(dim=-1) / ref.norm(dim=-1)
    # bf16 weights against float32 ones: bf16 rounding (~2^-9 relative) sets the scale.
    assert err.max() < 2e-2, err


def test_repeated_runs_are_bit_identical(loaded):
    cm, m, _ = loaded
    toks = torch.randint(0, cm.config.vocab, (8,)).tolist()
    runs = []
    for _ in range(2):
        m.reset()
        runs.append(torch.stack([m.step(t, p) for p, t in enumerate(toks)]))
    assert torch.equal(runs[0], runs[1])


def test_one_launch_per_step(loaded):
    cm, m, _ = loaded
    m.reset()
    for p in range(5):
        m.step(1, p)
    assert m.epoch == 5


def test_missing_dependency_times_out_with_a_named_error(loaded):
    from tilert_compiler.runtime.gpu import KernelError

    cm, m, _ = loaded
    m.reset()
    m.timeout_ns = int(50e6)
    m.epoch = 1000  # counters at 0 cannot reach step 1001's targets: every wait stalls
    with pytest.raises(KernelError, match="timed out"):
        m.step(1, 0)
    m.reset()
    m.timeout_ns = int(1e9)
    m.step(1, 0)  # the GPU is usable again
