"""One checker that every path runs: a layout or region an edited IR dump breaks, options
a dump may not set, and an artifact whose manifest disagrees with its task table or
layout are each refused in one line with exit 2, and nothing is written.

Dumps go through `tilert-compile --from-ir` (compiler/pipeline.py's resume_pipeline runs
ir/verify.py's verify_layout); artifacts through `tilert-run` (runtime/artifact.py's
load_artifact). tiny-llama, without nvcc or a prefill program, keeps it fast.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tilert_compiler as tc
from tilert_compiler.cli import main as compile_main
from tilert_compiler.ir.kinds import KINDS
from tilert_compiler.ir.tasktable import F_ARG0, F_KIND
from tilert_compiler.ir.verify import VerifyError, verify_layout
from tilert_compiler.runtime.cli import main as run_main


def one_error_line(err: str, prog: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """tiny-llama's IR dumps and its artifact (no cubin, no prefill program)."""
    root = tmp_path_factory.mktemp("tiny")
    rc = compile_main(
        [
            "tiny-llama",
            "--no-nvcc",
            "--no-run",
            "-q",
            "--prefill-chunk",
            "0",
            "--dump-ir",
            str(root / "ir"),
            "-o",
            str(root / "out"),
        ]
    )
    assert rc == 0
    return root / "ir", root / "out"


