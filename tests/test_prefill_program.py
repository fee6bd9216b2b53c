"""The prefill program (TileLang GEMMs and attention over prompt chunks) on the CPU: its
reference (runtime/prefill.py) walks the same launch list the GPU runs, and the logits
that follow it agree with transformers' float32 forward over the whole prompt; the
chunk's scratch does not grow with max_seq_len; bad prompts are refused before any work."""

import pytest
import torch

import tilert_compiler as tc
from tilert_compiler.models import random_weights
from tilert_compiler.models.reference import hf_model, reference_logits
from tilert_compiler.passes.prefill import PrefillPlanError, gemm_tile, prefill_chunk
from tilert_compiler.runtime.interpreter import Interpreter
from tilert_compiler.runtime.prefill import PrefillError, PrefillReference

CASES = {
    "tiny-llama": {},  # llama3 RoPE scaling, 4 q heads over 2 kv heads
    "tiny-qwen3": {},  # q/k norm
    "tiny-qwen3-tied-gqa4": {"tie_embeddings": True, "heads": 8, "kv_heads": 2},
}


def _compile(case: str, **over):
    base = case if case in ("tiny-llama", "tiny-qwen3") else "tiny-qwen3"
    # 320 cache rows and chunks of 128: prompts span several chunks
    overrides = {**CASES[case], "max_seq_len": 320, **over}
    return tc.compile(base, overrides=overrides, nvcc=False, prefill_chunk=128)


def _rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() - b.double()).norm(dim=-1) / b.double().norm(dim=-1)


@pytest.mark.parametrize("case", list(CASES))
def test_the_program_in_float32_matches_the_transformers_forward(case):
    """Unrounded, the launch list computes the model: every binding, layer and chunk."""
    cm = _compile(case)
    seed = int(torch.randint(0, 2**31 - 1, ()))
    w = random_weights(cm.config, seed=seed)
    n = 300
    tokens = torch.randint(0, cm.config.vocab, (n,))
    ref = reference_logits(hf_model(cm.config, w), tokens)
    it = Interpreter(cm.artifact, w)
    it._tiles = PrefillReference(cm.manifest, cm.tiles.spec, it.W, it.A, bf16=False)
    cut = 150  # two calls: the second starts mid-chunk, on cached rows
    it.prefill(tokens[:cut].tolist(), 0)
    it.prefill(tokens[cut:-1].tolist(), cut)
    ours = it.step(int(tokens[-1]), n - 1)
    err = float(_rel(ours, ref[-1]))
    assert not ours.isnan().any()
    assert err <= 1e-4, f"seed {seed}: relative L2 {err}"


@pytest.mark.parametrize("case", ["tiny-llama", "tiny-qwen3"])
def test_with_the_kernels_rounding_it_keeps_the_decode_rule(case):
    """Rounded where the GPU kernels round (bf16 operands, P), the logits at the last
    prompt position and the steps after it stay within the bf16 budget."""
    cm = _compile(case)
    seed = int(torch.randint(0, 2**31 - 1, ()))
    w = random_weights(cm.config, seed=seed)
    L, steps = 200, 8
    tokens = torch.randint(0, cm.config.vocab, (L + steps,))
    f32 = reference_logits(hf_model(cm.config, w), tokens)[L - 1 :]
    b16 = reference_logits(hf_model(cm.config, w, dtype=torch.bfloat16), tokens)[L - 1 :]
    it = Interpreter(cm.artifact, w)  # the interpreter's prefill rounds like the kernels
    it.prefill(tokens[: L - 1].tolist(), 0)
    ours = torch.stack([it.step(int(tokens[p]), p) for p in range(L - 1, L + steps)])
    e_ours, e_b16 = _rel(ours, f32), _rel(b16.float(), f32)
    assert float(e_ours.mean() / e_b16.mean()) <= 1.5, f"seed {seed}"
    assert float((e_ours / e_b16).max()) <= 3.0, f"seed {seed}"


