"""The kernel on a GPU, against transformers (float32) and the interpreter, tiny configs.
Run on a GPU machine: pytest -m gpu tests/test_gpu.py"""

import numpy as np
import pytest
import torch

import tilert_compiler as tc
from tilert_compiler.models import load_weights

pytestmark = pytest.mark.gpu

TINY = ["tiny-llama", "tiny-qwen3"]


# Each tiny model with counters between all tasks, and with flags (activations carry
# their step's parity; consumers poll the data).
BUILDS = [(name, flags) for flags in (False, True) for name in TINY]


@pytest.fixture(scope="module", params=BUILDS, ids=[f"{n}-flags{int(f)}" for n, f in BUILDS])
def loaded(request, tmp_path_factory):
    from tilert_compiler.runtime.gpu import GpuModel

    name, flags = request.param
    cm = tc.compile(name, flags=flags, prefill_chunk=0)
    out = cm.save(tmp_path_factory.mktemp(name))
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


@pytest.mark.parametrize(
    "flags,named", [(False, r"counter c\d+ = 0"), (True, r"its input at act offset \d+")]
)
def test_a_task_that_never_runs_ends_in_a_named_error_within_2s(tmp_path, flags, named):
    """Fault injection: a debug build where the embedding task never runs (writes and
    signals nothing). Every wait downstream, on a counter or (flags) on data with this
    step's parity, is bounded; the launch must fail fast naming SM, task and what it
    waited for, and the GPU must run the next (correct) launch."""
    import time

    from tilert_compiler.runtime.gpu import GpuModel, KernelError

    faulty = tc.compile("tiny-llama", fault_skip_task=0, flags=flags, prefill_chunk=0)
    good = tc.compile("tiny-llama", flags=flags, prefill_chunk=0)
    w = load_weights(faulty.config)
    m = GpuModel(faulty.save(tmp_path / "faulty"), weights=w)
    t0 = time.perf_counter()
    with pytest.raises(KernelError, match=r"timed out: sm \d+, task t\d+, " + named):
        m.step(1, 0)
    assert time.perf_counter() - t0 < 2.0
    ok = GpuModel(good.save(tmp_path / "good"), weights=w)
    assert torch.isfinite(ok.step(1, 0)).all()


def test_copies_in_flight_and_stage_size_do_not_change_a_bit(tmp_path):
    """The producer's cap on copies in flight (default: one; two; the whole ring), the
    ring's depth and its stage size move when weights land, not what is computed: the
    logits of every build are the same to the bit (tiny K: every stage size cuts the GEMVs
    into whole rows)."""
    from tilert_compiler.runtime.gpu import GpuModel

    # (the default ring of tiny-llama is 2 stages deep: deeper rings given here)
    builds = [
        {},
        {"in_flight_kb": 0, "ring_stages": 4},
        {"stage_kb": 8, "in_flight_kb": 16, "ring_stages": 6},
    ]
    toks = torch.randint(0, 256, (10,)).tolist()
    w, out = None, []
    for i, opts in enumerate(builds):
        cm = tc.compile("tiny-llama", **opts, prefill_chunk=0)
        w = w if w is not None else load_weights(cm.config)
        m = GpuModel(cm.save(tmp_path / f"b{i}"), weights=w)
        out.append(torch.stack([m.step(t % cm.config.vocab, p) for p, t in enumerate(toks)]))
    assert all(torch.equal(out[0], o) for o in out[1:])


def test_attention_in_row_blocks_matches_transformers_float32(tmp_path, monkeypatch):
    """A split's cache rows taken a few at a time (online softmax across blocks, as for
    long contexts) give transformers' logits: blocks of 3 rows, 2 splits, 28 steps (up to
    14 rows a split: five blocks)."""
    from tilert_compiler.codegen import cuda
    from tilert_compiler.models.reference import hf_model, reference_logits
    from tilert_compiler.runtime.gpu import GpuModel

    monkeypatch.setattr(cuda, "ATTN_BLOCK_ROWS", 3)
    for name in TINY:
        cm = tc.compile(name, attn_splits=2, prefill_chunk=0)
        assert "kAttnBlock = 3;" in cm.source
        w = load_weights(cm.config)
        m = GpuModel(cm.save(tmp_path / name), weights=w)
        toks = torch.randint(0, cm.config.vocab, (28,))
        ours = torch.stack([m.step(int(t), p).cpu() for p, t in enumerate(toks)])
        ref = reference_logits(hf_model(cm.config, w), toks)
        err = (ours - ref).norm(dim=-1) / ref.norm(dim=-1)
        assert err.max() < 2e-2, (name, err)


