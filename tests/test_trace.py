"""The measured timeline's arithmetic, on stamps drawn here (the GPU test checks that the
kernel writes them)."""

import numpy as np
import pytest

import tilert_compiler as tc
from tilert_compiler.ir.tasktable import PROFILE_WORDS
from tilert_compiler.runtime.trace import timeline


def _stamps(n: int, rng: np.random.Generator) -> np.ndarray:
    """Monotone per task: wait, run, loaded, computed, end (ns); weights and chunk time
    that fit inside the work."""
    wait = rng.integers(1_000, 2_000, n)
    run = wait + rng.integers(0, 500, n)
    loaded = run + rng.integers(100, 500, n)
    computed = loaded + rng.integers(1_000, 3_000, n)
    end = computed + rng.integers(0, 200, n)
    weights = rng.integers(0, 400, n)
    chunks = rng.integers(0, 500, n)
    s = np.zeros((n, PROFILE_WORDS), dtype=np.int64)
    s[:, 0], s[:, 1], s[:, 2], s[:, 3] = wait, run, end, weights
    s[:, 4], s[:, 5], s[:, 6] = loaded, computed, chunks
    return s


def test_timeline_reports_chunk_time_per_task_and_per_kind():
    cm = tc.compile("tiny-qwen3", nvcc=False)
    n = len(cm.table.records)
    rng = np.random.default_rng()
    stamps = _stamps(n, rng)
    sm_of = rng.integers(0, 4, n).tolist()
    tl = timeline(stamps, sm_of, cm.table)
    assert np.allclose(tl.chunks, stamps[:, 6] / 1e3)
    assert np.allclose(tl.computed - tl.loaded, (stamps[:, 5] - stamps[:, 4]) / 1e3)
    args = {
        e["args"]["task"]: e["args"]
        for e in tl.chrome_trace()["traceEvents"]
        if "args" in e and "task" in e["args"]
    }
    i = int(rng.integers(n))
    assert args[i]["chunks_us"] == round(stamps[i, 6] / 1e3, 3)
    header, *rows = tl.summary().splitlines()[1:]
    assert "chunks" in header.split()
    col = header.split().index("chunks")
    kinds = [cm.table.variants[int(k)].kind for k in cm.table.records[:, 0]]
    gemv = [i for i, k in enumerate(kinds) if k == "gate_up_silu"]
    row = next(r for r in rows if r.startswith("gate_up_silu"))
    # "run us" is two words in the header; the row has one number per column
    assert float(row.split()[col - 1]) == pytest.approx(stamps[gemv, 6].mean() / 1e3, abs=0.006)


def test_timeline_reads_stamps_of_builds_without_the_chunk_word():
    cm = tc.compile("tiny-llama", nvcc=False)
    n = len(cm.table.records)
    stamps = _stamps(n, np.random.default_rng())[:, :6]
    tl = timeline(stamps, [0] * n, cm.table)
    assert (tl.chunks == 0).all() and tl.span_us > 0


def test_layer_chain_gives_each_op_of_the_layer_its_medians_and_the_period():
    cm = tc.compile("tiny-llama", nvcc=False)
    t = cm.table
    n = len(t.records)
    stamps = _stamps(n, np.random.default_rng())
    tl = timeline(stamps, [0] * n, t)
    labels = [t.variants[int(k)].label for k in t.records[:, 0]]
    layers = t.records[:, 1]
    chain = tl.layer_chain(0).splitlines()
    ops = list(dict.fromkeys(v for v, lay in zip(labels, layers, strict=True) if lay == 0))
    rows = chain[2 : 2 + len(ops)]
    assert [r.split()[0] for r in rows] == [v[:43] for v in ops]  # task order, one row per op
    t0 = stamps[:, 0].min()
    for v, row in zip(ops, rows, strict=True):
        idx = [i for i in range(n) if labels[i] == v and layers[i] == 0]
        words = row.split()
        assert int(words[1]) == len(idx)
        if v.startswith("gate_up"):  # inputs loaded, work done, ends: medians in us
            for w, col in ((2, 4), (3, 5), (4, 2)):
                assert float(words[w]) == pytest.approx(
                    np.median(stamps[idx, col] - t0) / 1e3, abs=0.051
                )
    first = [i for i in range(n) if labels[i] == ops[0]]
    here = np.median([stamps[i, 4] for i in first if layers[i] == 0])
    there = np.median([stamps[i, 4] for i in first if layers[i] == 1])
    assert chain[-1].startswith("layer period")
    assert float(chain[-1].split()[-2]) == pytest.approx((there - here) / 1e3, abs=0.051)
