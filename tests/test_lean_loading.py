"""Issue 20: weights go into the kernel's arena a tensor at a time, in the dtype stored.

`stream_weights` yields a bf16 checkpoint's tensors as bf16, shard by shard, and
`pack_weights` copies each into place as it comes, so the host holds one shard (mapped)
and one tensor, not the float32 copy of every weight that `load_weights` builds for a
reference. The peak is measured in a child process (ru_maxrss) on a checkpoint built
here, against the same child's `load_weights` path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import tilert_compiler as tc
from tilert_compiler.models.config import load_config
from tilert_compiler.models.weights import hf_weight_names, load_weights, stream_weights
from tilert_compiler.runtime.arena import pack_weights


def _checkpoint(folder: Path, cfg: dict, shards: int) -> Path:
    """`cfg`'s weights, random, bf16, split into `shards` files with an index."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    mc = load_config(folder)
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    names = hf_weight_names(mc)
    index = {}
    for k in range(shards):
        part = {
            n: (torch.randn(shape, generator=g) * 0.05).to(torch.bfloat16)
            for n, shape in names[k::shards]
        }
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(folder / file))
        index.update(dict.fromkeys(part, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    return folder


TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}


def test_streamed_weights_are_stored_dtype_and_pack_like_the_dict(tmp_path):
    folder = _checkpoint(tmp_path / "m", TINY, shards=3)
    cfg = load_config(folder)
    streamed = list(stream_weights(cfg))
    assert {n for n, _ in streamed} == {n for n, _ in hf_weight_names(cfg)}
    assert all(t.dtype == torch.bfloat16 for _, t in streamed)  # as stored, not float32
    art = tc.compile(folder, nvcc=False, prefill_chunk=0).artifact
    from_stream = pack_weights(art, stream_weights(cfg), torch.bfloat16)
    from_dict = pack_weights(art, load_weights(cfg), torch.bfloat16)
    assert torch.equal(from_stream, from_dict)
    # and the interpreter's float32 arena holds the same values
    f32 = pack_weights(art, stream_weights(cfg), torch.float32)
    assert torch.equal(f32.to(torch.bfloat16), from_stream)


def test_streamed_tensors_are_what_safetensors_reads(tmp_path):
    """The positioned reads give safetensors' own tensors, bit for bit, in every dtype."""
    from safetensors import safe_open

    folder = _checkpoint(tmp_path / "m", TINY, shards=2)
    cfg = load_config(folder)
    # one shard rewritten with float16 and float32 tensors beside the bf16 ones
    shard = sorted(folder.glob("*.safetensors"))[0]
    with safe_open(str(shard), framework="pt") as f:
        part = {n: f.get_tensor(n) for n in f.keys()}  # noqa: SIM118
    for k, n in enumerate(sorted(part)):
        part[n] = part[n].to((torch.bfloat16, torch.float16, torch.float32)[k % 3])
    save_file(part, str(shard))
    seen = 0
    for name, t in stream_weights(cfg):
        for file in folder.glob("*.safetensors"):
            with safe_open(str(file), framework="pt") as f:
                if name in f.keys():  # noqa: SIM118
                    want = f.get_tensor(name)
                    assert t.dtype == want.dtype and torch.equal(t, want), name
                    seen += 1
    assert seen == len(hf_weight_names(cfg))


def test_a_nan_in_a_streamed_tensor_is_named(tmp_path):
    folder = _checkpoint(tmp_path / "m", TINY, shards=2)
    cfg = load_config(folder)
    art = tc.compile(folder, nvcc=False, prefill_chunk=0).artifact
    bad = "model.layers.1.mlp.down_proj.weight"

    def poisoned():
        for name, t in stream_weights(cfg):
            if name == bad:
                t = t.clone()
                t[3, 5] = float("nan")
            yield name, t

    with pytest.raises(tc.ConfigError, match=f"'{bad}' holds NaN"):
        pack_weights(art, poisoned(), torch.bfloat16)


def test_a_tensor_the_stream_lacks_is_named(tmp_path):
    folder = _checkpoint(tmp_path / "m", TINY, shards=1)
    cfg = load_config(folder)
    art = tc.compile(folder, nvcc=False, prefill_chunk=0).artifact
    pairs = [(n, t) for n, t in stream_weights(cfg) if n != "model.norm.weight"]
    with pytest.raises(tc.ConfigError, match="missing tensor 'model.norm.weight'"):
        pack_weights(art, iter(pairs), torch.bfloat16)


_PEAK = """
import sys, torch
from tilert_compiler.models.config import load_config
from tilert_compiler.models.weights import load_weights, stream_weights
from tilert_compiler.runtime.arena import pack_weights
from tilert_compiler.runtime.artifact import load_artifact

def status(key):  # kB
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

art = load_artifact(sys.argv[1])
cfg = load_config(sys.argv[2])
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from now
base = status("VmRSS")
src = stream_weights(cfg) if sys.argv[3] == "stream" else load_weights(cfg)
arena = pack_weights(art, src, torch.bfloat16)
print(status("VmHWM") - base)
"""


def _peak(art: Path, folder: Path, how: str) -> int:
    """Peak RSS growth of a child packing `folder`'s weights for the artifact `art` (a
    child that only loads: a compile's own peak would hide the packing's)."""
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, str(art), str(folder), how],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[-1])