def test_profiled_kernel_records_every_task(tmp_path):
    from tilert_compiler.runtime.gpu import GpuModel
    from tilert_compiler.runtime.trace import timeline

    cm = tc.compile("tiny-qwen3", profile=True, prefill_chunk=0)
    m = GpuModel(cm.save(tmp_path / "p"), weights=load_weights(cm.config))
    m.step(3, 0)
    stamps, sm_of = m.timeline()
    assert (stamps[:, :3] > 0).all() and (stamps[:, 3] >= 0).all()
    assert (stamps[:, 0] <= stamps[:, 1]).all() and (stamps[:, 1] <= stamps[:, 2]).all()
    assert (stamps[:, 3] <= stamps[:, 2] - stamps[:, 1]).all()  # weight waits are in the run
    # Inputs loaded, then the task's own work done, inside the run, for the kinds that
    # stamp them (GEMVs and attention splits), and for every one of those.
    kinds = [cm.table.variants[int(k)].kind for k in cm.table.records[:, 0]]
    stamped = np.array(
        [k in ("norm_linear", "linear_residual", "gate_up_silu", "attention_decode") for k in kinds]
    )
    assert ((stamps[:, 4] > 0) == stamped).all() and ((stamps[:, 5] > 0) == stamped).all()
    s = stamps[stamped]
    assert (s[:, 1] <= s[:, 4]).all() and (s[:, 4] <= s[:, 5]).all() and (s[:, 5] <= s[:, 2]).all()
    # Time on ring chunks: the GEMVs' (every one streams weights), after their weight
    # waits and inside their work; none for kinds without weights.
    gemv = np.array([k in ("norm_linear", "linear_residual", "gate_up_silu") for k in kinds])
    assert (stamps[gemv, 6] > 0).all() and (stamps[~gemv, 6] == 0).all()
    g = stamps[gemv]
    assert (g[:, 3] + g[:, 6] <= g[:, 5] - g[:, 4]).all()
    tl = timeline(stamps, sm_of, cm.table)
    tl.write_trace(tmp_path / "trace.json")
    assert tl.span_us > 0


# ---------------------------------------------------------------- multi-step launches
def test_one_launch_generates_what_one_launch_per_token_does(loaded):
    """Greedy: the kernel's argmax over its own logits, step after step in one launch,
    against the host's argmax over the same kernel's logits, one launch per token."""
    cm, m, _ = loaded
    prompt = torch.randint(0, cm.config.vocab, (5,)).tolist()
    seen: list[int] = []
    one = m.generate(prompt, 20, stream=seen.append)
    # every step ran, in one launch (the prompt but its last token: the prefill program)
    assert m.epoch == (20 if m.prefill_chunk > 1 else len(prompt) + 20 - 1)
    assert seen == one
    assert m.generate(prompt, 20, per_token=True) == one


def _sampling_differences(cm, m, n: int = 48) -> int:
    """Draws of one sampled step against runtime.sampling on the kernel's own logits, over
    fresh seeds and settings: temperature alone, top-k within and past the candidates,
    top-p near 1."""
    from tilert_compiler.runtime.sampling import Sampling, sample_token

    differ = 0
    for i in range(n):
        rules = Sampling(
            temperature=float(torch.empty(()).uniform_(0.5, 1.5)),
            top_k=[0, 5, 40, 100][i % 4],
            top_p=[1.0, 0.9, 0.6, 0.99, 1.0, 0.999999][i % 6],
            seed=int(torch.randint(0, 2**62, ())),
        )
        m.reset()
        tok = int(torch.randint(0, cm.config.vocab, ()))
        (drawn,) = m.run([tok], 0, 1, rules)
        differ += drawn != sample_token(m.logits.cpu(), rules, 0)
    return differ


