"""Generation (runtime.generate) through the CPU interpreter, against transformers' greedy
generate; the multi-step program (one run for prompt and new tokens, sampled by the sample
task) and one step per token; the sampling rules against transformers' logits warpers."""

import pytest
import torch

import tilert_compiler as tc
from tilert_compiler.ir import lm_parts as lm
from tilert_compiler.models import random_weights
from tilert_compiler.models.reference import hf_model
from tilert_compiler.runtime.generate import GenerationError, generate
from tilert_compiler.runtime.interpreter import Interpreter
from tilert_compiler.runtime.sampling import (
    Sampling,
    draw,
    draw_from_parts,
    fast_draw,
    keep_threshold,
    lm_head_part,
    sample_token,
    scaled,
    uniform,
)


def _interp(name: str, seed: int):
    cm = tc.compile(name, nvcc=False)
    w = random_weights(cm.config, seed=seed)
    return cm, w, Interpreter(cm.artifact, w)


def _greedy_agreement(name: str, seed: int, per_token: bool) -> int:
    """Tokens compared before the first near tie (asserting they agree)."""
    cm, w, it = _interp(name, seed)
    prompt = torch.randint(0, cm.config.vocab, (6,)).tolist()
    ours = it.generate(prompt, 16, per_token=per_token)
    model = hf_model(cm.config, w)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            # explicit: generate would otherwise mask prompt tokens equal to pad_token_id
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=16,
            min_new_tokens=16,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    ref = out.sequences[0, len(prompt) :].tolist()
    for i, step_logits in enumerate(out.logits):
        top2 = step_logits[0].float().topk(2).values
        if top2[0] - top2[1] < 0.01 * max(1.0, abs(float(top2[0]))):
            ours, ref = ours[:i], ref[:i]  # a near tie: either token is right
            break
    assert ours == ref, f"seed {seed}"
    return len(ours)


