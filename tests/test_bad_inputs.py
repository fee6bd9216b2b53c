"""Bad input is refused in one line: the corpus in tests/bad_inputs/, damaged artifacts, bad
command lines, and a fuzzer over descriptions.

Every case: exit code 2, exactly one line on stderr starting `tilert-compile: error:` or
`tilert-run: error:` that names what is wrong (the fragment in the tables below), no
traceback, and no output folder left behind. The CLIs run in-process through their
`main(argv)`; two subprocess runs prove the exit codes end to end.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tilert_compiler as tc
from tilert_compiler.cli import main as compile_main
from tilert_compiler.errors import USER_ERRORS
from tilert_compiler.models.config import BUNDLED_DIR, load_config
from tilert_compiler.runtime.cli import main as run_main

CORPUS = Path(__file__).parent / "bad_inputs"

# file in tests/bad_inputs/ -> a fragment the one-line error must contain
DESCRIPTIONS = {
    # our model.yaml: structure
    "missing_hidden.yaml": "field 'hidden' is missing",
    "missing_rope.yaml": "field 'rope' is missing",
    "missing_rope_theta.yaml": "field 'rope.theta' is missing",
    "unknown_field_typo.yaml": "field 'hiden' is not a known field; did you mean 'hidden'?",
    "not_a_mapping.yaml": "must be a mapping of fields (got list)",
    "empty.yaml": "must be a mapping of fields (got NoneType)",
    "invalid_yaml.yaml": "not valid YAML",
    "rope_not_a_mapping.yaml": "field 'rope' must be a mapping (got 10000)",
    # types and ranges
    "hidden_is_a_string.yaml": "field 'hidden' must be an integer (got 'sixty-four')",
    "heads_is_a_float.yaml": "field 'heads' must be an integer (got 4.5)",
    "heads_is_a_bool.yaml": "field 'heads' must be an integer (got true)",
    "layers_negative.yaml": "field 'layers' must be an integer in [1, 1024] (got -2)",
    "vocab_zero.yaml": "field 'vocab' must be an integer in [1, 1048576] (got 0)",
    "hidden_too_large.yaml": "field 'hidden' must be an integer in [1, 65536] (got 6400000)",
    "tie_embeddings_not_bool.yaml": "field 'tie_embeddings' must be true or false",
    "norm_eps_negative.yaml": "field 'norm_eps' must be in (0, 1)",
    "name_escapes_folder.yaml": "field 'name' must be letters, digits",
    # shapes the kernel cannot tile
    "hidden_not_multiple_of_8.yaml": "field 'hidden' must be a multiple of 8 (got 60)",
    "heads_not_multiple_of_kv_heads.yaml": "'heads' (4) must be a multiple of 'kv_heads' (3)",
    "hidden_not_multiple_of_heads.yaml": "'hidden' (64) must be a multiple of 'heads' (6)",
    "head_dim_odd.yaml": "field 'head_dim' must be a multiple of 8",
    "head_dim_too_large.yaml": "field 'head_dim' must be an integer in [8, 256] (got 512)",
    "max_seq_len_over_limit.yaml": "field 'max_seq_len' must be an integer in [1, 32768]",
    "smem_too_small_for_the_ring.yaml": "the weight ring needs 2 stages of 32768 bytes",
    # unsupported features
    "unknown_family.yaml": "field 'family' must be one of llama, qwen3 (got 'mistral')",
    "bad_dtype.yaml": "field 'dtype' must be one of bf16 (got 'fp8')",
    "qk_norm_on_llama.yaml": "field 'qk_norm' must be false for family llama",
    "rope_theta_zero.yaml": "field 'rope.theta' must be > 0",
    "rope_scaling_unknown_type.yaml": "field 'rope.scaling.type' must be one of llama3",
    "rope_high_freq_below_low.yaml": "'rope.scaling.high_freq_factor' (0.5) must be greater than",
    # target and weights
    "bad_target_arch.yaml": "field 'target.arch' must be one of sm_90, sm_90a (got 'sm_80')",
    "target_sms_zero.yaml": "field 'target.sms' must be an integer in [1, 1024] (got 0)",
    "threads_not_multiple_of_32.yaml": "'target.threads_per_block' must be a multiple of 32",
    "weights_path_missing.yaml": "field 'weights.path' must be an existing folder",
    "weights_random_and_path.yaml": "must set exactly one of 'random' or 'path'",
    "weights_seed_negative.yaml": "field 'weights.random' must be an integer in [0,",
    # Hugging Face config.json
    "hf_unsupported_model_type.json": "field 'model_type' must be one of llama, qwen3",
    "hf_sliding_window.json": "field 'use_sliding_window' must be false",
    "hf_layer_types_sliding.json": "field 'layer_types' must all be 'full_attention'",
    "hf_attention_bias.json": "field 'attention_bias' must be false",
    "hf_mlp_bias.json": "field 'mlp_bias' must be false",
    "hf_bad_rope_type.json": "field 'rope_type' must be 'default' or 'llama3' (got 'yarn')",
    "hf_llama3_rope_missing_factor.json": "field 'rope_parameters.factor' is missing",
    "hf_rope_scaling_not_a_mapping.json": "field 'rope_scaling' must be a mapping",
    "hf_missing_hidden_size.json": "field 'hidden_size' is missing",
    "hf_gelu_activation.json": "field 'hidden_act' must be 'silu' (got 'gelu')",
    "hf_heads_zero.json": "field 'heads' (from 'num_attention_heads') must be an integer",
    "hf_kv_heads_not_dividing.json": "(4) must be a multiple of 'kv_heads' (3)",
    "hf_not_json.json": "not valid JSON",
    # Hugging Face folders: a valid config.json beside weights that do not fit it
    "hf_weights_wrong_shape": "'model.layers.0.self_attn.q_proj.weight' has shape [16, 8], "
    "the config needs [16, 16]",
    "hf_weights_missing_tensor": "tensor 'model.norm.weight' [16] is missing",
    "hf_weights_foreign_tensor": "'model.layers.0.self_attn.q_proj.bias' is not a weight of",
    "hf_weights_not_safetensors": "model.safetensors: not a readable safetensors file",
    # text: every file goes through one reader (encoding, size, depth, aliases, duplicates)
    "binary_file.yaml": "binary_file.yaml: not UTF-8 text (byte 0x80 at offset 128): a binary file",
    "latin1.yaml": "latin1.yaml: not UTF-8 text (byte 0xe1 at offset 80): another encoding",
    "hf_utf16.json": "hf_utf16.json: is UTF-16 text; save it as UTF-8",
    "utf16_without_bom.yaml": "utf16_without_bom.yaml: holds NUL bytes: a binary file (or UTF-16",
    "alias_bomb.yaml": "holds 9.26e+08 values once its aliases are expanded, more than 100000",
    "recursive_alias.yaml": "an alias refers to itself (line 3)",
    "deep_nesting.yaml": "deep_nesting.yaml: nested deeper than 32 levels (line 2)",
    "hf_deep_nesting.json": "hf_deep_nesting.json: nested deeper than 32 levels",
    "duplicate_key.yaml": "key 'hidden' appears twice in one mapping (line 5)",
    "hf_duplicate_key.json": "key 'hidden_size' appears twice in one object",
    "huge_integer.yaml": "not valid YAML: an integer of more than 4300 digits",
    "hf_huge_integer.json": "not valid JSON: an integer of more than 4300 digits",
    "impossible_date.yaml": "not valid YAML: month must be in 1..12",
    "long_value.yaml": "field 'family' must be one of llama, qwen3 (got 'xxxxxxxxxxxxx",
    "long_unknown_key.yaml": "field 'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...'",
    "python_tag.yaml": "could not determine a constructor for the tag",
    "weights_none_not_text.yaml": "field 'weights.none' must be text (got 5)",
    # weights: the index decides which files are read; names, dtypes checked from headers
    "hf_weights_duplicate_across_shards": "is in both model-a.safetensors and model-b",
    "hf_weights_index_missing_shard": "names model-00002-of-00002.safetensors, which is not in",
    "hf_weights_index_disagrees": "is here too, but model.safetensors.index.json puts it in",
    "hf_weights_index_unlisted_tensor": "'model.norm.weight' is not listed in model.safetensors",
    "hf_weights_index_tensor_not_in_shard": "'model.norm.weight' is missing, but model.safetensors",
    "hf_weights_index_not_json": "model.safetensors.index.json: not valid JSON",
    "hf_weights_index_no_weight_map": "field 'weight_map' must be a mapping of tensor names",
    "hf_weights_index_shard_escapes": "shard '../model.safetensors' must be a file name",
    "hf_weights_int8": "'model.layers.0.mlp.up_proj.weight' is I8; weights must be floating",
    "hf_weights_bool": "'model.layers.0.mlp.up_proj.weight' is BOOL; weights must be floating",
    "hf_weights_fp8": "'model.layers.0.mlp.up_proj.weight' is F8_E4M3, but the config has no "
    "quantization",
    "weights_path_only_pytorch_bin": "field 'weights.path' must hold *.safetensors files",
}


def one_error_line(err: str, prog: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


def test_the_corpus_is_the_table():
    on_disk = {p.name for p in CORPUS.iterdir() if p.name != "README.md"}
    assert on_disk == set(DESCRIPTIONS)
    readme = (CORPUS / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in on_disk), "README.md must list every case"


@pytest.mark.parametrize("case", sorted(DESCRIPTIONS))
def test_bad_description_is_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    out = tmp_path / "out"
    rc = compile_main([str(CORPUS / case), "--no-run", "--no-nvcc", "-q", "-o", str(out)])
    line = one_error_line(capsys.readouterr().err, "tilert-compile")
    assert rc == 2
    assert DESCRIPTIONS[case] in line
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # not even a temporary sibling


@pytest.mark.parametrize("kb", ["0", "200"])
def test_a_ring_stage_size_outside_1_to_128_kib_is_one_line_exit_2(kb, tmp_path, capsys):
    out = tmp_path / "out"
    rc = compile_main(["tiny-llama", "--stage-kb", kb, "--no-run", "-q", "-o", str(out)])
    line = one_error_line(capsys.readouterr().err, "tilert-compile")
    assert rc == 2 and f"stage_kb must be 1..128 KiB (got {kb})" in line
    assert not out.exists()
    with pytest.raises(tc.ConfigError, match="1..128"):
        tc.compile("tiny-llama", nvcc=False, stage_kb=int(kb))


def test_the_weight_folders_fail_for_their_weights_not_their_config(tmp_path):
    # The same config.json beside correct weights compiles: the corpus cases test weights.
    from safetensors.torch import save_file

    from tilert_compiler.models.weights import random_weights

    shutil.copy(CORPUS / "hf_weights_wrong_shape" / "config.json", tmp_path)
    save_file(random_weights(load_config(tmp_path), 0), str(tmp_path / "model.safetensors"))
    cfg = load_config(tmp_path)
    assert cfg.weights.path == str(tmp_path.resolve())
    tc.compile(cfg, nvcc=False, prefill_chunk=0)  # hidden 16: no prefill program


# ------------------------------------------------------------------ artifacts


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """tiny-llama compiled with nvcc, so there is a real cubin to damage."""
    path = tmp_path_factory.mktemp("artifact") / "tiny-llama"
    cm = tc.compile("tiny-llama")
    if cm.cubin is None:  # CI has nvcc; a machine without one cannot build this fixture
        pytest.skip("needs nvcc to build a cubin")
    cm.save(path)
    return path


def _edit_manifest(change: Callable[[dict], Any]) -> Callable[[Path], None]:
    def damage(a: Path) -> None:
        m = json.loads((a / "manifest.json").read_text())
        change(m)
        (a / "manifest.json").write_text(json.dumps(m))

    return damage


def _cubin_for_sm80(a: Path) -> None:
    elf = bytearray((a / "kernel.cubin").read_bytes())
    elf[49] = 80  # e_flags bits 8..15: the SM version (CUDA ELF ABI 8)
    (a / "kernel.cubin").write_bytes(bytes(elf))


def _truncate_cubin(a: Path) -> None:
    elf = (a / "kernel.cubin").read_bytes()
    (a / "kernel.cubin").write_bytes(elf[: len(elf) * 2 // 3])


# name -> (damage, fragment of the one-line error)
ARTIFACTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "format_version": (
        _edit_manifest(lambda m: m.update(format=99)),
        "artifact format 99, this runtime reads format 5",
    ),
    "built_for_another_arch": (
        _edit_manifest(lambda m: m.update(arch="sm_80")),
        "built for sm_80; this runtime runs sm_90, sm_90a",
    ),
    "cubin_for_another_arch": (_cubin_for_sm80, "built for sm_80, the manifest says sm_90a"),
    "truncated_cubin": (_truncate_cubin, "kernel.cubin: truncated"),
    "cubin_not_elf": (
        lambda a: (a / "kernel.cubin").write_bytes(b"not an ELF file" * 8),
        "kernel.cubin: not a 64-bit ELF cubin",
    ),
    "missing_tasks_npz": (lambda a: (a / "tasks.npz").unlink(), "no tasks.npz"),
    "tasks_npz_garbage": (
        lambda a: (a / "tasks.npz").write_bytes(b"garbage"),
        "tasks.npz: not a numpy .npz archive",
    ),
    "manifest_not_json": (
        lambda a: (a / "manifest.json").write_text("{format: 1"),
        "manifest.json: not valid JSON",
    ),
    "manifest_missing": (lambda a: (a / "manifest.json").unlink(), "no manifest.json"),
    "manifest_missing_key": (
        _edit_manifest(lambda m: m.pop("tensors")),
        "manifest.json: missing 'tensors'",
    ),
    "task_count_disagrees": (
        _edit_manifest(lambda m: m.update(tasks=m["tasks"] + 1)),
        "records has shape",
    ),
    "sm_count_disagrees": (
        _edit_manifest(lambda m: m.update(sms=m["sms"] * 2)),
        "sm_start has shape",
    ),
    "config_damaged": (
        _edit_manifest(lambda m: m["config"].update(hidden="64")),
        "manifest config is invalid: config dict: field 'hidden' must be an integer",
    ),
}


@pytest.mark.parametrize("case", sorted(ARTIFACTS))
def test_damaged_artifact_is_one_line_exit_2(case, artifact, tmp_path, capsys):
    damaged = tmp_path / case
    shutil.copytree(artifact, damaged)
    damage, fragment = ARTIFACTS[case]
    damage(damaged)
    before = sorted(p.name for p in damaged.iterdir())
    rc = run_main([str(damaged), "--max-new-tokens", "2"])
    captured = capsys.readouterr()
    line = one_error_line(captured.err, "tilert-run")
    assert rc == 2
    assert fragment in line
    assert captured.out == ""  # refused before any decoding
    assert sorted(p.name for p in damaged.iterdir()) == before


RUN_ARGS = {
    "too_many_new_tokens": (
        ["--prompt-ids", "1,2,3", "--max-new-tokens", "63"],
        "--max-new-tokens 63 after a 3-token prompt needs 65 cache positions; "
        "the artifact's max_seq_len is 64",
    ),
    "zero_new_tokens": (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    "prompt_outside_vocab": (["--prompt-ids", "1,999"], "token 999 is outside the vocabulary"),
    "prompt_not_ids": (["--prompt-ids", "hello"], "must be comma-separated integers"),
    "weights_folder_missing": (
        ["--weights", "/no/such/folder"],
        "--weights /no/such/folder: not a folder",
    ),
    "text_prompt_without_tokenizer": (["--prompt", "hello"], "--prompt needs a tokenizer.json"),
    "too_many_stop_ids": (
        ["--stop-ids", ",".join(str(i) for i in range(65))],
        "--stop-ids: at most 64 (got 65)",
    ),
    "tokenizer_not_there": (
        ["--prompt", "hello", "--tokenizer", "/no/such/tok"],
        "--tokenizer /no/such/tok: no tokenizer.json there",
    ),
    # sampling: finite and in range, checked before any weight is loaded
    "temperature_nan": (["--temperature", "nan"], "temperature must be a finite number (got nan)"),
    "temperature_inf": (["--temperature", "inf"], "temperature must be a finite number (got inf)"),
    "temperature_negative": (["--temperature", "-0.5"], "temperature must be a finite number >= 0"),
    "temperature_beyond_float32": (
        ["--temperature", "1e39"],
        "at most 3.4e38, the kernel's float32",
    ),
    "top_p_zero": (["--top-p", "0"], "top_p must be in (0, 1], 1 for all tokens (got 0)"),
    "top_p_above_one": (["--top-p", "1.5"], "top_p must be in (0, 1], 1 for all tokens (got 1.5)"),
    "top_p_nan": (["--top-p", "nan"], "top_p must be a finite number (got nan)"),
    "top_k_negative": (["--top-k", "-1"], "top_k must be in [0, 2^31), 0 for all tokens (got -1)"),
    "top_k_past_int32": (["--top-k", str(2**31)], "top_k must be in [0, 2^31)"),
    "seed_negative": (["--seed", "-1"], "seed must be in [0, 2^63) (got -1)"),
    # names the OS refuses: one line, not an OSError
    "weights_name_too_long": (["--weights", "w" * 300], "cannot look at it (File name too long)"),
    "tokenizer_name_too_long": (
        ["--prompt", "hi", "--tokenizer", "t" * 300],
        "cannot look at it (File name too long)",
    ),
}


@pytest.mark.parametrize("case", sorted(RUN_ARGS))
def test_bad_run_arguments_are_one_line_exit_2(case, artifact, capsys):
    args, fragment = RUN_ARGS[case]
    rc = run_main([str(artifact), *args])
    captured = capsys.readouterr()
    assert fragment in one_error_line(captured.err, "tilert-run")
    assert rc == 2 and captured.out == ""


def test_a_malformed_option_is_one_line_too(artifact, capsys):
    with pytest.raises(SystemExit) as e:
        run_main([str(artifact), "--max-new-tokens", "many"])
    assert e.value.code == 2
    assert "invalid int value: 'many'" in one_error_line(capsys.readouterr().err, "tilert-run")


def test_tilert_run_decodes_greedily_like_the_interpreter(artifact, capsys):
    assert run_main([str(artifact), "--prompt-ids", "5,7", "--max-new-tokens", "3"]) == 0
    out, err = capsys.readouterr()
    generated = next(ln for ln in out.splitlines() if ln.startswith("generated:"))
    tokens = [int(t) for t in generated.split(":")[1].split(",")]
    # The same greedy loop, through the compiler's own interpreter entry point.
    cm = tc.compile("tiny-llama", nvcc=False)
    fed = [5, 7]
    for _ in range(3):
        fed.append(int(cm.interpret(fed)[-1].argmax()))
    assert tokens == fed[2:]
    assert "tokens/s" in err  # timings are messages, on stderr


def _word_tokenizer(folder: Path, words: int) -> Path:
    """A whitespace word-level tokenizer.json: "w0" .. "w{words-1}" are ids 0 .."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_tilert_run_takes_text_and_streams_its_output(artifact, tmp_path, capsys):
    tok = _word_tokenizer(tmp_path / "tok", 256)  # tiny-llama's vocabulary size
    rc = run_main([str(artifact), "--prompt", "w5 w7", "--tokenizer", str(tok), "-n", "3"])
    text = capsys.readouterr().out
    assert rc == 0
    assert run_main([str(artifact), "--prompt-ids", "5,7", "-n", "3"]) == 0
    out = capsys.readouterr().out
    ids = next(ln for ln in out.splitlines() if ln.startswith("generated:")).split(":")[1]
    # stdout is the prompt's continuation: the same tokens as the ids path, each word after
    # a space (a word-level tokenizer joins words with spaces)
    assert text == "".join(f" w{i}" for i in ids.strip().split(",")) + "\n"