def test_kernel_sampling_follows_the_host_rules(loaded):
    """The sample task's merge of the LM head's partials (and its passes over the logits
    where they do not settle the draw) against runtime.sampling on the kernel's own logits
    (a draw within float32 rounding of a boundary may differ: at most one of 48)."""
    cm, m, _ = loaded
    assert _sampling_differences(cm, m) <= 1


@pytest.fixture(scope="module", params=TINY)
def few_candidates(request, tmp_path_factory):
    """A tiny model whose LM-head tasks (32 rows) keep 4 candidates each: the kernel's top-C
    select, the bounds and the passes past the candidates all run."""
    from tilert_compiler.runtime.gpu import GpuModel

    cm = tc.compile(request.param, prefill_chunk=0, sample_candidates=4)
    out = cm.save(tmp_path_factory.mktemp(request.param))
    return cm, GpuModel(out, weights=load_weights(cm.config))


def test_kernel_sampling_with_few_candidates_follows_the_host_rules(few_candidates):
    cm, m = few_candidates
    assert _sampling_differences(cm, m) <= 1


def _candidates(part: torch.Tensor) -> list[tuple[float, float]]:
    """A partial's (logit, index) candidates, in index order (the kernel's are in none)."""
    from tilert_compiler.ir import lm_parts as lm

    n = int(part[lm.COUNT])
    return sorted(map(tuple, part[lm.PART_HEADER : lm.PART_HEADER + 2 * n].view(-1, 2).tolist()))


