"""Text around the decoder: the tokenizer through transformers' AutoTokenizer (a byte-level
BPE tokenizer.json, a sentencepiece tokenizer.model), streaming in whole characters, stop
strings, generation_config.json's EOS and sampling defaults, tc.runtime.load on the CPU,
Hugging Face ids through a local hub cache, and tilert-run's text and chat modes. The
numbers come from the interpreter; the text oracle is transformers' own tokenizer."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from text_model import CORPUS, EOS, VOCAB, byte_tokenizer, text_artifact

import tilert_compiler as tc
from tilert_compiler.models.config import load_config
from tilert_compiler.models.text import ConfigError
from tilert_compiler.runtime.cli import main as run_main
from tilert_compiler.runtime.interpreter import Interpreter
from tilert_compiler.runtime.model import (
    Cancelled,
    GenerationDefaults,
    StopStrings,
    find_generation_config,
)
from tilert_compiler.runtime.sampling import GenerationError
from tilert_compiler.runtime.tokenizer import TextCodec, TokenizerError


def _words(k: int) -> str:
    words = " ".join(CORPUS).split()
    return " ".join(random.choice(words) for _ in range(k))


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return byte_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def hf_tok(tok):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok))  # the oracle for text


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> tuple[Path, int]:
    seed = random.randrange(2**31)
    return text_artifact(tmp_path_factory.mktemp("art") / "tiny", seed), seed


@pytest.fixture(scope="module")
def art_steps(tmp_path_factory) -> Path:
    """Without a prefill program: every cache row comes from a decode step, so a chat turn
    that reuses the last turn's rows computes what a fresh run computes, bit for bit."""
    seed = random.randrange(2**31)
    return text_artifact(tmp_path_factory.mktemp("art") / "steps", seed, prefill_chunk=0)


@pytest.fixture(scope="module")
def model(art, tok):
    return tc.runtime.load(art[0], "cpu", tokenizer=tok)


def _interpreter(path: Path) -> Interpreter:
    """The artifact's task table in the interpreter, with the weights its spec names."""
    from tilert_compiler.models.weights import load_weights
    from tilert_compiler.runtime.artifact import load_artifact

    a = load_artifact(path)
    return Interpreter(a, load_weights(load_config(a.manifest["config"])))


# ------------------------------------------------------------------ tokenizer