def test_streaming_holds_a_shard_not_a_float32_copy(tmp_path):
    """~100 M parameters (200 MB bf16) in 4 shards: packing from the stream grows the
    peak by about the arena (200 MB) and a shard (50 MB); the float32 dict path by the
    arena and 400 MB of float32 copies."""
    cfg = {**TINY, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 6}
    cfg |= {"num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 8192}
    folder = _checkpoint(tmp_path / "m", cfg, shards=4)
    mc = load_config(folder)
    params = sum(torch.Size(s).numel() for _, s in hf_weight_names(mc))
    arena, shard = 2 * params, 2 * params // 4
    art = tc.compile(folder, nvcc=False, prefill_chunk=0).save(tmp_path / "art")
    streamed, whole = _peak(art, folder, "stream"), _peak(art, folder, "dict")
    assert streamed < arena + shard + 128 * 2**20, (streamed, arena, shard)
    assert whole > streamed + 2 * params  # the reference path: float32 copies on top


def test_interpret_streams_its_weights_and_takes_a_packed_arena():
    """cm.interpret without weights packs them from the stream (no float32 dict); given a
    packed arena it uses it: the same logits as from the dict, bit for bit. A bf16 arena
    (the CPU main job's) gives the logits of the dict's weights rounded to bf16."""
    cm = tc.compile("tiny-llama", nvcc=False, prefill_chunk=0)
    ids = torch.randint(0, cm.config.vocab, (5,)).tolist()
    from_dict = cm.interpret(ids, weights=load_weights(cm.config))
    assert torch.equal(cm.interpret(ids), from_dict)
    arena = pack_weights(cm.artifact, stream_weights(cm.config), torch.float32)
    assert torch.equal(cm.interpret(ids, weights=arena), from_dict)
    rounded = {n: w.to(torch.bfloat16).float() for n, w in load_weights(cm.config).items()}
    assert torch.equal(
        cm.interpret(ids, weights=arena.to(torch.bfloat16)), cm.interpret(ids, weights=rounded)
    )
    with pytest.raises(Exception, match="packed weights arena must be"):
        cm.interpret(ids, weights=arena.to(torch.float16))


def test_checking_a_large_tensor_adds_little_to_the_peak(tmp_path):
    """A 67 M-value embedding (134 MB bf16): its NaN/Inf check once took three times its
    size in temporaries on the CPU (1.7 GB for llama-3.2-1b's). Packing now peaks at about
    the arena plus the tensor being read and ~100 MB (86-118 MB seen; 340 MB before)."""
    cfg = {**TINY, "hidden_size": 1024, "intermediate_size": 1024, "num_hidden_layers": 1}
    cfg |= {"num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 65536}
    cfg |= {"tie_word_embeddings": True}
    folder = _checkpoint(tmp_path / "m", cfg, shards=1)
    mc = load_config(folder)
    params = sum(torch.Size(s).numel() for _, s in hf_weight_names(mc))
    largest = 2 * 65536 * 1024
    art = tc.compile(folder, nvcc=False, prefill_chunk=0).save(tmp_path / "art")
    streamed = _peak(art, folder, "stream")
    assert streamed < 2 * params + largest + 192 * 2**20, (streamed, 2 * params, largest)