def test_generate_takes_the_prompt_through_the_prefill_program():
    cm = _compile("tiny-llama")
    w = random_weights(cm.config, seed=int(torch.randint(0, 2**31 - 1, ())))
    prompt = torch.randint(0, cm.config.vocab, (140,)).tolist()
    it = Interpreter(cm.artifact, w)
    assert it.prefill_chunk == 128
    calls = []
    real = it._tiles.run
    it._tiles.run = lambda toks, pos: (calls.append((len(toks), pos)), real(toks, pos))
    out = it.generate(prompt, 4)
    assert calls == [(139, 0)]
    ref = hf_model(cm.config, w).generate(
        torch.tensor([prompt]), max_new_tokens=4, do_sample=False, pad_token_id=0
    )
    assert out == ref[0, len(prompt) :].tolist()


def test_scratch_does_not_grow_with_max_seq_len():
    small = _compile("tiny-qwen3", max_seq_len=1024)
    large = _compile("tiny-qwen3", max_seq_len=32768)
    assert small.tiles.spec["buffers"] == large.tiles.spec["buffers"]
    assert small.tiles.spec["chunk"] == large.tiles.spec["chunk"] == 128


def test_the_chunk_is_whole_row_tiles_within_the_cache():
    assert prefill_chunk(64) == 128  # one row tile at least
    assert prefill_chunk(300) == 384
    assert prefill_chunk(32768) == 1024
    assert prefill_chunk(32768, 2048) == 2048
    assert prefill_chunk(1000, 2048) == 1024


def test_gemm_tiles_divide_the_width_and_fill_the_sms():
    assert gemm_tile(1024, 4096, 132) == 256  # one wave of the widest blocks
    assert gemm_tile(128, 2048, 132) == 32  # one row block: narrow tiles for more blocks
    assert gemm_tile(128, 96, 8) == 32
    with pytest.raises(PrefillPlanError, match="multiples of 32.*--prefill-chunk 0"):
        gemm_tile(128, 100, 132)  # the message names the way out: --prefill-chunk 0


@pytest.mark.parametrize(
    ("n", "pos", "match"),
    [(0, 0, "empty"), (321, 0, "does not fit"), (10, 315, "does not fit")],
)
def test_a_prompt_that_does_not_fit_is_refused_before_any_work(n, pos, match):
    cm = _compile("tiny-llama")
    w = random_weights(cm.config, seed=0)
    it = Interpreter(cm.artifact, w)
    before = it.A.clone()
    with pytest.raises(PrefillError, match=match):
        it._tiles.run(list(range(n)), pos)
    assert torch.equal(before.nan_to_num(7.0), it.A.nan_to_num(7.0))


def test_the_tile_programs_appear_in_the_source_and_the_spec():
    cm = _compile("tiny-qwen3")
    spec = cm.tiles.spec
    kinds = {k["kind"] for k in spec["kernels"].values()}
    assert kinds == {"embed", "add_norm", "gemm", "qk_cache", "attention", "gemm_silu"}
    for name, k in spec["kernels"].items():
        assert f"void __launch_bounds__({k['block'][0]}" in cm.tiles.source, name
        assert k["symbol"] in cm.tiles.source, name
    # the GEMMs read A and B through TMA descriptors TileLang asked for
    gemm = spec["kernels"]["gemm_qkv"]
    assert [p["kind"] for p in gemm["params"]] == ["tmap", "tmap", "ptr"]
    # the last layer stops after its cache rows: its o-proj and MLP feed only the LM head
    last = [la["kernel"] for la in spec["launches"] if la["layer"] == cm.config.layers - 1]
    assert last == ["add_norm", "gemm_qkv", "qk_cache"]


def test_the_program_text_parses_back():
    from tilert_compiler.ir.prefill import format_prefill, parse_prefill

    for case in CASES:
        p = _compile(case).tiles.program
        assert parse_prefill(format_prefill(p)) == p