@pytest.mark.parametrize("per_token", [False, True], ids=["multi-step", "per-token"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen3"])
def test_greedy_generation_matches_transformers_up_to_the_first_near_tie(name, per_token):
    # Fresh weights each run; a run whose first step is a near tie compares nothing, so
    # keep drawing until at least 8 tokens were compared.
    compared = 0
    for _ in range(6):
        compared += _greedy_agreement(name, int(torch.randint(0, 2**31 - 1, ())), per_token)
        if compared >= 8:
            break
    assert compared >= 8


def _hf_kept(z: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The tokens transformers' TopK then TopP warpers leave finite."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    scores = z[None].clone()
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.isfinite(scores[0])


def _rounding_ambiguous(z: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Tokens whose top-p verdict depends on rounding: transformers' float32 running mass
    and the exact (float64) one fall on opposite sides of 1 - top_p. Only such a token may
    be judged differently by keep_threshold, which sums in float64."""
    if top_p >= 1:
        return torch.zeros_like(z, dtype=torch.bool)
    kept = _hf_kept(z, top_k, 1.0)
    s = torch.where(kept, z, torch.full_like(z, float("-inf")))
    order = torch.argsort(s, stable=True)
    c32 = s[order].softmax(-1).cumsum(-1) <= 1 - top_p
    c64 = s[order].double().softmax(-1).cumsum(-1) <= 1 - top_p
    out = torch.zeros_like(z, dtype=torch.bool)
    out[order] = c32 != c64
    return out


@pytest.mark.parametrize(
    "top_k,top_p", [(0, 0.9), (0, 0.5), (40, 1.0), (40, 0.8), (1, 1.0), (0, 0.999)]
)
def test_kept_tokens_are_the_ones_transformers_warpers_keep(top_k, top_p):
    for _ in range(10):
        logits = torch.randn(5000) * float(torch.empty(()).uniform_(0.5, 6.0))
        t = float(torch.empty(()).uniform_(0.3, 2.0))
        z = scaled(logits, t)
        ref = _hf_kept(z, top_k, top_p)
        ours = z >= keep_threshold(z, top_k, top_p)
        differ = ours != ref
        assert not (differ & ~_rounding_ambiguous(z, top_k, top_p)).any(), (top_k, top_p)
        assert int(differ.sum()) <= 1, (top_k, top_p, int(differ.sum()))


def test_draws_follow_the_kept_softmax():
    # Many seeds, one position: the draw's frequencies against the renormalised softmax.
    logits = torch.randn(6) * 2
    z = scaled(logits, 0.8)
    tau = keep_threshold(z, 0, 0.9)
    kept = z >= tau
    probs = torch.where(kept, torch.softmax(z.double(), 0), torch.zeros(6, dtype=torch.float64))
    probs /= probs.sum()
    n = 6000
    counts = torch.zeros(6)
    base = int(torch.randint(0, 2**40, ()))
    for seed in range(base, base + n):
        counts[draw(z, tau, uniform(seed, 3))] += 1
    assert counts[~kept].sum() == 0
    sigma = (probs * (1 - probs) / n).sqrt()
    assert ((counts / n - probs).abs() <= 5 * sigma + 1e-9).all(), (counts / n, probs)


def test_uniform_is_in_range_and_keyed_by_seed_and_position():
    u = [uniform(s, p) for s in range(50) for p in range(50)]
    assert all(0 <= x < 1 for x in u)
    assert len(set(u)) > 2400  # 24-bit draws: collisions are rare
    assert abs(sum(u) / len(u) - 0.5) < 0.02


def test_greedy_and_top_k_one_take_the_first_largest():
    logits = torch.randn(50)
    logits[7] = logits[31] = logits.max() + 1  # a tie: the first index wins
    assert sample_token(logits, Sampling(), 0) == 7
    assert all(sample_token(logits, Sampling(1.0, 1, 1.0, s), 0) in (7, 31) for s in range(20))


def test_the_same_seed_gives_the_same_tokens_in_one_run_or_step_by_step():
    cm, _, it = _interp("tiny-qwen3", int(torch.randint(0, 2**31 - 1, ())))
    kw = dict(temperature=1.0, top_p=0.95, top_k=50, seed=int(torch.randint(0, 2**40, ())))
    a = it.generate([1, 2, 3], 8, **kw)
    assert it.generate([1, 2, 3], 8, **kw) == a
    assert it.generate([1, 2, 3], 8, per_token=True, **kw) == a
    kw["seed"] += 1
    assert it.generate([1, 2, 3], 8, **kw) != a  # 8 draws from ~50 tokens each


@pytest.mark.parametrize("per_token", [False, True], ids=["multi-step", "per-token"])
def test_a_stop_id_ends_generation_and_tokens_stream_in_order(per_token):
    cm, _, it = _interp("tiny-llama", 0)
    full = it.generate([4, 5], 10, per_token=per_token)
    seen: list[int] = []
    stopped = it.generate([4, 5], 10, stop_ids=[full[3]], stream=seen.append, per_token=per_token)
    assert stopped == full[: full.index(full[3]) + 1]
    assert seen == stopped


def test_a_request_longer_than_the_cache_is_refused_in_one_line():
    cm, _, it = _interp("tiny-llama", 0)  # max_seq_len 64
    with pytest.raises(GenerationError, match="KV cache holds 64") as e:
        it.generate([1] * 60, 10)
    assert "\n" not in str(e.value)


def test_without_a_prefill_program_prompts_run_as_decode_steps():
    cm = tc.compile("tiny-llama", nvcc=False, prefill_chunk=0)
    assert cm.tiles is None
    w = random_weights(cm.config, seed=int(torch.randint(0, 2**31 - 1, ())))
    prompt = torch.randint(0, cm.config.vocab, (9,)).tolist()
    it = Interpreter(cm.artifact, w)
    assert it.prefill_chunk == 1
    assert it.generate(prompt, 4) == it.generate(prompt, 4, per_token=True)


def test_a_prefill_past_the_cache_is_a_clear_error():
    cm, _, it = _interp("tiny-llama", 1)
    s = cm.config.max_seq_len
    from tilert_compiler.runtime.prefill import PrefillError

    with pytest.raises(PrefillError, match="does not fit the KV cache"):
        it.prefill([1] * 5, s - 3)


def test_bad_prompts_and_parameters_are_refused():
    with pytest.raises(GenerationError, match="vocabulary"):
        generate(lambda t, p: torch.zeros(4), [9], 2, max_seq_len=8, vocab=4)
    with pytest.raises(GenerationError, match="top_p"):
        Sampling(1.0, 0, 1.5)


def test_the_gpu_model_and_the_interpreter_offer_the_decoder_surface():
    # generate_on and tilert-run are typed against Decoder; both runtimes must keep its
    # methods with the same parameters (the GPU model is checked without a GPU)
    import inspect

    from tilert_compiler.runtime.decoder import Decoder
    from tilert_compiler.runtime.gpu import GpuModel

    methods = ("reset", "step", "prefill", "run", "generate")
    for cls in (GpuModel, Interpreter):
        for name in methods:
            want = list(inspect.signature(getattr(Decoder, name)).parameters)
            assert list(inspect.signature(getattr(cls, name)).parameters) == want, (cls, name)
        assert isinstance(inspect.getattr_static(cls, "prefill_chunk"), property)
    cm = tc.compile("tiny-llama", nvcc=False, prefill_chunk=0)
    it = Interpreter(cm.artifact, random_weights(cm.config, seed=0))
    assert (it.vocab, it.max_seq_len) == (cm.config.vocab, cm.config.max_seq_len)


# ---------------------------------------------------------------- the LM head's partials
def _parts(logits: torch.Tensor, rows: int, cands: int, t: float) -> torch.Tensor:
    """The LM-head partials of `logits` cut into tasks of `rows` rows (the last shorter)."""
    return torch.stack(
        [lm_head_part(logits[r : r + rows], r, t, cands) for r in range(0, logits.numel(), rows)]
    )


def _logits(vocab: int, scale: float, ties: bool) -> torch.Tensor:
    x = torch.randn(vocab) * scale
    return torch.round(x) if ties else x  # rounded: many ties, at every task's bound too


@pytest.mark.parametrize(
    "top_k,top_p",
    [(0, 1.0), (50, 0.9), (64, 1.0), (1, 1.0), (0, 0.9), (0, 0.999999), (200, 0.95), (5, 0.5)],
)
def test_draws_from_the_partials_equal_sample_token_on_fresh_logits(top_k, top_p):
    for trial in range(40):
        vocab = int(torch.randint(300, 6000, ()))
        rows = int(torch.randint(8, 400, ()))
        cands = [4, 16, 64][trial % 3]
        t = [1e-3, 0.6, 1.0, 40.0][trial % 4]  # tiny and large temperatures
        logits = _logits(vocab, float(torch.empty(()).uniform_(0.3, 40.0)), trial % 5 == 0)
        s = Sampling(t, top_k, top_p, int(torch.randint(0, 2**62, ())))
        pos = int(torch.randint(0, 4096, ()))
        parts = _parts(logits, rows, cands, t)
        want = sample_token(logits, s, pos)
        assert draw_from_parts(parts, logits, s, pos) == want, (vocab, rows, cands, t, s)


def test_the_candidates_settle_top_k_and_temperature_alone():
    # The fast path is what the issue asks for: top-k within the candidates, and
    # temperature alone, are drawn without reading the logits but one task's rows.
    for _ in range(20):
        logits = torch.randn(8000) * float(torch.empty(()).uniform_(0.5, 40.0))
        parts = _parts(logits, 1000, 64, 0.8)
        seed = int(torch.randint(0, 2**62, ()))
        for s in (
            Sampling(0.8, 50, 0.9, seed),
            Sampling(0.8, 64, 1.0, seed),
            Sampling(0.8, 0, 1.0, seed),
        ):
            assert fast_draw(parts, logits, s, 7) == sample_token(logits, s, 7)


def test_a_nucleus_past_the_candidates_passes_over_the_vocabulary():
    logits = torch.randn(8000) * 0.1  # nearly flat: top-p 0.9 keeps most of the vocabulary
    parts = _parts(logits, 1000, 64, 1.0)
    s = Sampling(1.0, 0, 0.9, 3)
    assert fast_draw(parts, logits, s, 0) is None
    assert draw_from_parts(parts, logits, s, 0) == sample_token(logits, s, 0)


def test_a_task_keeps_its_rows_above_the_next_largest():
    y = torch.randn(300)
    part = lm_head_part(y, 1000, 0.7, 16)
    n = int(part[lm.COUNT])
    got = part[lm.PART_HEADER : lm.PART_HEADER + 2 * n].view(-1, 2)
    top = torch.sort(y, descending=True).values
    assert n == 16 and float(part[lm.BOUND]) == float(top[16])
    assert sorted(got[:, 1].long().tolist()) == sorted((1000 + torch.topk(y, 16).indices).tolist())
    z = scaled(y, 0.7).double()
    assert float(part[lm.SUMEXP]) == pytest.approx(float(torch.exp(z - z.max()).sum()), rel=1e-6)


@pytest.mark.parametrize("cands", [4, 64], ids=["4-candidates", "64-candidates"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen3"])
def test_the_interpreters_draws_equal_sample_token_on_its_own_logits(name, cands):
    # 4 candidates per LM-head task (32 rows each): bounds, gathers and fallbacks all run.
    cm = tc.compile(name, nvcc=False, sample_candidates=cands)
    it = Interpreter(cm.artifact, random_weights(cm.config, seed=int(torch.randint(0, 2**31, ()))))
    for s in (
        Sampling(0.8, 50, 0.9, int(torch.randint(0, 2**62, ()))),
        Sampling(1.3, 0, 1.0, int(torch.randint(0, 2**62, ()))),
        Sampling(0.7, 0, 0.8, int(torch.randint(0, 2**62, ()))),
        Sampling(1.0, 3, 1.0, int(torch.randint(0, 2**62, ()))),
    ):
        it.reset()
        seen: list[tuple[int, int]] = []

        def check(tok: int, s: Sampling = s, seen: list = seen) -> None:
            logits = it.A[it.logits_at : it.logits_at + it.vocab]
            seen.append((tok, sample_token(logits, s, it.pos)))

        it.run([1, 2, 3], 0, 8, s, on_token=check)
        assert len(seen) == 6 and all(a == b for a, b in seen), (s, seen)