def test_the_lm_head_partials_are_the_host_rules_on_the_kernels_logits(few_candidates):
    from tilert_compiler.ir import lm_parts as lm
    from tilert_compiler.runtime.sampling import Sampling, lm_head_part

    cm, m = few_candidates
    m.reset()
    rules = Sampling(0.7, 0, 1.0, 5)
    m.run([3], 0, 1, rules)
    spec = m.art.tensor("lm_part")
    n, width = spec["shape"]
    parts = m.act[spec["offset"] : spec["offset"] + n * width].view(n, width).cpu()
    logits = m.logits.cpu()
    for j in range(n):
        row0, rows = int(parts[j, lm.ROW0]), int(parts[j, lm.ROWS])
        want = lm_head_part(logits[row0 : row0 + rows], row0, 0.7, (width - lm.PART_HEADER) // 2)
        got = parts[j]
        fields = [lm.BEST, lm.AT, lm.BOUND, lm.COUNT, lm.ROW0, lm.ROWS, lm.LOW]
        assert torch.equal(got[fields], want[fields]), (j, got[:8], want[:8])
        assert float(got[lm.SUMEXP]) == pytest.approx(float(want[lm.SUMEXP]), rel=1e-5)
        assert _candidates(got) == _candidates(want), j


def test_a_stop_id_ends_the_launch_and_the_next_one_runs(loaded):
    cm, m, _ = loaded
    prompt = torch.randint(0, cm.config.vocab, (4,)).tolist()
    full = m.generate(prompt, 12)
    stop = full[5]
    cut = m.generate(prompt, 12, stop_ids=[stop])
    assert cut == full[: full.index(stop) + 1]
    assert m.generate(prompt, 12) == full  # counters and cache are consistent afterwards


def test_a_request_after_a_request_reuses_its_rows_and_draws_what_a_fresh_one_draws(loaded):
    """Prefix reuse on the kernel (runtime.model.Model): the second request's prompt is the
    first's prompt, reply and more; its launch starts after the rows the first left, with
    the epochs carried on, and (no prefill program: every row a decode step's, in a fixed
    sum order) draws bit for bit what a fresh cache draws."""
    from tilert_compiler.runtime.model import Model

    cm, m, _ = loaded
    m.reset()
    model, fresh = Model(m), Model(m, reuse=False)
    rules = {"temperature": 0.8, "top_k": 20, "seed": int(torch.randint(0, 2**31 - 1, ()))}
    first = torch.randint(0, cm.config.vocab, (7,)).tolist()
    a = model.complete(first, 6, stop_ids=[], **rules)
    second = first + a.ids + torch.randint(0, cm.config.vocab, (3,)).tolist()
    b = model.complete(second, 6, stop_ids=[], **rules)
    assert a.cached_tokens == 0 and b.cached_tokens == len(first) + len(a.ids) - 1
    assert b.ids == fresh.complete(second, 6, stop_ids=[], **rules).ids


# ---- FP8 weights (issue 21): the kernel dequantizes in registers what the interpreter
# dequantizes in float32 (models.quant.dequantize); both against transformers in float32
# running the weights the artifact holds (tests/test_fp8.py `held`). Builds: per output
# channel; block-wise 128x128 on dims that are not multiples of 128; a wide MLP (K = 8192:
# K-split rows, x read from shared memory); per channel without the weight ring; a build
# mixing bf16 and FP8 GEMVs.
FP8_BUILDS = {
    "llama-per-channel": ("tiny-llama", None, None, {}),
    "qwen3-block-uneven": ("tiny-qwen3", {"hidden": 192, "intermediate": 320}, (128, 128), {}),
    "llama-block-wide": ("tiny-llama", {"intermediate": 8192}, (128, 128), {}),
    "qwen3-per-channel-no-ring": ("tiny-qwen3", None, None, {"weight_ring": False}),
    # an ignore list: layer 0's MLP stays bf16 beside FP8 GEMVs (both overloads in one build)
    "llama-mixed": ("tiny-llama", None, None, {}, ("model.layers.0.mlp",)),
    # fp8_gemv "mma" (tensor cores): per channel; k-blocks that straddle warps' K-slices and
    # a last block of 64 columns (K = 192, 320); K = 8192 (3 rows a stage: one row an mma,
    # chunk_rows_mma_diag) with blocks and per channel; straight from global memory
    "llama-per-channel-mma": ("tiny-llama", None, None, {"fp8_gemv": "mma"}),
    "qwen3-block-uneven-mma": (
        "tiny-qwen3",
        {"hidden": 192, "intermediate": 320},
        (128, 128),
        {"fp8_gemv": "mma"},
    ),
    "llama-block-wide-mma": ("tiny-llama", {"intermediate": 8192}, (128, 128), {"fp8_gemv": "mma"}),
    "llama-per-channel-wide-mma": ("tiny-llama", {"intermediate": 8192}, None, {"fp8_gemv": "mma"}),
    "qwen3-no-ring-mma": ("tiny-qwen3", None, None, {"weight_ring": False, "fp8_gemv": "mma"}),
}


@pytest.fixture(scope="module", params=list(FP8_BUILDS))
def fp8_loaded(request, tmp_path_factory):
    from test_fp8 import fp8_config

    from tilert_compiler.models.weights import random_weights
    from tilert_compiler.runtime.gpu import GpuModel

    model, overrides, block, opts, *ignore = FP8_BUILDS[request.param]
    cfg = fp8_config(model, overrides, block, *ignore)
    cm = tc.compile(cfg, **{"prefill_chunk": 0, **opts})  # decode only: no tilelang there
    w = random_weights(cfg, seed=int(torch.randint(0, 2**31 - 1, ())))
    return cm, GpuModel(cm.save(tmp_path_factory.mktemp(request.param)), weights=w), w


def test_fp8_kernel_matches_transformers_on_the_dequantized_weights(fp8_loaded):
    from test_fp8 import held

    from tilert_compiler.models.reference import hf_model, reference_logits

    cm, m, w = fp8_loaded
    m.reset()
    toks = torch.randint(0, cm.config.vocab, (24,))
    ours = torch.stack([m.step(int(t), p).cpu() for p, t in enumerate(toks)])
    ref = reference_logits(hf_model(cm.config, held(cm.config, w)), toks)
    err = (ours - ref).norm(dim=-1) / ref.norm(dim=-1)
    # the same weights, float32 both sides: sum order and the kernel's fast intrinsics
    # differ (~1e-6 expected); a wrong scale or byte is > 1e-2
    assert err.max() < 1e-3, err


def test_fp8_kernel_matches_the_interpreter(fp8_loaded):
    cm, m, w = fp8_loaded
    m.reset()
    toks = torch.randint(0, cm.config.vocab, (12,))
    ours = torch.stack([m.step(int(t), p).cpu() for p, t in enumerate(toks)])
    ref = cm.interpret(toks.tolist(), weights=w)
    err = (ours - ref).norm(dim=-1) / ref.norm(dim=-1)
    assert err.max() < 1e-3, err
