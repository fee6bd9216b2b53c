"""The prefill program (several prompt tokens per launch, through the same passes) on the
CPU interpreter: the cache it writes and the logits that follow agree with transformers'
float32 forward over the whole prompt, for chunks that are full, partial and start at any
position; and the compiler sizes the chunk to the shared memory."""

import json

import pytest
import torch

import tilert_compiler as tc
from tilert_compiler.codegen.cuda import CodegenError, plan_kernel
from tilert_compiler.codegen.serialize import serialize
from tilert_compiler.models import random_weights
from tilert_compiler.models.reference import hf_model, reference_logits
from tilert_compiler.pipeline import run_pipeline
from tilert_compiler.runtime.artifact import ArtifactError, load_artifact
from tilert_compiler.runtime.interpreter import Interpreter, InterpreterError

CASES = {
    "tiny-llama": {},  # llama3 RoPE scaling, 4 q heads over 2 kv heads
    "tiny-qwen3": {},  # q/k norm
    "tiny-qwen3-tied-gqa4": {"tie_embeddings": True, "heads": 8, "kv_heads": 2},
}


def _compile(case: str, **kw):
    base = case if case in ("tiny-llama", "tiny-qwen3") else "tiny-qwen3"
    return tc.compile(base, overrides=CASES[case] or None, nvcc=False, **kw)


@pytest.mark.parametrize("case", list(CASES))
def test_prefill_then_a_step_matches_the_transformers_forward(case):
    cm = _compile(case)
    rows = cm.prefill.manifest["rows"]
    seed = int(torch.randint(0, 2**31 - 1, ()))
    w = random_weights(cm.config, seed=seed)
    n = 2 * rows + 5  # full chunks and a partial one
    tokens = torch.randint(0, cm.config.vocab, (n,))
    ref = reference_logits(hf_model(cm.config, w), tokens)  # [n, vocab]
    it = Interpreter(cm.artifact, w)
    cut = rows + 3  # two prefill calls: the second starts mid-chunk, on cached rows
    it.prefill(tokens[:cut].tolist(), 0)
    it.prefill(tokens[cut:-1].tolist(), cut)
    ours = it.step(int(tokens[-1]), n - 1)
    err = float((ours - ref[-1]).norm() / ref[-1].norm())
    assert not ours.isnan().any()
    assert err <= 1e-4, f"seed {seed}: relative L2 {err}"


def test_prefill_writes_the_cache_rows_decode_steps_write():
    cm = _compile("tiny-llama")
    w = random_weights(cm.config, seed=int(torch.randint(0, 2**31 - 1, ())))
    tokens = torch.randint(0, cm.config.vocab, (19,)).tolist()
    a, b = Interpreter(cm.artifact, w), Interpreter(cm.artifact, w)
    for pos, t in enumerate(tokens):
        a.step(t, pos)
    b.prefill(tokens, 0)
    n = 0
    for t in cm.artifact.manifest["tensors"]:
        if t["storage"] != "cache":
            continue
        kv, s, hd = t["shape"]
        ca = a.A[t["offset"] : t["offset"] + kv * s * hd].view(kv, s, hd)[:, : len(tokens)]
        cb = b.A[t["offset"] : t["offset"] + kv * s * hd].view(kv, s, hd)[:, : len(tokens)]
        assert not cb.isnan().any(), t["name"]
        torch.testing.assert_close(cb, ca, rtol=1e-4, atol=1e-5)
        n += 1
    assert n == 2 * cm.config.layers


def test_prefill_program_runs_rows_per_task():
    """The prefill table is its own program: more than one token per launch, the decode
    step's tasks without the LM head or the sample, its activations past the decode arena."""
    cm = _compile("tiny-llama")
    pre = cm.prefill
    assert pre.manifest["rows"] > 1 and pre.manifest["kernel"] != cm.manifest["kernel"]
    kinds = {v.kind for v in pre.table.variants}
    assert "sample" not in kinds and "attention_prefill" in kinds
    assert not any(v.get("ARGMAX") for v in pre.table.variants if v.kind == "norm_linear")
    shared = {t["name"]: t["offset"] for t in cm.manifest["tensors"] if t["storage"] != "act"}
    for t in pre.manifest["tensors"]:
        if t["name"] in shared and t["storage"] in ("weight", "cache"):
            assert t["offset"] == shared[t["name"]], t["name"]
        elif t["storage"] == "act":
            assert t["offset"] >= cm.manifest["arenas"]["act"], t["name"]
    assert f"kM = {pre.manifest['rows']};" in pre.source
    assert "task_attention_prefill<" in pre.source


@pytest.mark.parametrize("name", ["llama-3.2-1b", "qwen3-0.6b"])
def test_prefill_rows_are_the_most_that_fit_shared_memory(name):
    cm = tc.compile(name, nvcc=False)
    rows = cm.prefill.manifest["rows"]
    cfg, opts = cm.config, cm.options
    assert rows >= 2 and cm.prefill.manifest["smem_bytes"] <= cfg.target.smem_per_block
    if rows < opts.prefill_rows:  # twice as many would not fit
        sched = run_pipeline(cfg, opts, lambda *_: None, rows=2 * rows, base=cm.schedule)
        with pytest.raises(CodegenError):
            plan_kernel(serialize(sched), cfg.target, ring=opts.weight_ring, rows=2 * rows)


def test_without_a_prefill_program_prompts_run_as_decode_steps():
    cm = _compile("tiny-llama", prefill_rows=0)
    assert cm.prefill is None
    w = random_weights(cm.config, seed=int(torch.randint(0, 2**31 - 1, ())))
    prompt = torch.randint(0, cm.config.vocab, (9,)).tolist()
    it = Interpreter(cm.artifact, w)
    assert it.prefill_rows == 1
    ours = it.generate(prompt, 4)
    with_prefill = _compile("tiny-llama")
    assert Interpreter(with_prefill.artifact, w).generate(prompt, 4) == ours


def test_prefill_past_the_cache_is_a_clear_error():
    cm = _compile("tiny-llama")
    it = Interpreter(cm.artifact, random_weights(cm.config, seed=1))
    s = cm.config.max_seq_len
    with pytest.raises(InterpreterError, match="outside the KV cache"):
        it.prefill([1] * 5, s - 3)


def _move_a_cache_tensor(m: dict) -> None:
    cache = next(t for t in m["tensors"] if t["storage"] == "cache")
    cache["offset"] += 32


def _grow_the_weights(m: dict) -> None:
    m["arenas"]["weights"] += 1


def _another_context(m: dict) -> None:
    cache = next(t for t in m["tensors"] if t["storage"] == "cache")
    cache["shape"][1] *= 2  # [kv_heads, max_seq_len, head_dim]


@pytest.mark.parametrize("damage", [_move_a_cache_tensor, _grow_the_weights, _another_context])
def test_the_artifact_keeps_the_prefill_program(damage, tmp_path):
    cm = _compile("tiny-qwen3")
    cm.save(tmp_path / "a")
    art = load_artifact(tmp_path / "a")
    assert art.prefill is not None
    assert art.prefill.manifest == cm.prefill.manifest
    assert (art.prefill.table.records == cm.prefill.table.records).all()
    # A prefill program laid out for another cache or other weights is refused, not run.
    m = json.loads((tmp_path / "a" / "prefill" / "manifest.json").read_text())
    damage(m)
    (tmp_path / "a" / "prefill" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="not this model's prefill program"):
        load_artifact(tmp_path / "a")