def _sub(pattern: str, repl: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        new, n = re.subn(pattern, repl, text, count=1, flags=re.M)
        assert n == 1, f"the dump has no {pattern!r}"
        return new

    return edit


# name -> (edit of 06-layout.tir's text, fragment of the one-line error)
LAYOUT_EDITS: dict[str, tuple[Callable[[str], str], str]] = {
    "buffers_overlap": (
        _sub(r"buffer qkv\.0 act @\d+", "buffer qkv.0 act @32"),
        "buffers x.0 and qkv.0 overlap in arena act",
    ),
    "buffer_outside_its_arena": (
        _sub(r"buffer token act @\d+", "buffer token act @20000"),
        "buffer token (act @20000, 1 elements) ends at 20001, past arena act's",
    ),
    "arena_shrunk": (
        _sub(r"arena act elements=\d+", "arena act elements=10"),
        "past arena act's 10 elements",
    ),
    "write_past_its_tensor": (
        _sub(r"writes=\(x\.0\[0:64\]\)", "writes=(x.0[0:6400])"),
        "t0 writes x.0[0:6400]: dimension 0 runs to 6400, past x.0's 64",
    ),
    "read_below_zero": (
        _sub(r"reads=\(x\.2\[0:64\]\)", "reads=(x.2[-8:64])"),
        "dimension 0 starts below 0",
    ),
    "buffer_unaligned": (
        _sub(r"buffer x\.1 act @\d+", "buffer x.1 act @4833"),
        "buffer x.1 @4833: offsets in arena act must be multiples of 4",
    ),
    "buffer_placed_twice": (
        _sub(r"^(  buffer x\.1 act @\d+)$", r"\1\n\1"),
        "buffer x.1 is placed twice",
    ),
    "weight_in_the_act_arena": (
        _sub(r"buffer model\.norm\.weight weights @\d+", "buffer model.norm.weight act @20000"),
        "buffer model.norm.weight is in arena act; a weight tensor belongs in weights",
    ),
    "buffer_missing": (
        _sub(r"^  buffer token act @\d+\n", ""),
        "tensor token is used by a task but placed in no arena",
    ),
    # the config's max_seq_len past the cache the dump lays out: pos runs off the end
    "max_seq_len_past_the_cache": (
        _sub(r'"max_seq_len": 64', '"max_seq_len": 1000'),
        "const max_seq_len = 64, but the config says max_seq_len: 1000",
    ),
}

LAYOUT_EDITS["config_disagrees_with_the_consts"] = (
    _sub(r'"hidden": 64,', '"hidden": 128,'),
    "const hidden = 64, but the config says hidden: 128",
)
# the config and the consts agree on a longer cache than the cache tensors hold
LAYOUT_EDITS["cache_tensors_shorter_than_max_seq_len"] = (
    lambda text: _sub(r"const max_seq_len = 64", "const max_seq_len = 1000")(
        LAYOUT_EDITS["max_seq_len_past_the_cache"][0](text)
    ),
    "k_cache.0[0:1, 0:pos, 0:16]: dimension 1 runs to 999 (at pos=999), past k_cache.0's 64",
)

OPTION_EDITS: dict[str, tuple[Callable[[str], str], str]] = {
    "fault_skip_task": (
        _sub(r'"fault_skip_task": -1', '"fault_skip_task": 0'),
        "sets the debug option fault_skip_task=0, which a dump does not switch on by itself",
    ),
    "profile": (
        _sub(r'"profile": false', '"profile": true'),
        "sets the debug option profile=True",
    ),
    "option_of_the_wrong_type": (
        _sub(r'"stage_kb": null', '"stage_kb": "32"'),
        "'# options:' option stage_kb must be int or None (got str '32')",
    ),
    "bool_option_as_int": (
        _sub(r'"flags": true', '"flags": 1'),
        "option flags must be bool (got int 1)",
    ),
}


def _from_ir(dump: Path, out: Path, *extra: str) -> int:
    return compile_main(
        ["--from-ir", str(dump), "--no-nvcc", "--no-run", "-q", "-o", str(out), *extra]
    )


@pytest.mark.parametrize("case", sorted({**LAYOUT_EDITS, **OPTION_EDITS}))
def test_an_edited_dump_that_breaks_the_layout_is_one_line_exit_2(case, built, tmp_path, capsys):
    ir, _ = built
    edit, fragment = {**LAYOUT_EDITS, **OPTION_EDITS}[case]
    dump = tmp_path / "06-layout.tir"
    dump.write_text(edit((ir / "06-layout.tir").read_text()))
    out = tmp_path / "out"
    rc = _from_ir(dump, out)
    line = one_error_line(capsys.readouterr().err, "tilert-compile")
    assert rc == 2
    assert fragment in line
    assert not out.exists()


def test_the_unedited_dump_compiles_to_the_same_source(built, tmp_path):
    ir, out = built
    assert _from_ir(ir / "06-layout.tir", tmp_path / "out") == 0
    assert (tmp_path / "out" / "kernel.cu").read_text() == (out / "kernel.cu").read_text()


def test_a_debug_option_from_the_dump_holds_when_the_caller_sets_it(built, tmp_path):
    from tilert_compiler.driver import compile_from_ir

    ir, _ = built
    dump = tmp_path / "06-layout.tir"
    dump.write_text(OPTION_EDITS["fault_skip_task"][0]((ir / "06-layout.tir").read_text()))
    assert compile_from_ir(dump, nvcc=False, fault_skip_task=0).options.fault_skip_task == 0
    dump.write_text(OPTION_EDITS["profile"][0]((ir / "06-layout.tir").read_text()))
    assert _from_ir(dump, tmp_path / "out", "--profile") == 0


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-qwen3"])
def test_the_compilers_own_layout_passes_and_a_longer_cache_does_not(model):
    sched = tc.compile(model, nvcc=False, prefill_chunk=0).schedule
    verify_layout(sched)
    with pytest.raises(VerifyError, match=r"runs to 65 \(at pos=64\), past k_cache.0.s 64"):
        verify_layout(sched, max_seq_len=65)


# ------------------------------------------------------------------ artifacts


def _manifest(change: Callable[[dict], Any]) -> Callable[[Path], None]:
    def damage(a: Path) -> None:
        m = json.loads((a / "manifest.json").read_text())
        change(m)
        (a / "manifest.json").write_text(json.dumps(m))

    return damage


def _tensor(m: dict, name: str) -> dict:
    return next(t for t in m["tensors"] if t["name"] == name)


def _record_arg(kind: str, arg: str, value: int | str) -> Callable[[Path], None]:
    """The first `kind` task's argument `arg` set to `value` in tasks.npz (a tensor's name:
    its offset)."""

    def damage(a: Path) -> None:
        m = json.loads((a / "manifest.json").read_text())
        at = _tensor(m, value)["offset"] if isinstance(value, str) else value
        kinds = [v["kind"] for v in m["variants"]]
        with np.load(a / "tasks.npz") as z:
            arrays = {k: z[k].copy() for k in z.files}
        rec = arrays["records"]
        i = next(i for i in range(len(rec)) if kinds[rec[i, F_KIND]] == kind)
        rec[i, F_ARG0 + KINDS[kind].args.index(arg)] = at
        np.savez(a / "tasks.npz", **arrays)

    return damage


def _stream_past_the_weights(a: Path) -> None:
    with np.load(a / "tasks.npz") as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["stream"][0, 0] = 10**9
    np.savez(a / "tasks.npz", **arrays)


ARTIFACTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "max_seq_len_past_the_cache": (
        _manifest(lambda m: m["config"].update(max_seq_len=1000)),
        "'config.max_seq_len' is 1000, but the KV cache tensor k_cache.0 has shape [2, 64, 16]",
    ),
    "max_seq_len_a_string": (
        _manifest(lambda m: m["config"].update(max_seq_len="64")),
        "manifest config is invalid: config dict: field 'max_seq_len' must be an integer",
    ),
    "attention_for_another_cache": (
        _manifest(
            lambda m: [
                v["static"].update(S=128) for v in m["variants"] if v["kind"] == "attention_decode"
            ]
        ),
        "attention_decode is compiled for S=128",
    ),
    "vocab_past_the_logits": (
        _manifest(lambda m: m["config"].update(vocab=300)),
        "'config.vocab' is 300, but the logits tensor has shape [256]",
    ),
    "arena_shrunk": (
        _manifest(lambda m: m["arenas"].update(act=10)),
        "tensor x.0 (act @0, 64 elements) runs past the act arena's 10 elements",
    ),
    "arenas_not_a_mapping": (
        _manifest(lambda m: m.update(arenas=[1, 2])),
        "'arenas' must give the sizes of weights and act",
    ),
    "arena_size_negative": (
        _manifest(lambda m: m["arenas"].update(weights=-1)),
        "'arenas.weights' must be a count of elements (got -1)",
    ),
    "tensors_overlap": (
        _manifest(lambda m: _tensor(m, "qkv.0").update(offset=32)),
        "tensors x.0 and qkv.0 overlap in the act arena",
    ),
    "tensor_offset_a_string": (
        _manifest(lambda m: _tensor(m, "x.0").update(offset="0")),
        "tensor x.0: 'offset' must be a count (got '0')",
    ),
    "tensor_shape_malformed": (
        _manifest(lambda m: _tensor(m, "x.0").update(shape="64")),
        "tensor x.0: 'shape' must be a list of counts (got '64')",
    ),
    "tensor_in_an_unknown_arena": (
        _manifest(lambda m: _tensor(m, "x.0").update(arena="smem")),
        "tensor x.0: 'arena' must be weights or act (got 'smem')",
    ),
    "tensors_not_a_list": (
        _manifest(lambda m: m.update(tensors={"x.0": 0})),
        "'tensors' must be a list",
    ),
    "variants_malformed": (
        _manifest(lambda m: m.update(variants=[{"kind": "nope"}])),
        "'variants' must be a list of {kind, static}",
    ),
    "norm_eps_a_string": (
        _manifest(lambda m: m.update(norm_eps="1e-5")),
        "'norm_eps' must be a number in (0, 1) (got '1e-5')",
    ),
    "rope_inv_freq_missing_values": (
        _manifest(lambda m: m.update(rope_inv_freq=None)),
        "'rope_inv_freq' must be a list of numbers",
    ),
    "kernel_name_not_a_string": (
        _manifest(lambda m: m.update(kernel=5)),
        "'kernel' must be the kernel's name (got 5)",
    ),
    "options_not_a_mapping": (
        _manifest(lambda m: m.update(options="flags")),
        "'options' must be an object",
    ),
    "record_offset_past_the_arena": (
        _record_arg("linear_residual", "out", 10**8),
        "(linear_residual): argument out=100000000 is out of bounds",
    ),
    "record_weight_offset_negative": (
        _record_arg("norm_linear", "w", -5),
        "(norm_linear): argument w=-5 is out of bounds",
    ),
    "record_sample_vocab": (
        _record_arg("sample", "vocab", 4096),
        "(sample): vocab=4096, not config.vocab's",
    ),
    "record_gemv_input_past_its_tensor": (
        _record_arg("linear_residual", "x", "token"),
        "(linear_residual): x=11072 with 64 elements runs past its tensor",
    ),
    "record_sample_parts": (
        _record_arg("sample", "n_parts", 4096),
        "(sample): parts=9984 with 557056 elements runs past its tensor",
    ),
    "stream_past_the_weights": (
        _stream_past_the_weights,
        "stream entry 0 (1000000000, ",
    ),
}


@pytest.mark.parametrize("case", sorted(ARTIFACTS))
def test_an_artifact_that_disagrees_with_itself_is_one_line_exit_2(case, built, tmp_path, capsys):
    _, out = built
    damaged = tmp_path / case
    shutil.copytree(out, damaged)
    damage, fragment = ARTIFACTS[case]
    damage(damaged)
    before = {p.name: p.read_bytes() for p in damaged.iterdir()}
    rc = run_main([str(damaged), "--max-new-tokens", "2"])
    captured = capsys.readouterr()
    line = one_error_line(captured.err, "tilert-run")
    assert rc == 2
    assert fragment in line
    assert captured.out == ""
    assert {p.name: p.read_bytes() for p in damaged.iterdir()} == before


def test_the_undamaged_artifact_loads(built):
    from tilert_compiler.runtime.artifact import load_artifact

    assert load_artifact(built[1]).manifest["config"]["max_seq_len"] == 64