def test_streamed_text_is_whole_characters_and_joins_to_the_text(tok, hf_tok):
    codec = TextCodec(tok, VOCAB)
    text = _words(12) + " " + random.choice(["日本語", "中文", "🙂", "naïve"])
    ids = hf_tok.encode(text)
    d = codec.detokenizer(hf_tok.encode("the cat"))
    pieces = [d.push(i) for i in ids] + [d.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_multibyte_characters_split_over_tokens_stream_whole(tok, hf_tok):
    codec = TextCodec(tok, VOCAB)
    text = random.choice(["日本語", "中文", "🙂", "ça"]) + " " + _words(3)
    # byte tokens, one per UTF-8 byte: the hardest split there is
    byte_of = {b: hf_tok.convert_tokens_to_ids(ch) for b, ch in _bytes_to_unicode().items()}
    byte_ids = [byte_of[b] for b in text.encode()]
    assert all(isinstance(i, int) for i in byte_ids)
    d = codec.detokenizer()
    pieces = [d.push(i) for i in byte_ids]
    assert "".join(pieces) + d.flush() == text == hf_tok.decode(byte_ids)
    assert not any("\ufffd" in p for p in pieces)
    assert pieces[0] == ""  # the first byte of a multi-byte character shows nothing


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, which ByteLevel tokens are spelled in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def test_a_sentencepiece_continuation_keeps_its_leading_space(tmp_path):
    spm = pytest.importorskip("sentencepiece")  # a declared dependency; skips only if absent
    lines = [_words(8) for _ in range(200)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(tmp_path / "tokenizer"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        minloglevel=2,
    )
    config = {"tokenizer_class": "LlamaTokenizer", "eos_token": "</s>", "bos_token": "<s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    codec = TextCodec(tmp_path, 400)
    prompt = codec.encode("the cat")
    rest = codec.tok.encode(" " + _words(5), add_special_tokens=False)
    d = codec.detokenizer(prompt)
    streamed = "".join(d.push(i) for i in rest) + d.flush()
    # the continuation of the prompt's text, which decoding the new tokens alone loses
    full = codec.decode(prompt + rest)
    assert streamed == full[len(codec.decode(prompt)) :]
    assert streamed.startswith(" ") and not codec.decode(rest).startswith(" ")


def test_chat_template_ids_are_transformers(tok, hf_tok):
    codec = TextCodec(tok, VOCAB)
    messages = [{"role": "system", "content": _words(2)}, {"role": "user", "content": _words(4)}]
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert codec.chat(messages) == hf_tok.encode(text, add_special_tokens=False)
    assert text.endswith("<|assistant|>")


def test_a_tokenizer_without_a_chat_template_says_so(tmp_path, tok):
    (tmp_path / "tokenizer.json").write_bytes((tok / "tokenizer.json").read_bytes())
    with pytest.raises(TokenizerError, match="no chat template") as e:
        TextCodec(tmp_path, VOCAB).chat([{"role": "user", "content": "hi"}])
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ stop strings, defaults


def test_stop_strings_cut_the_text_however_it_is_split():
    for _ in range(50):
        text = _words(10)
        stop = text[random.randrange(len(text) - 3) :][: random.randint(1, 4)]
        other = "zzq"  # never in the corpus
        cuts = sorted(random.sample(range(1, len(text)), 4))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        s = StopStrings([other, stop])
        out, hit = "", False
        for p in pieces:
            shown, hit = s.push(p)
            out += shown
            if hit:
                break
        assert hit and out == text[: text.find(stop)]
    s = StopStrings(["END"])
    assert s.push("abcE") == ("abc", False)  # "E" may begin the stop string: held back
    assert s.push("x") == ("Ex", False)
    assert s.push("EN") == ("", False) and s.flush() == "EN"


def test_generation_config_sets_eos_and_sampling_as_transformers_reads_it(tmp_path, tok):
    codec = TextCodec(tok, VOCAB)
    f = tmp_path / "generation_config.json"
    f.write_text(
        json.dumps(
            {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "eos_token_id": [7, 9, 100000]}
        )
    )
    d = GenerationDefaults.read(f, codec, VOCAB)
    # transformers' default top_k when sampling is 50; ids past the vocabulary dropped,
    # the tokenizer's EOS added
    assert (d.temperature, d.top_k, d.top_p) == (0.6, 50, 0.9)
    assert d.eos_ids == (7, 9, EOS)
    f.write_text(json.dumps({"temperature": 0.6, "eos_token_id": 3}))  # no do_sample: greedy
    d = GenerationDefaults.read(f, None, VOCAB)
    assert (d.temperature, d.eos_ids) == (0.0, (3,))
    assert find_generation_config(None, tmp_path / "nothing", tmp_path) == f
    for bad, says in (({"do_sample": True, "top_p": 0}, "top_p"), ({"eos_token_id": "x"}, "eos")):
        f.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=says) as e:
            GenerationDefaults.read(f, None, VOCAB)
        assert "generation_config.json" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------ generation with text


def test_text_in_text_out_ids_in_ids_out(model, art, hf_tok):
    prompt = _words(4)
    n = random.randint(6, 12)
    ids = hf_tok.encode(prompt)
    # the oracle: the interpreter's greedy tokens, through transformers' tokenizer
    want = _interpreter(art[0]).generate(ids, n, stop_ids=[EOS])
    assert model.generate(ids, n) == want
    assert model.generate(prompt, n) == hf_tok.decode(want, skip_special_tokens=True)


def test_text_streams_token_by_token(model, hf_tok):
    events: list[tuple[str, object]] = []
    done = model.complete(
        hf_tok.encode(_words(3)),
        12,
        stop_ids=[],
        on_token=lambda t: events.append(("token", t)),
        on_text=lambda s: events.append(("text", s)),
    )
    assert [t for k, t in events if k == "token"] == done.ids
    assert "".join(str(s) for k, s in events if k == "text") == done.text
    # each piece of text arrives right after the token that completed it, not at the end
    for i, (kind, _) in enumerate(events):
        if kind == "text":
            assert events[i - 1][0] == "token"


def test_eos_from_generation_config_ends_generation(tmp_path, art, tok, hf_tok):
    ids = hf_tok.encode(_words(3))
    free = _interpreter(art[0]).generate(ids, 10)
    k = random.randrange(2, 8)
    folder = byte_tokenizer(tmp_path / "tok", generation={"eos_token_id": free[k]})
    m = tc.runtime.load(art[0], "cpu", tokenizer=folder)
    done = m.complete(ids, 10)
    ends = {free[k], EOS}  # the file's id and the tokenizer's EOS
    first = next(i for i, t in enumerate(free) if t in ends)
    assert done.ids == free[: first + 1] and done.finish_reason == "stop"
    assert done.text == hf_tok.decode(free[:first], skip_special_tokens=True)


def test_a_stop_string_ends_generation_early(model, hf_tok):
    ids = hf_tok.encode(_words(3))
    free = model.complete(ids, 24, stop_ids=[])
    clean = [i for i in range(2, len(free.text) - 2) if "\ufffd" not in free.text[i : i + 2]]
    if not clean:
        pytest.skip("this draw of weights wrote no clean text to stop at")
    at = random.choice(clean)
    stop = free.text[at : at + 2]
    done = model.complete(ids, 24, stop_ids=[], stop=[stop])
    assert done.text == free.text[: free.text.find(stop)]
    assert done.finish_reason == "stop" and done.ids == free.ids[: len(done.ids)]
    assert len(done.ids) < 24


def test_a_caller_that_gives_up_stops_the_decoder_at_that_token(model):
    k = random.randint(1, 5)
    seen: list[int] = []
    with pytest.raises(Cancelled) as e:
        model.complete([5, 6], 30, on_token=seen.append, cancelled=lambda: len(seen) >= k)
    assert e.value.tokens == k + 1 and len(seen) == k  # asked at every token


def test_sampling_defaults_come_from_generation_config(tmp_path, art, hf_tok):
    seed = random.randrange(2**31)
    folder = byte_tokenizer(
        tmp_path / "tok", generation={"do_sample": True, "temperature": 1.5, "top_k": 40}
    )
    m = tc.runtime.load(art[0], "cpu", tokenizer=folder)
    ids = hf_tok.encode(_words(3))
    it = _interpreter(art[0])
    want = it.generate(ids, 12, temperature=1.5, top_k=40, seed=seed, stop_ids=[EOS])
    assert m.generate(ids, 12, seed=seed) == want
    greedy = it.generate(ids, 12, stop_ids=[EOS])
    assert m.generate(ids, 12, temperature=0) == greedy


def test_load_refuses_a_device_it_cannot_use(art):
    with pytest.raises(GenerationError, match='device must be "cuda", "cuda:N" or "cpu"'):
        tc.runtime.load(art[0], "tpu")
    if not torch.cuda.is_available():
        with pytest.raises(GenerationError, match='device="cpu" runs the interpreter'):
            tc.runtime.load(art[0], "cuda")


def test_the_public_api_is_listed_and_versioned():
    names = dir(tc)
    for name in ("compile", "CompiledModel", "Options", "load_config", "runtime", "__version__"):
        assert name in names
    assert "importlib" not in names  # helpers are not API
    from importlib.metadata import version

    assert tc.__version__ == version("tilert-compiler")
    r = subprocess.run(
        [sys.executable, "-m", "tilert_compiler.runtime.cli", "--version"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stdout.strip() == f"tilert-run {tc.__version__}"


# ------------------------------------------------------------------ Hugging Face ids


def _hub_cache(root: Path, repo: str, fill) -> Path:
    """huggingface_hub's cache layout for one model: refs/main names a snapshot folder."""
    commit = f"{random.randrange(16**40):040x}"
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    fill(snap)
    return snap


def _env(cache: Path) -> dict:
    return dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")


def test_a_hub_id_in_the_local_cache_is_a_model_weights_and_a_tokenizer(tmp_path, art, tok):
    from tilert_compiler.models.reference import hf_model
    from tilert_compiler.models.weights import random_weights

    cfg = load_config(json.loads((art[0] / "manifest.json").read_text())["config"])
    w = random_weights(cfg, seed=random.randrange(2**31))

    def fill(snap: Path) -> None:
        hf_model(cfg, w).save_pretrained(str(snap))
        for f in tok.iterdir():
            (snap / f.name).write_bytes(f.read_bytes())

    cache = tmp_path / "hub"
    snap = _hub_cache(cache, "tiny-org/Tiny-Text", fill)
    run = [sys.executable, "-m", "tilert_compiler.runtime.cli", str(art[0]), "-n", "6", "-q"]
    got = subprocess.run(
        [
            *run,
            "--weights",
            "tiny-org/Tiny-Text",
            "--tokenizer",
            "tiny-org/Tiny-Text",
            "--prompt",
            "the cat",
        ],
        capture_output=True,
        text=True,
        env=_env(cache),
        timeout=120,
    )
    assert got.returncode == 0, got.stderr
    # the same as naming the snapshot folder
    want = subprocess.run(
        [*run, "--weights", str(snap), "--tokenizer", str(snap), "--prompt", "the cat"],
        capture_output=True,
        text=True,
        env=_env(tmp_path / "empty"),
        timeout=120,
    )
    assert got.stdout == want.stdout and want.returncode == 0
    missing = subprocess.run(
        [*run, "--weights", "tiny-org/Not-Cached"],
        capture_output=True,
        text=True,
        env=_env(cache),
        timeout=120,
    )
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1 and missing.stdout == ""
    assert lines[0].startswith("tilert-run: error: ") and "tiny-org/Not-Cached" in lines[0]
    assert "Hugging Face cache" in lines[0] and "HF_HUB_OFFLINE" in lines[0]


def test_load_config_takes_a_cached_hub_id(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from tilert_compiler.models.reference import hf_config

    cfg = load_config("tiny-qwen3")

    def fill(snap: Path) -> None:
        hf_config(cfg).save_pretrained(str(snap))

    snap = _hub_cache(tmp_path, "org/tiny-qwen3", fill)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert load_config("org/tiny-qwen3") == load_config(snap)
    with pytest.raises(ConfigError, match="org/absent: no such file, nor a model in the"):
        load_config("org/absent")


# ------------------------------------------------------------------ tilert-run


def test_tilert_run_chats(art_steps, tok, hf_tok, monkeypatch, capsys):
    turns = [_words(3), _words(2)]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(t + "\n" for t in turns)))
    rc = run_main(
        [str(art_steps), "--tokenizer", str(tok), "--chat", "-n", "8", "-q", "--system", "be brief"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    # the oracle: each turn's template through transformers, the interpreter's tokens from
    # a fresh cache (the chat loop reuses the last turn's rows: the same values here)
    it = _interpreter(art_steps)
    messages = [{"role": "system", "content": "be brief"}]
    want = ""
    for t in turns:
        messages.append({"role": "user", "content": t})
        text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = it.generate(hf_tok.encode(text, add_special_tokens=False), 8, stop_ids=[EOS])
        reply = hf_tok.decode(ids, skip_special_tokens=True)
        messages.append({"role": "assistant", "content": reply})
        want += reply + "\n"
    assert out == want


def test_a_chat_turn_runs_only_what_the_cache_does_not_hold(art_steps, tok, hf_tok):
    """Prefix reuse: the second turn's prompt starts with the first turn's prompt and
    reply, whose cache rows the first request left; only the rest runs, and the reply is
    a fresh run's (sampled, so the draws' positions count too)."""
    model = tc.runtime.load(art_steps, "cpu", tokenizer=tok)
    fresh = tc.runtime.load(art_steps, "cpu", tokenizer=tok)
    fresh.reuse = False
    runs: list[int] = []
    real = model.decoder.run
    model.decoder.run = lambda toks, pos, *a: runs.append(pos) or real(toks, pos, *a)
    rules = {"temperature": 0.9, "top_k": 20, "seed": random.randrange(2**31)}

    def ids_of(messages: list[dict]) -> list[int]:
        text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return hf_tok.encode(text, add_special_tokens=False)

    messages = [{"role": "user", "content": _words(4)}]
    first_ids = ids_of(messages)
    first = model.complete(first_ids, 6, stop_ids=[], **rules)
    assert first.cached_tokens == 0 and runs == [0]
    messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "ok"}]
    second_ids = ids_of(messages)
    assert second_ids[: len(first_ids)] == first_ids  # the template keeps the first turn
    second = model.complete(second_ids, 6, stop_ids=[], **rules)
    assert len(first_ids) <= second.cached_tokens < len(second_ids)
    assert runs[-1] == second.cached_tokens  # the launch starts after the reused rows
    assert second.ids == fresh.complete(second_ids, 6, stop_ids=[], **rules).ids
    # a prompt that shares nothing reuses nothing; step() forgets what the cache holds
    third = model.complete([t ^ 1 for t in second_ids], 2, stop_ids=[])
    assert third.cached_tokens == 0
    model.complete(second_ids, 2, stop_ids=[])
    model.step(second_ids[0], 0)
    assert model.complete(second_ids, 2, stop_ids=[]).cached_tokens == 0


def test_tilert_run_refuses_chat_without_a_template_and_stop_without_text(art, tmp_path, capsys):
    assert run_main([str(art[0]), "--stop", "x"]) == 2
    assert "--stop needs text" in capsys.readouterr().err
    assert run_main([str(art[0]), "--chat"]) == 2
    assert "--chat needs a tokenizer.json" in capsys.readouterr().err


# ------------------------------------------------------------------ the GPU


@pytest.mark.gpu
def test_a_gpu_launch_stops_when_its_caller_gives_up(tmp_path):
    from tilert_compiler.models.weights import random_weights
    from tilert_compiler.runtime.gpu import GpuModel

    cm = tc.compile("tiny-llama", overrides={"max_seq_len": 2048}, prefill_chunk=0)
    w = random_weights(cm.config, seed=random.randrange(2**31))
    m = GpuModel(cm.save(tmp_path / "a"), weights=w)
    full = m.generate([1, 2], 2000, stop_ids=[])
    seen: list[int] = []

    def give_up(t: int) -> None:
        seen.append(t)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        m.generate([1, 2], 2000, stop_ids=[], stream=give_up)
    drawn = int((torch.from_numpy(m._host_tokens[:2000].copy()) >= 0).sum())
    assert drawn < 2000  # the kernel stopped before its last step
    assert int(m.error[0]) == 0  # and the model is ready again: the same tokens as before
    assert m.generate([1, 2], 2000, stop_ids=[]) == full
