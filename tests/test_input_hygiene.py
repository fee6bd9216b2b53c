"""Issue 18, items 5-7: sampling numerics, reading text files, and the Python API's errors.

Sampling parameters are finite and in range (one line otherwise), and a temperature too
small to divide by is greedy. Every text file the tool reads goes through one reader whose
failures (encodings, sizes, names the OS refuses, nesting, alias bombs) are one line. The
Python API raises ValueError/TypeError subclasses carrying the CLI's one-line message,
never a raw TypeError, AttributeError or IndexError.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import tilert_compiler as tc
from tilert_compiler.cli import main as compile_main
from tilert_compiler.models.config import ConfigError, ConfigTypeError, load_config
from tilert_compiler.models.text import MAX_DESCRIPTION_BYTES, read_text
from tilert_compiler.options import Options, from_env
from tilert_compiler.runtime.generate import generate
from tilert_compiler.runtime.sampling import (
    GREEDY_BELOW,
    GenerationError,
    RequestTypeError,
    Sampling,
    check_tokens,
    sample_token,
)
from tilert_compiler.runtime.tokenizer import TextCodec, TokenizerError, find_tokenizer


def _one_line(err: str, prog: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def tiny():
    return tc.compile("tiny-llama", nvcc=False, prefill_chunk=0)


# ------------------------------------------------------------------ 5. sampling


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"temperature": float("nan")}, "temperature must be a finite number (got nan)"),
        ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
        ({"temperature": 1e39}, "at most 3.4e38"),
        ({"top_p": float("inf")}, "top_p must be a finite number (got inf)"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"top_k": -3}, "top_k must be in [0, 2^31)"),
        ({"seed": 2**63}, "seed must be in [0, 2^63)"),
    ],
)
def test_sampling_values_out_of_range_are_one_generation_error(kw, fragment):
    with pytest.raises(GenerationError, match=re.escape(fragment)):
        Sampling(**kw)


@pytest.mark.parametrize(
    "kw", [{"temperature": "0.7"}, {"temperature": True}, {"top_k": 2.5}, {"top_p": None}]
)
def test_sampling_values_of_the_wrong_type_are_a_type_error_too(kw):
    with pytest.raises(RequestTypeError) as e:
        Sampling(**kw)
    assert isinstance(e.value, TypeError) and isinstance(e.value, ValueError)
    assert "\n" not in str(e.value)


def test_sampling_takes_numpy_and_tensor_scalars_as_plain_numbers():
    s = Sampling(np.float32(0.5), np.int64(3), torch.tensor(0.9), torch.tensor(7))
    assert (s.temperature, s.top_k, s.seed) == (0.5, 3, 7)
    assert type(s.top_k) is int and abs(s.top_p - 0.9) < 1e-6


@pytest.mark.parametrize("temperature", [1e-39, 1e-45, GREEDY_BELOW / 2])
def test_a_temperature_too_small_to_divide_by_is_greedy(temperature):
    logits = torch.randn(300, generator=torch.Generator().manual_seed(1)) * 5
    s = Sampling(temperature=temperature, seed=3)
    assert s.greedy
    best = int(logits.argmax())
    assert all(sample_token(logits, s, pos) == best for pos in range(20))


def test_logits_that_overflow_when_divided_sample_the_largest():
    # A temperature above GREEDY_BELOW, but logits so large that z = l / t overflows:
    # the draw would be NaN arithmetic; it is the argmax instead.
    logits = torch.zeros(50)
    logits[17], logits[3] = 3e30, 2e30
    s = Sampling(temperature=1e-8, seed=0)
    assert not s.greedy
    assert {sample_token(logits, s, pos) for pos in range(10)} == {17}


def test_sampling_at_an_ordinary_temperature_still_draws():
    logits = torch.zeros(64)  # flat: every token equally likely
    s = Sampling(temperature=1.0, seed=5)
    assert len({sample_token(logits, s, pos) for pos in range(64)}) > 10


def test_generate_refuses_bad_sampling_before_stepping():
    steps = []

    def step(tok, pos):
        steps.append(pos)
        return torch.zeros(16)

    with pytest.raises(GenerationError, match="finite"):
        generate(step, [1], 2, max_seq_len=8, vocab=16, rules=Sampling(float("nan")))
    assert steps == []


def test_interpreter_generate_refuses_nan_temperature(tiny):
    from tilert_compiler.models.weights import random_weights
    from tilert_compiler.runtime.interpreter import Interpreter

    it = Interpreter(tiny.artifact, random_weights(tiny.config, seed=0))
    for bad in ({"temperature": float("nan")}, {"top_p": 2.0}, {"top_k": "5"}):
        with pytest.raises(GenerationError):
            it.generate([1, 2], 2, **bad)
    # 1e-39 is greedy: the same tokens as temperature 0
    assert it.generate([1, 2], 3, temperature=1e-39, seed=9) == it.generate([1, 2], 3)


def test_tilert_run_temperature_nan_is_one_line_exit_2(tmp_path, capsys):
    from tilert_compiler.runtime.cli import main as run_main

    art = tmp_path / "a"
    tc.compile("tiny-llama", nvcc=torch.cuda.is_available(), prefill_chunk=0).save(art)
    for args, fragment in (
        (["--temperature", "nan"], "temperature must be a finite number (got nan)"),
        (["--top-p", "-0.1"], "top_p must be in (0, 1]"),
    ):
        rc = run_main([str(art), *args])
        captured = capsys.readouterr()
        assert rc == 2 and captured.out == ""
        assert fragment in _one_line(captured.err, "tilert-run")
    rc = run_main([str(art), "--temperature", "1e-39", "-n", "3"])
    greedy_like = capsys.readouterr().out
    assert rc == 0 and run_main([str(art), "-n", "3"]) == 0
    line = next(ln for ln in greedy_like.splitlines() if ln.startswith("generated:"))
    assert line in capsys.readouterr().out  # the same tokens as greedy


# ------------------------------------------------------------------ 6. text


def _yaml_text() -> str:
    from tilert_compiler.models.config import BUNDLED_DIR

    return (BUNDLED_DIR / "tiny-llama.yaml").read_text()


def test_a_description_over_the_size_limit_is_refused_before_parsing(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    big.write_text(_yaml_text() + "#" * MAX_DESCRIPTION_BYTES)
    out = tmp_path / "out"
    rc = compile_main([str(big), "--no-run", "--no-nvcc", "-q", "-o", str(out)])
    assert rc == 2 and not out.exists()
    assert "more than 1 MiB; too large for a model description" in _one_line(
        capsys.readouterr().err, "tilert-compile"
    )


@pytest.mark.parametrize("arg", ["n" * 300, "d/" + "n" * 300 + "/model.yaml"])
def test_a_name_over_255_characters_is_one_line(arg, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = compile_main([arg, "--no-run", "--no-nvcc", "-q", "-o", str(tmp_path / "out")])
    line = _one_line(capsys.readouterr().err, "tilert-compile")
    assert rc == 2 and len(line) < 400  # the name is quoted in part
    assert "File name too long" in line or "no such file" in line or "neither a file" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_utf8_bom_is_harmless(tmp_path):
    f = tmp_path / "model.yaml"
    f.write_bytes(b"\xef\xbb\xbf" + _yaml_text().encode())
    assert load_config(f) == load_config("tiny-llama")


def test_read_text_names_the_file_in_every_failure(tmp_path):
    (tmp_path / "bin").write_bytes(b"\x00\xff\x00")
    (tmp_path / "dir").mkdir()
    cases = {
        tmp_path / "bin": "not UTF-8 text",
        tmp_path / "dir": "is a folder",
        tmp_path / "nothing": "cannot read (No such file or directory)",
        tmp_path / ("x" * 300): "(File name too long)",
        str(tmp_path / "nul\0byte"): "(embedded null byte)",
    }
    for path, fragment in cases.items():
        with pytest.raises(TokenizerError) as e:
            read_text(path, "tokenizer.json", error=TokenizerError)
        assert fragment in str(e.value) and "\n" not in str(e.value)
        assert len(str(e.value)) < 400


def test_a_pipe_is_refused_not_read(tmp_path, capsys):
    fifo = tmp_path / "model.yaml"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    rc = compile_main([str(fifo), "--no-run", "-q", "-o", str(tmp_path / "out")])
    assert rc == 2 and "not a regular file" in _one_line(capsys.readouterr().err, "tilert-compile")
    with pytest.raises(TokenizerError, match="not a regular file"):
        read_text(fifo, "tokenizer.json", error=TokenizerError)


def test_an_alias_bomb_through_the_python_api_is_refused_fast():
    # The same shape as the corpus's alias_bomb.yaml, but built in Python: 9 levels of 9
    # shared lists. Rendering it for the message used to take all memory.
    bomb: list = ["lol"] * 9
    for _ in range(8):
        bomb = [bomb] * 9
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"field 'name' must be letters.*\(got \[\[\[\["):
        load_config({**load_config("tiny-llama").to_dict(), "name": bomb})
    assert time.perf_counter() - t0 < 1.0


def test_a_self_referencing_dict_is_shown_without_recursing():
    d = load_config("tiny-llama").to_dict()
    loop: dict = {"theta": 1.0}
    loop["scaling"] = loop
    d["rope"] = loop
    with pytest.raises(ConfigError) as e:
        load_config(d)
    assert "\n" not in str(e.value)


def test_a_binary_or_utf16_tokenizer_is_one_line(tmp_path):
    for name, data in (
        ("bin.json", bytes(range(256))),
        ("utf16.json", '{"version": "1.0"}'.encode("utf-16")),
    ):
        f = tmp_path / name
        f.write_bytes(data)
        with pytest.raises(TokenizerError) as e:
            TextCodec(f, vocab=16)
        assert name in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TokenizerError, match="File name too long"):
        find_tokenizer(tmp_path / ("t" * 300))


def test_a_binary_ir_dump_is_one_line(tmp_path, capsys):
    dump = tmp_path / "04-layout.tir"
    dump.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff")
    rc = compile_main(["--from-ir", str(dump), "--no-run", "-q", "-o", str(tmp_path / "out")])
    line = _one_line(capsys.readouterr().err, "tilert-compile")
    assert rc == 2 and "04-layout.tir: not UTF-8 text" in line
    assert not (tmp_path / "out").exists()


def test_every_corpus_message_is_short():
    # Messages quote at most a short prefix of a value (and of a path): none of the corpus's
    # descriptions, whatever they hold, gives a line longer than a few hundred characters.
    corpus = Path(__file__).parent / "bad_inputs"
    for case in sorted(p for p in corpus.iterdir() if p.name != "README.md"):
        try:
            load_config(case)
        except ConfigError as e:
            assert len(str(e)) < 400 and "\n" not in str(e), case.name


# ------------------------------------------------------------------ 7. the Python API


@pytest.mark.parametrize("source", [42, None, 3.5, b"tiny-llama", ["tiny-llama"], object()])
def test_compile_of_a_wrong_type_is_a_config_type_error(source):
    with pytest.raises(ConfigTypeError) as e:
        tc.compile(source, nvcc=False)
    assert isinstance(e.value, TypeError) and isinstance(e.value, ConfigError)
    assert "a model is a model.yaml or config.json path" in str(e.value)


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"stage_kb": "32"}, "option stage_kb must be int or None (got str '32')"),
        ({"weight_ring": 1}, "option weight_ring must be bool (got int 1)"),
        ({"attn_splits": 2.0}, "option attn_splits must be int or None (got float"),
        ({"nvcc": None}, "option nvcc must be bool (got NoneType"),
        ({"no_such_option": 1}, "unknown option(s) no_such_option; known:"),
        ({"options": {"nvcc": False}}, "options must be a tilert_compiler.Options (got dict)"),
        ({"overrides": ["layers", 1]}, "overrides must be a dict in the model.yaml schema"),
    ],
)
def test_options_of_the_wrong_type_are_one_config_type_error(kw, fragment):
    with pytest.raises(ConfigTypeError) as e:
        tc.compile("tiny-llama", **{"nvcc": False, **kw})
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_fp8_gemv_is_one_line_naming_the_choices():
    with pytest.raises(ConfigError) as e:
        tc.compile("tiny-llama", nvcc=False, quantize="fp8", fp8_gemv="wgmma")
    assert "option fp8_gemv must be ffma or mma (got 'wgmma')" in str(e.value)
    assert "\n" not in str(e.value)


def test_options_take_numpy_integers():
    assert Options(stage_kb=np.int64(16)).stage_kb == 16
    assert type(Options(stage_kb=np.int64(16)).stage_kb) is int


@pytest.mark.parametrize(
    "ids, err, fragment",
    [
        ([[1, 2], [3, 4]], RequestTypeError, "flat sequence of integers (item 0 is list)"),
        ([], GenerationError, "at least one token"),
        ("hello", RequestTypeError, "sequence of token ids (got str)"),
        ([1, 2.5], RequestTypeError, "(item 1 is float)"),
        ([1, True], RequestTypeError, "(item 1 is bool)"),
        ([1, 256], GenerationError, "token 256 is outside the vocabulary (0..255)"),
        ([-1], GenerationError, "token -1 is outside the vocabulary"),
        (list(range(65)), GenerationError, "the KV cache holds 64"),
        (torch.ones(2, 2, dtype=torch.long), RequestTypeError, "(item 0 is list)"),
        (None, RequestTypeError, "(got NoneType)"),
    ],
)
def test_interpret_refuses_bad_token_ids_in_one_line(tiny, ids, err, fragment):
    with pytest.raises(err) as e:
        tiny.interpret(ids)
    assert isinstance(e.value, ValueError) and fragment in str(e.value)


def test_interpret_takes_a_tensor_or_an_array_of_ids(tiny):
    ref = tiny.interpret([5, 7])
    assert torch.equal(tiny.interpret(torch.tensor([5, 7])), ref)
    assert torch.equal(tiny.interpret(np.array([5, 7])), ref)


def test_interpret_refuses_weights_of_the_wrong_type(tiny):
    from tilert_compiler.models.weights import random_weights

    with pytest.raises(ConfigTypeError, match="weights must be a dict"):
        tiny.interpret([1], weights=[1, 2])
    w = random_weights(tiny.config, seed=0)
    w["model.norm.weight"] = w["model.norm.weight"].tolist()
    with pytest.raises(ConfigTypeError, match="'model.norm.weight' must be a torch.Tensor"):
        tiny.interpret([1], weights=w)


def test_check_tokens_returns_plain_ints():
    assert check_tokens(np.array([1, 2], dtype=np.int32), 4) == [1, 2]
    assert all(type(t) is int for t in check_tokens(torch.tensor([3]), 4))


@pytest.mark.parametrize(
    "value, ring", [("0", True), ("1", False), ("true", False), ("False", True), ("", True)]
)
def test_tilert_no_weight_ring_reads_its_value(value, ring, monkeypatch):
    monkeypatch.setenv("TILERT_NO_WEIGHT_RING", value)
    assert from_env().weight_ring is ring


@pytest.mark.parametrize(
    "var, value, field",
    [
        ("TILERT_NO_CACHE_PREFETCH", "0", ("cache_prefetch", True)),
        ("TILERT_NO_CACHE_PREFETCH", "on", ("cache_prefetch", False)),
        ("TILERT_FLAGS", "0", ("flags", False)),
    ],
)
def test_environment_switches_parse_1_0_true_false(var, value, field, monkeypatch):
    monkeypatch.setenv(var, value)
    assert getattr(from_env(), field[0]) is field[1]


def test_an_environment_switch_that_is_not_a_boolean_is_one_line_exit_2(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("TILERT_NO_WEIGHT_RING", "maybe")
    with pytest.raises(ConfigError, match="TILERT_NO_WEIGHT_RING must be 1 or 0"):
        tc.compile("tiny-llama", nvcc=False)
    out = tmp_path / "out"
    rc = compile_main(["tiny-llama", "--no-run", "--no-nvcc", "-q", "-o", str(out)])
    line = _one_line(capsys.readouterr().err, "tilert-compile")
    assert rc == 2 and "(got 'maybe')" in line and not out.exists()


def test_the_api_error_is_the_cli_line(tmp_path, capsys):
    # The same message through both doors: `tilert-compile X` prints str(e) of tc.compile(X).
    case = Path(__file__).parent / "bad_inputs" / "alias_bomb.yaml"
    with pytest.raises(ConfigError) as e:
        tc.compile(case, nvcc=False)
    assert compile_main([str(case), "--no-run", "-q", "-o", str(tmp_path / "o")]) == 2
    assert _one_line(capsys.readouterr().err, "tilert-compile") == (
        f"tilert-compile: error: {e.value}"
    )


def test_stop_ids_of_the_wrong_type_are_one_line(tiny):
    from tilert_compiler.models.weights import random_weights
    from tilert_compiler.runtime.interpreter import Interpreter

    it = Interpreter(tiny.artifact, random_weights(tiny.config, seed=0))
    for stop_ids, err in (("5", RequestTypeError), ([[5]], RequestTypeError), ([999], None)):
        with pytest.raises(err or GenerationError):
            it.generate([1, 2], 2, stop_ids=stop_ids)
    assert len(it.generate([1, 2], 2, stop_ids=np.array([], dtype=np.int64))) == 2


def test_progress_and_dump_path_of_the_wrong_type_are_config_type_errors():
    from tilert_compiler.driver import compile_from_ir

    with pytest.raises(ConfigTypeError, match="progress must be a function"):
        tc.compile("tiny-llama", nvcc=False, progress="loud")
    with pytest.raises(ConfigTypeError, match="path must be an IR dump file's path"):
        compile_from_ir(7)