def test_a_tokenizer_of_another_model_is_one_line_exit_2(artifact, tmp_path, capsys):
    tok = _word_tokenizer(tmp_path / "tok", 300)
    rc = run_main([str(artifact), "--prompt", "w299", "--tokenizer", str(tok)])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert "token id 299 is outside the model's vocabulary" in one_error_line(
        captured.err, "tilert-run"
    )


# ------------------------------------------------------------------ end to end


def _python(code_or_module: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, *code_or_module], capture_output=True, text=True, env=env, **kw
    )


def test_tilert_compile_exits_2_end_to_end(tmp_path):
    out = tmp_path / "out"
    case = CORPUS / "heads_not_multiple_of_kv_heads.yaml"
    r = _python(["-m", "tilert_compiler.cli", str(case), "--no-run", "-o", str(out)])
    assert r.returncode == 2
    assert DESCRIPTIONS[case.name] in one_error_line(r.stderr, "tilert-compile")
    assert not out.exists()


def test_tilert_run_exits_2_end_to_end_without_importing_the_compiler(artifact, tmp_path):
    damaged = tmp_path / "a"
    shutil.copytree(artifact, damaged)
    _truncate_cubin(damaged)
    # Run main, then check which of our modules got imported: never passes or codegen.
    code = (
        "import sys; from tilert_compiler.runtime.cli import main; rc = main(sys.argv[1:]); "
        "bad = [m for m in sys.modules if m.split('.')[1:2] in "
        "(['driver'], ['pipeline'], ['passes'], ['codegen'])]; "
        "print('compiler modules:', bad); sys.exit(rc)"
    )
    r = _python(["-c", code, str(damaged)])
    assert r.returncode == 2
    assert "kernel.cubin: truncated" in one_error_line(r.stderr, "tilert-run")
    assert "compiler modules: []" in r.stdout


