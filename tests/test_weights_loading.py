"""Issue 18, item 8: weights come from where the user says, or the run stops in one line.

Random weights only when asked (the bundled descriptions ask; elsewhere --random-weights).
A Hugging Face folder without loadable weights compiles with --no-run, its manifest says no
weights are bound, and every way of running it (the compile's own run, tilert-run,
cm.interpret, runtime.load) is one error naming what was found and what to pass. The index
decides which files are read; NaN and Inf are refused when weights are loaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import tilert_compiler as tc
from tilert_compiler.cli import main as compile_main
from tilert_compiler.models.config import ConfigError, load_config
from tilert_compiler.models.weights import INDEX_FILE, load_weights, random_weights
from tilert_compiler.runtime.cli import main as run_main

HF_CONFIG = Path(__file__).parent / "bad_inputs" / "hf_weights_wrong_shape" / "config.json"


def _one_line(err: str, prog: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err
    return lines[0]


def _hf_folder(folder: Path, *files: str) -> Path:
    """A tiny llama config.json (hidden 16, one layer) and empty files named `files`."""
    folder.mkdir(parents=True)
    shutil.copy(HF_CONFIG, folder / "config.json")
    for f in files:
        (folder / f).write_bytes(b"\x80\x02 not read")
    return folder


def _weights() -> dict[str, torch.Tensor]:
    return random_weights(load_config(json.loads(HF_CONFIG.read_text())), seed=0)


def _compile(args: list[str]) -> int:
    return compile_main([*args, "--no-nvcc", "--prefill-chunk", "0", "-q"])


# ------------------------------------------------------------------ no weights bound


@pytest.mark.parametrize(
    "files, found",
    [
        (["pytorch_model.bin"], "no *.safetensors, only pytorch_model.bin"),
        (["pytorch_model-00001-of-00002.bin", "x.pth"], "only pytorch_model-00001-of-00002.bin"),
        ([], "no weight files"),
    ],
)
def test_a_folder_without_safetensors_compiles_with_no_run_and_says_so(files, found, tmp_path):
    model = _hf_folder(tmp_path / "model", *files)
    out = tmp_path / "out"
    assert _compile([str(model), "--no-run", "-o", str(out)]) == 0
    weights = json.loads((out / "manifest.json").read_text())["config"]["weights"]
    assert list(weights) == ["none"] and found in weights["none"]


def test_the_compiles_own_run_without_weights_is_one_line_and_writes_nothing(tmp_path, capsys):
    model = _hf_folder(tmp_path / "model", "pytorch_model.bin")
    before = sorted(p.name for p in model.iterdir())
    out = tmp_path / "out"
    assert _compile([str(model), "-o", str(out)]) == 2
    line = _one_line(capsys.readouterr().err, "tilert-compile")
    assert "only pytorch_model.bin" in line and "--random-weights" in line and "--no-run" in line
    assert not out.exists() and sorted(p.name for p in model.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_random_weights_when_asked(tmp_path, capsys):
    model = _hf_folder(tmp_path / "model", "pytorch_model.bin")
    out = tmp_path / "out"
    assert _compile([str(model), "--random-weights", "--tokens", "2", "-o", str(out)]) == 0
    assert "CPU interpreter: next-token argmax" in capsys.readouterr().out  # --no-nvcc: no cubin
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["weights"] == {"random": 0}


def test_a_yaml_without_weights_has_none_and_the_bundled_ones_are_random(tmp_path):
    d = load_config("tiny-llama").to_dict()
    del d["weights"]
    cfg = load_config(d)
    assert not cfg.weights.bound and "names no weights" in (cfg.weights.none or "")
    assert load_config("tiny-llama").weights.seed == 0
    assert load_config(cfg.to_dict()) == cfg  # round-trips as {none: ...}


@pytest.fixture
def weightless_artifact(tmp_path) -> Path:
    model = _hf_folder(tmp_path / "model", "pytorch_model.bin")
    out = tmp_path / "out"
    args = [str(model), "--no-run", "-o", str(out), "--prefill-chunk", "0", "-q"]
    if not torch.cuda.is_available():
        args.append("--no-nvcc")
    assert compile_main(args) == 0
    return out


def test_tilert_run_of_an_artifact_without_weights_is_one_line(weightless_artifact, capsys):
    rc = run_main([str(weightless_artifact), "--prompt-ids", "1,2"])
    captured = capsys.readouterr()
    line = _one_line(captured.err, "tilert-run")
    assert rc == 2 and captured.out == ""
    assert "built without weights" in line and "only pytorch_model.bin" in line
    assert "pass --weights DIR" in line


def test_tilert_run_with_weights_given(weightless_artifact, tmp_path, capsys):
    w = tmp_path / "w"
    w.mkdir()
    save_file(_weights(), str(w / "model.safetensors"))
    rc = run_main([str(weightless_artifact), "--prompt-ids", "1,2", "-n", "2", "--weights", str(w)])
    assert rc == 0 and "generated:" in capsys.readouterr().out


def test_the_python_api_without_weights_names_what_to_pass(weightless_artifact):
    cfg = load_config(json.loads((weightless_artifact / "manifest.json").read_text())["config"])
    with pytest.raises(ConfigError) as e:
        load_weights(cfg)  # what runtime.load and GpuModel call when given no weights
    msg = str(e.value)
    assert "only pytorch_model.bin" in msg and "weights=" in msg and "--random-weights" in msg
    cm = tc.compile(cfg, nvcc=False, prefill_chunk=0)
    with pytest.raises(ConfigError, match="only pytorch_model.bin"):
        cm.interpret([1, 2])
    assert cm.interpret([1, 2], weights=_weights()).shape == (2, 16)


@pytest.mark.gpu
def test_runtime_load_without_weights_is_one_config_error(weightless_artifact):
    with pytest.raises(ConfigError, match="only pytorch_model.bin"):
        tc.runtime.load(weightless_artifact)


# ------------------------------------------------------------------ which files are read


def _sharded(folder: Path, w: dict, index: bool) -> dict[str, str]:
    names = list(w)
    shards = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    for file, part in shards.items():
        save_file({n: w[n] for n in part}, str(folder / file))
    weight_map = {n: file for file, part in shards.items() for n in part}
    if index:
        (folder / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def test_the_index_decides_which_files_are_read(tmp_path):
    model = _hf_folder(tmp_path / "model")
    w = _weights()
    _sharded(model, w, index=True)
    # Mistral-style consolidated weights beside the shards: other names, not read
    save_file(
        {"tok_embeddings.weight": torch.zeros(16, 16)}, str(model / "consolidated.safetensors")
    )
    cfg = load_config(model)
    loaded = load_weights(cfg)
    assert list(loaded) == list(w) and all(torch.equal(loaded[n], w[n]) for n in w)


def test_without_the_index_a_stray_file_is_named(tmp_path):
    model = _hf_folder(tmp_path / "model")
    _sharded(model, _weights(), index=False)
    assert load_weights(load_config(model)).keys() == _weights().keys()  # shards alone: fine
    save_file(
        {"tok_embeddings.weight": torch.zeros(16, 16)}, str(model / "consolidated.safetensors")
    )
    with pytest.raises(ConfigError, match="consolidated.safetensors: tensor 'tok_embeddings"):
        load_config(model)


def test_an_index_whose_shards_are_all_absent_compiles_but_binds_nothing(tmp_path):
    # e.g. a download of only the *.json files: the kernel needs just the config
    model = _hf_folder(tmp_path / "model")
    (model / INDEX_FILE).write_text(json.dumps({"weight_map": {"a": "model-1.safetensors"}}))
    cfg = load_config(model)
    assert not cfg.weights.bound and "none of its 1 shard(s)" in (cfg.weights.none or "")


# ------------------------------------------------------------------ values


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_in_weights_is_refused_at_load(bad, tmp_path, capsys):
    model = _hf_folder(tmp_path / "model")
    w = {n: t.to(torch.bfloat16) for n, t in _weights().items()}
    w["model.layers.0.mlp.down_proj.weight"][3, 5] = bad
    save_file(w, str(model / "model.safetensors"))
    cfg = load_config(model)  # headers are fine: the config loads, --no-run compiles
    with pytest.raises(ConfigError, match=r"down_proj.weight' holds NaN or Inf \(1 of 256"):
        load_weights(cfg)
    # the compile's own run reads the weights before writing anything
    out = tmp_path / "out"
    assert _compile([str(model), "-o", str(out)]) == 2
    assert "holds NaN or Inf" in _one_line(capsys.readouterr().err, "tilert-compile")
    assert not out.exists()


def test_nan_in_weights_handed_to_interpret_is_refused(tmp_path):
    cm = tc.compile("tiny-llama", nvcc=False, prefill_chunk=0)
    w = random_weights(cm.config, seed=1)
    w["model.norm.weight"][0] = float("nan")
    with pytest.raises(ConfigError, match="'model.norm.weight' holds NaN or Inf"):
        cm.interpret([1, 2], weights=w)
    w["model.norm.weight"] = torch.ones(64, dtype=torch.int32)
    with pytest.raises(ConfigError, match="is torch.int32; weights must be floats"):
        cm.interpret([1, 2], weights=w)


def test_an_interpreter_or_gpu_model_given_inf_weights_refuses_them():
    # pack_weights (the interpreter's and GpuModel's) checks what it packs: a dict handed
    # in directly, or a finite float32 value that bf16 cannot hold.
    from tilert_compiler.runtime.interpreter import Interpreter

    cm = tc.compile("tiny-llama", nvcc=False, prefill_chunk=0)
    w = random_weights(cm.config, seed=2)
    w["model.layers.1.mlp.up_proj.weight"][0, 0] = float("inf")
    with pytest.raises(ConfigError, match="'model.layers.1.mlp.up_proj.weight' holds NaN or Inf"):
        Interpreter(cm.artifact, w)


def test_an_interpreter_given_a_missing_or_misshapen_weight_names_it():
    # pack_weights refuses it as a weights problem, as check_weights does for cm.interpret
    from tilert_compiler.runtime.interpreter import Interpreter

    cm = tc.compile("tiny-llama", nvcc=False, prefill_chunk=0)
    w = random_weights(cm.config, seed=2)
    del w["model.norm.weight"]
    with pytest.raises(ConfigError, match="missing tensor 'model.norm.weight'"):
        Interpreter(cm.artifact, w)
    w["model.norm.weight"] = torch.ones(65)
    with pytest.raises(ConfigError, match=r"'model.norm.weight' has shape \(65,\)"):
        Interpreter(cm.artifact, w)


def test_tilert_run_when_the_weights_folder_is_gone(tmp_path, capsys):
    model = _hf_folder(tmp_path / "model")
    save_file(_weights(), str(model / "model.safetensors"))
    out = tmp_path / "out"
    nvcc = [] if torch.cuda.is_available() else ["--no-nvcc"]
    assert (
        compile_main([str(model), "--no-run", "--prefill-chunk", "0", "-q", "-o", str(out), *nvcc])
        == 0
    )
    shutil.rmtree(model)
    rc = run_main([str(out), "--prompt-ids", "1"])
    line = _one_line(capsys.readouterr().err, "tilert-run")
    assert rc == 2 and "which is not on this machine; pass --weights DIR" in line
