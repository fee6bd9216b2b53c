"""tilert-serve end to end: the real server process on 127.0.0.1 (the interpreter serves:
no GPU here) with a tiny model and a tokenizer built here, talked to by the official
openai client. The oracle: the interpreter's tokens for the prompt transformers'
tokenizer (and chat template) gives, decoded by that tokenizer."""

from __future__ import annotations

import http.client
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from text_model import CORPUS, EOS, byte_tokenizer, text_artifact

from tilert_compiler.models.config import load_config
from tilert_compiler.models.weights import load_weights
from tilert_compiler.runtime.artifact import load_artifact
from tilert_compiler.runtime.interpreter import Interpreter

NAME = "tiny-text"


def _words(k: int) -> str:
    words = " ".join(CORPUS).split()
    return " ".join(random.choice(words) for _ in range(k))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, root: Path):
        self.tok = byte_tokenizer(root / "tok")
        self.art = text_artifact(root / "art", random.randrange(2**31))
        a = load_artifact(self.art)
        self.it = Interpreter(a, load_weights(load_config(a.manifest["config"])))
        from transformers import AutoTokenizer

        self.hf = AutoTokenizer.from_pretrained(str(self.tok))
        self.log = root / "server.log"
        self.proc = self._start()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0)

    def _start(self) -> subprocess.Popen:
        for _ in range(3):  # a port another process took meanwhile: try another
            self.port = _free_port()
            cmd = [sys.executable, "-m", "tilert_compiler.runtime.serve", str(self.art)]
            cmd += ["--tokenizer", str(self.tok), "--device", "cpu", "--model-name", NAME]
            cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
            with open(self.log, "w") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return proc
                except OSError:
                    time.sleep(0.2)
            proc.kill()
        raise RuntimeError(f"tilert-serve did not start:\n{self.log.read_text()}")

    def oracle(self, ids: list[int], n: int, **sampling) -> tuple[list[int], str]:
        out = self.it.generate(ids, n, stop_ids=[EOS], **sampling)
        return out, self.hf.decode(out, skip_special_tokens=True)

    def chat_ids(self, messages) -> list[int]:
        text = self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.hf.encode(text, add_special_tokens=False)

    def post(self, path: str, body: str) -> tuple[int, dict]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("serve"))
    yield s
    s.proc.terminate()
    s.proc.wait(timeout=30)


def _finish(ids: list[int], n: int) -> str:
    return "stop" if ids and ids[-1] == EOS else "length" if len(ids) == n else "?"


def test_models_lists_the_one_model(served):
    assert [m.id for m in served.client.models.list().data] == [NAME]


def test_a_completion_is_the_interpreters_greedy_text(served):
    prompt, n = _words(4), random.randint(6, 14)
    ids = served.hf.encode(prompt)
    want_ids, want = served.oracle(ids, n)
    r = served.client.completions.create(model=NAME, prompt=prompt, max_tokens=n, temperature=0)
    assert r.choices[0].text == want
    assert r.choices[0].finish_reason == _finish(want_ids, n)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), len(want_ids))
    assert r.usage.total_tokens == len(ids) + len(want_ids)