# ------------------------------------------------------------------ fuzzing

BASE = yaml.safe_load((BUNDLED_DIR / "tiny-llama.yaml").read_text())


def _paths(d: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in d.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += _paths(v, (*prefix, k))
    return out


PATHS = _paths(BASE) + [("target", k) for k in ("smem_per_block", "l2_bytes", "hbm_bytes_per_s")]
HF_BASE = json.loads((CORPUS / "hf_weights_wrong_shape" / "config.json").read_text())
HF_PATHS = [(k,) for k in HF_BASE] + [("rope_scaling",), ("rope_parameters",), ("layer_types",)]

# Values of every JSON/YAML type, the boundaries the validator draws, and a few
# extremes that would take minutes or gigabytes if they got past it.
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.integers(1, 32).map(lambda n: 8 * n),  # plausible sizes, so many examples compile
    st.integers(1, 32).map(lambda n: 8 * n),
    st.sampled_from([0, 1, 7, 8, 24, 1024, 32769, 10**6, 10**9, 2**64, -(10**9)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["64", "1e-5", "nan", "inf", "llama", "qwen3", "sm_90", "a\nb", "../x"]),
    st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(
        st.sampled_from(["random", "path", "type", "rope_type", "x"]), st.integers(0, 5)
    ),
)


def _mutations(paths: list[tuple[str, ...]]) -> st.SearchStrategy:
    op = st.sampled_from(["set", "set", "set", "drop", "add"])  # mostly values: deeper paths
    return st.lists(
        st.tuples(op, st.sampled_from(paths), VALUES, st.text(min_size=1, max_size=6)),
        min_size=1,
        max_size=2,
    )


def _apply(base: dict, mutations: list) -> dict:
    d = copy.deepcopy(base)
    for op, path, value, new_key in mutations:
        node: Any = d
        for k in path[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue  # an earlier mutation replaced the section
        if op == "drop":
            node.pop(path[-1], None)
        elif op == "set":
            node[path[-1]] = value
        else:
            node[new_key] = value
    return d


def _compiles_or_refuses_in_one_line(desc: dict) -> None:
    # the decode program; the prefill program's shapes are fuzzed in test_prefill_program.py
    try:
        tc.compile(load_config(desc), nvcc=False, prefill_chunk=0)
    except USER_ERRORS as e:
        assert "\n" not in str(e), f"multi-line error: {e!r}"
        assert str(e).strip(), "empty error message"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations(PATHS))
def test_fuzzed_descriptions_compile_or_fail_in_one_line(mutations):
    _compiles_or_refuses_in_one_line(_apply(BASE, mutations))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations(HF_PATHS))
def test_fuzzed_hf_configs_compile_or_fail_in_one_line(mutations):
    _compiles_or_refuses_in_one_line(_apply(HF_BASE, mutations))


def test_the_fuzzer_starts_from_descriptions_that_compile():
    # Otherwise every example would be refused at once and the fuzzing proves nothing.
    tc.compile(load_config(BASE), nvcc=False, prefill_chunk=0)
    tc.compile(load_config(HF_BASE), nvcc=False, prefill_chunk=0)
