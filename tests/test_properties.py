"""Property tests over random valid model shapes and SM counts (hypothesis).

For every shape: the compile succeeds with the verifiers on, the verifiers pass again when
called here, an independent count finds every element of every written tensor written
exactly once (cache rows: once over a whole sequence), and the kernel's shared memory fits
the target. For a few shapes, the CPU interpreter matches transformers in float32.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tilert_compiler as tc
from tilert_compiler.ir.graph import Storage
from tilert_compiler.ir.tile import Bound, Region, TileProgram
from tilert_compiler.ir.verify import verify_program, verify_schedule
from tilert_compiler.models.config import load_config
from tilert_compiler.models.weights import random_weights

SHAPES = 200  # examples for the structural properties
NUMERIC = 10  # examples compared against transformers (each builds an HF model)


@st.composite
def descriptions(draw: st.DrawFn) -> dict[str, Any]:
    """A valid model description in our yaml schema, small enough to compile in ~0.1 s."""
    family = draw(st.sampled_from(["llama", "qwen3"]))
    kv_heads = draw(st.integers(1, 4))
    heads = kv_heads * draw(st.integers(1, 4))
    head_dim = draw(st.sampled_from([8, 16, 32, 64]))  # even, divides 256 threads
    # transformers' LlamaConfig needs heads | hidden; qwen3 decouples the two
    hiddens = [h for h in range(16, 257, 8) if family == "qwen3" or h % heads == 0]
    scaling = None
    if draw(st.booleans()):
        low = draw(st.sampled_from([1.0, 2.0]))
        scaling = {
            "type": "llama3",
            "factor": draw(st.sampled_from([1.0, 8.0, 32.0])),
            "low_freq_factor": low,
            "high_freq_factor": low + draw(st.sampled_from([1.0, 3.0])),
            "original_max_position": draw(st.sampled_from([16, 64, 256])),
        }
    return {
        "name": "prop",
        "family": family,
        "hidden": draw(st.sampled_from(hiddens)),
        "layers": draw(st.integers(1, 3)),
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "intermediate": 8 * draw(st.integers(1, 48)),
        "vocab": 8 * draw(st.integers(1, 64)),
        "tie_embeddings": draw(st.booleans()),
        "rope": {"theta": draw(st.sampled_from([1e4, 5e5, 1e6])), "scaling": scaling},
        "norm_eps": draw(st.sampled_from([1e-5, 1e-6])),
        "max_seq_len": draw(st.integers(8, 256)),
        "target": {"sms": draw(st.integers(1, 40))},
    }


# ------------------------------------------------------------------ an independent count


def _at(b: Bound, pos: int) -> int:
    if isinstance(b, int):
        return b
    sym, off = b
    assert sym == "pos", f"a write bound depends on {sym}"
    return pos + off


def _counts(p: TileProgram, name: str, shape: tuple[int, ...], pos: int) -> np.ndarray:
    count = np.zeros(shape, dtype=np.int32)
    for t in p.tasks:
        for r in t.writes:
            if r.tensor == name:
                count[tuple(slice(_at(lo, pos), _at(hi, pos)) for lo, hi in r.box)] += 1
    return count


def _symbolic(r: Region) -> bool:
    return any(not isinstance(b, int) for dim in r.box for b in dim)


def assert_each_element_written_once(p: TileProgram, max_seq_len: int) -> None:
    """Activations and logits: once per step. Tensors written at `pos` (the KV cache):
    at most once per step and exactly once over positions 0..max_seq_len-1."""
    for decl in p.tensors:
        if decl.storage == Storage.WEIGHT:
            continue
        writes = [r for t in p.tasks for r in t.writes if r.tensor == decl.name]
        assert writes, f"{decl.name} is written by no task"
        if not any(_symbolic(r) for r in writes):
            c = _counts(p, decl.name, decl.shape, 0)
            assert (c == 1).all(), f"{decl.name}: element counts {sorted(set(c.flat))}"
            continue
        total = np.zeros(decl.shape, dtype=np.int32)
        for pos in range(max_seq_len):
            c = _counts(p, decl.name, decl.shape, pos)
            assert c.max() <= 1, f"{decl.name} written twice at pos {pos}"
            total += c
        assert (total == 1).all(), f"{decl.name}: counts over a sequence {sorted(set(total.flat))}"


# ------------------------------------------------------------------ properties


@settings(max_examples=SHAPES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(descriptions())
def test_random_shapes_compile_verify_cover_and_fit(desc):
    cfg = load_config(desc)
    # the decode program (the prefill program: tests/test_prefill_program.py)
    cm = tc.compile(cfg, nvcc=False, prefill_chunk=0)  # runs verify_program and verify_schedule
    verify_program(cm.stages["deps"])
    verify_schedule(cm.schedule)
    assert_each_element_written_once(cm.stages["deps"], cfg.max_seq_len)
    assert len(cm.schedule.sm_lists) == cfg.target.sms
    assert cm.manifest["smem_bytes"] <= cfg.target.smem_per_block


@settings(max_examples=NUMERIC, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(descriptions(), st.integers(0, 2**31 - 1), st.data())
def test_random_shapes_interpret_like_transformers_float32(desc, seed, data):
    from tilert_compiler.models.reference import hf_model, reference_logits

    cfg = load_config(desc)
    cm = tc.compile(cfg, nvcc=False, prefill_chunk=0)
    weights = random_weights(cfg, seed=seed)
    tokens = data.draw(st.lists(st.integers(0, cfg.vocab - 1), min_size=4, max_size=4))
    ours = cm.interpret(tokens, weights=weights)
    ref = reference_logits(hf_model(cfg, weights), torch.tensor(tokens))
    err = (ours - ref).norm(dim=-1) / ref.norm(dim=-1)
    assert not ours.isnan().any()
    assert err.max() <= 1e-4, f"per-step relative L2 {err.tolist()}"


def test_the_independent_count_catches_a_hole_and_a_double_write():
    # The oracle above must be able to fail, or the 200 examples prove nothing.
    cm = tc.compile("tiny-qwen3", nvcc=False)
    p = cm.stages["deps"]
    assert_each_element_written_once(p, cm.config.max_seq_len)
    cache_writer = next(t for t in p.tasks if any(_symbolic(r) for r in t.writes))
    plain_writer = p.tasks[0]
    for t, writes in (
        (plain_writer, ()),  # a hole
        (plain_writer, plain_writer.writes * 2),  # a double write
        (cache_writer, ()),  # cache rows never written
    ):
        tasks = list(p.tasks)
        tasks[t.id] = replace(t, writes=writes)
        with pytest.raises(AssertionError):
            assert_each_element_written_once(p.with_tasks(tasks), cm.config.max_seq_len)