def test_a_streamed_completion_is_the_same_text(served):
    prompt, n = _words(3), random.randint(6, 14)
    want_ids, want = served.oracle(served.hf.encode(prompt), n)
    chunks = list(
        served.client.completions.create(
            model=NAME, prompt=prompt, max_tokens=n, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == _finish(want_ids, n)
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_a_chat_completion_follows_the_template(served):
    messages = [
        {"role": "system", "content": _words(2)},
        {"role": "user", "content": _words(4)},
    ]
    n = random.randint(6, 14)
    want_ids, want = served.oracle(served.chat_ids(messages), n)
    r = served.client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=n, temperature=0
    )
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want
    assert r.choices[0].finish_reason == _finish(want_ids, n)
    assert r.usage.prompt_tokens == len(served.chat_ids(messages))


def test_a_streamed_chat_sends_deltas_and_usage(served):
    messages = [{"role": "user", "content": _words(3)}]
    n = random.randint(6, 14)
    want_ids, want = served.oracle(served.chat_ids(messages), n)
    chunks = list(
        served.client.chat.completions.create(
            model=NAME,
            messages=messages,
            max_completion_tokens=n,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == _finish(want_ids, n)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want_ids)


def test_sampling_fields_and_seed_are_honoured(served):
    prompt, n = _words(3), 10
    seed = random.randrange(2**31)
    rules = {"temperature": 1.3, "top_p": 0.9, "top_k": 50, "seed": seed}
    _, want = served.oracle(served.hf.encode(prompt), n, **rules)
    r = served.client.completions.create(
        model=NAME,
        prompt=prompt,
        max_tokens=n,
        temperature=1.3,
        top_p=0.9,
        seed=seed,
        extra_body={"top_k": 50},
    )
    assert r.choices[0].text == want


def test_a_stop_string_cuts_the_text(served):
    prompt = _words(3)
    _, free = served.oracle(served.hf.encode(prompt), 24)
    clean = [i for i in range(1, len(free) - 2) if "\ufffd" not in free[i : i + 2]]
    if not clean:
        pytest.skip("this draw of weights wrote no clean text to stop at")
    stop = free[random.choice(clean) :][:2]
    r = served.client.completions.create(
        model=NAME, prompt=prompt, max_tokens=24, temperature=0, stop=[stop]
    )
    assert r.choices[0].text == free[: free.find(stop)]
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "change, status, says",
    [
        ({"n": 2}, 400, "n: one completion per request"),
        ({"temperature": -1}, 400, "temperature must be a finite number >= 0"),
        ({"top_p": 1.5}, 400, "top_p must be in (0, 1]"),
        ({"max_tokens": 100000}, 400, "maximum context length is 128 tokens"),
        ({"max_tokens": 0}, 400, "max_tokens must be in 1.."),
        ({"model": "gpt-4"}, 404, "The model 'gpt-4' does not exist"),
        ({"stop": [""]}, 400, "stop string must not be empty"),
        ({"prompt": [1, 100000]}, 400, "outside the vocabulary"),
        ({"prompt": ["a", "b"]}, 400, "one prompt per request"),
        ({"logprobs": 2}, 400, "logprobs: not supported"),
    ],
)
def test_bad_requests_are_openai_errors(served, change, status, says):
    body = {"model": NAME, "prompt": _words(2), "max_tokens": 4, **change}
    with pytest.raises(openai.APIStatusError) as e:
        served.client.completions.create(**body)
    assert e.value.status_code == status
    assert says in e.value.body["message"] and e.value.body["type"]
    assert served.proc.poll() is None  # still serving


def test_malformed_bodies_are_400_and_the_server_keeps_serving(served):
    for body in ('{"model": ', "[1, 2]", json.dumps({"model": NAME}), '{"prompt": "x"}'):
        status, reply = served.post("/v1/completions", body)
        assert status == 400 and reply["error"]["message"], body
    status, reply = served.post("/v1/chat/completions", json.dumps({"model": NAME, "messages": []}))
    assert status == 400 and "at least one message" in reply["error"]["message"]
    r = served.client.completions.create(model=NAME, prompt="the", max_tokens=2)
    assert r.usage.completion_tokens >= 1


def test_a_client_that_leaves_mid_stream_stops_the_decoder(served):
    n = 100
    c = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    body = {"model": NAME, "prompt": _words(2), "max_tokens": n, "stream": True}
    body["stop"] = "never-in-this-text-zz"  # only the client can end it early
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
    r.fp.readline()  # the first chunk's size line (chunked transfer)
    assert r.fp.readline().startswith(b"data: {")
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    deadline = time.monotonic() + 30
    while "a client left" not in served.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(ln for ln in served.log.read_text().splitlines() if "a client left" in ln)
    stopped = int(line.split("stopped after ")[1].split()[0])
    assert stopped < n, line
    r2 = served.client.completions.create(model=NAME, prompt="the", max_tokens=2)
    assert r2.choices[0].finish_reason in ("stop", "length")


def test_tilert_serve_refuses_a_bad_start_in_one_line(served, tmp_path, capsys):
    from tilert_compiler.runtime.serve import main

    art = str(served.art)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        cases = [
            ([art, "--tokenizer", str(served.tok), "--port", port], "cannot listen on"),
            ([art, "--port", str(_free_port())], "tilert-serve needs a tokenizer.json"),
            ([str(tmp_path), "--tokenizer", str(served.tok)], "no manifest.json"),
        ]
        for args, says in cases:
            assert main(args) == 2
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("tilert-serve: error: ")
            assert says in lines[0]