def test_explain_dumps_and_pictures_show_the_prefill_program(tmp_path, capsys):
    from tilert_compiler.cli import main

    out = tmp_path / "a"
    args = ["tiny-qwen3", "-o", str(out), "--no-run", "--no-nvcc", "--explain", "--dump-ir"]
    assert main([*args, "--pictures", "--prefill-chunk", "128"]) == 0
    text = capsys.readouterr().out
    assert "prefill program: chunks of 128 tokens" in text
    for kernel in ("gemm_qkv", "attention", "gemm_silu", "qk_cache"):
        assert f"  {kernel} " in text
        assert kernel in (out / "ir" / "prefill.tir").read_text()
    assert (out / "ir" / "prefill-attention.py").read_text().count("T.prim_func") == 1
    assert (out / "pictures" / "prefill.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda s: s["launches"][2]["args"].update(B="w:no.such.weight"), "not a buffer"),
        (lambda s: s["launches"].append({"kernel": "gemm_x", "args": {}}), "gemm_x"),
        (lambda s: s.update(chunk=100), "multiple of 128"),
        (lambda s: s["consts"].update(max_seq_len=4096), "not this model's"),
    ],
)
def test_a_damaged_prefill_json_is_refused_at_load(tmp_path, damage, match):
    import json

    from tilert_compiler.runtime.artifact import ArtifactError, load_artifact

    path = _compile("tiny-llama").save(tmp_path / "a")
    spec = json.loads((path / "prefill.json").read_text())
    damage(spec)
    (path / "prefill.json").write_text(json.dumps(spec))
    with pytest.raises(ArtifactError, match=match) as e:
        load_artifact(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("n", "pos", "match"), [(0, 0, "empty"), (321, 0, "does not fit")])
def test_the_interpreters_prefill_refuses_an_empty_or_overlong_prompt(n, pos, match):
    cm = _compile("tiny-llama")
    it = Interpreter(cm.artifact, random_weights(cm.config, seed=0))
    with pytest.raises(PrefillError, match=match):
        it.prefill([i % cm.config.vocab for i in range(n)], pos)


def test_random_shapes_plan_or_refuse_in_one_line_and_plans_lower():
    """The prefill plan takes a shape whole or refuses it in one line naming the way out;
    every shape it takes lowers through TileLang (a few drawn at random: each costs ~5 s)."""
    import random

    from tilert_compiler.codegen.prefill import lower_prefill
    from tilert_compiler.models.config import load_config
    from tilert_compiler.passes.prefill import plan_prefill

    rng = random.Random(int(torch.randint(0, 2**31 - 1, ())))
    planned = []
    for _ in range(40):
        kv = rng.choice([1, 2, 4])
        desc = {
            "name": "shape", "family": rng.choice(["llama", "qwen3"]),
            "hidden": 16 * rng.randint(1, 20), "layers": 1, "heads": kv * rng.choice([1, 2, 4]),
            "kv_heads": kv, "head_dim": rng.choice([8, 16, 24, 32, 64, 128]),
            "intermediate": 16 * rng.randint(1, 24), "vocab": 64, "tie_embeddings": True,
            "rope": {"theta": 1e4}, "norm_eps": 1e-6, "max_seq_len": 64,
            "weights": {"random": 0},
        }  # fmt: skip
        if desc["family"] == "llama" and desc["hidden"] % desc["heads"]:
            continue
        cm = tc.compile(load_config(desc), nvcc=False, prefill_chunk=0)
        try:
            planned.append(plan_prefill(cm.config, cm.schedule, 128))
        except PrefillPlanError as e:
            assert "\n" not in str(e) and "--prefill-chunk 0" in str(e)
    assert planned, "no shape was planned: the draw proves nothing"
    for program in rng.sample(planned, min(2, len(planned))):
        lower_prefill(program, "sm_90a")
