"""Tokens per second as an OpenAI client sees them stream from tilert-serve.

    python bench/serve.py build/llama-3.2-1b --tokenizer meta-llama/Llama-3.2-1B -n 512
    python bench/serve.py --scripted 5000 --tokenizer tok/ -n 2000   # host side only

With an artifact: starts tilert-serve on a free port (the GPU where there is one), then
streams one completion of -n tokens after a --prompt-tokens prompt (greedy unless
--temperature) through the official openai client, and reports what the client saw:
time to the first chunk, and tokens per second between the first and the last chunk
(the usage's completion_tokens over that time). The same request through Model.complete
in this process, without HTTP, gives the decoder's own rate to compare (--no-direct to
skip: it loads the weights a second time).

With --scripted RATE: no model; a decoder that draws tokens at RATE per second the way
GpuModel.run hands them over (polling a host buffer), served in this process: the
ceiling of the host side (tokenizer, stop strings, event loop, HTTP, the client's
parsing) on this machine.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time

import openai


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int, proc: subprocess.Popen | None, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"tilert-serve exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    sys.exit("tilert-serve did not start")


def _stream(client: openai.OpenAI, name: str, prompt: list[int], n: int, temperature: float):
    t0 = time.perf_counter()
    stamps: list[float] = []
    usage = None
    stream = client.completions.create(
        model=name,
        prompt=prompt,
        max_tokens=n,
        temperature=temperature,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            stamps.append(time.perf_counter())
        if chunk.usage is not None:
            usage = chunk.usage
    tokens = usage.completion_tokens if usage else len(stamps)
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
    return {
        "completion_tokens": tokens,
        "chunks": len(stamps),
        "first_chunk_ms": (stamps[0] - t0) * 1e3 if stamps else None,
        "tokens_per_s": (tokens - 1) / span,
        "wall_s": time.perf_counter() - t0,
    }


class ScriptedDecoder:
    """A Decoder that draws token ids at `rate` per second, cycling through `ids`, handing
    each over as GpuModel.run does: the host polls a buffer, sleeping 20 us between looks."""

    prefill_chunk = 1

    def __init__(self, ids: list[int], vocab: int, rate: float, max_seq_len: int = 1 << 20):
        self.ids, self.vocab, self.rate, self.max_seq_len = ids, vocab, rate, max_seq_len

    def reset(self) -> None:
        pass

    def prefill(self, tokens, pos=0) -> None:
        pass

    def step(self, token, pos):
        raise NotImplementedError

    def run(self, tokens, pos, n_steps, sampling, stop_ids=(), on_token=None) -> list[int]:
        n_out = n_steps - len(tokens) + 1
        t0 = time.perf_counter()
        out: list[int] = []
        while len(out) < n_out:
            due = int((time.perf_counter() - t0) * self.rate) + 1
            while len(out) < min(due, n_out):
                tok = self.ids[(pos + len(out)) % len(self.ids)]
                out.append(tok)
                if on_token is not None:
                    on_token(tok)
            time.sleep(20e-6)
        return out

    def generate(self, prompt_ids, max_new_tokens, **kw) -> list[int]:
        from tilert_compiler.runtime.generate import generate_on

        return generate_on(self, prompt_ids, max_new_tokens, **kw)


def scripted(args) -> dict:
    import uvicorn

    from tilert_compiler.runtime.model import Model
    from tilert_compiler.runtime.serve import create_app
    from tilert_compiler.runtime.tokenizer import TextCodec, find_tokenizer

    found = find_tokenizer(args.tokenizer)
    if found is None:
        sys.exit(f"{args.tokenizer}: no tokenizer there")
    probe = TextCodec(found, 1 << 30)
    vocab = len(probe.tok)
    codec = TextCodec(found, vocab)
    text = "Streaming text, one token at a time: naïve café, 日本語, 🙂. " * 20
    decoder = ScriptedDecoder(codec.encode(text), vocab, args.scripted)
    model = Model(decoder, codec=codec)  # type: ignore[arg-type]
    port = _free_port()
    config = uvicorn.Config(create_app(model, "scripted"), port=port, log_level="warning")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    _wait(port, None)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
    prompt = codec.encode("Once upon a time")
    _stream(client, "scripted", prompt, 16, 0.0)  # warm-up
    got = _stream(client, "scripted", prompt, args.n, 0.0)
    server.should_exit = True
    return {"mode": "scripted", "decoder_tokens_per_s": args.scripted, **got}


def served(args) -> dict:
    port = _free_port()
    cmd = [sys.executable, "-m", "tilert_compiler.runtime.serve", args.artifact, "-q"]
    cmd += ["--port", str(port), "--model-name", "bench"]
    for flag in ("tokenizer", "weights", "device"):
        if getattr(args, flag):
            cmd += [f"--{flag}", getattr(args, flag)]
    proc = subprocess.Popen(cmd)
    try:
        _wait(port, proc)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        prompt = [(7 * i + 11) % 1000 + 100 for i in range(args.prompt_tokens)]
        _stream(client, "bench", prompt, 16, args.temperature)  # warm-up
        got = _stream(client, "bench", prompt, args.n, args.temperature)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    out = {"mode": "served", "artifact": args.artifact, **got}
    if not args.no_direct:  # the decoder alone, in this process
        import tilert_compiler as tc

        m = tc.runtime.load(args.artifact, args.device, weights=args.weights)
        m.complete(prompt, 16, temperature=args.temperature, stop_ids=[])
        stamps: list[float] = []
        m.complete(
            prompt,
            args.n,
            temperature=args.temperature,
            stop_ids=[],
            on_token=lambda _: stamps.append(time.perf_counter()),
        )
        out["direct_tokens_per_s"] = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("artifact", nargs="?")
    p.add_argument("--tokenizer")
    p.add_argument("--weights")
    p.add_argument("--device", choices=("cuda", "cpu"))
    p.add_argument("-n", type=int, default=512, help="tokens to stream (default 512)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--scripted", type=float, help="tokens/s of a scripted decoder (no model)")
    p.add_argument("--no-direct", action="store_true")
    args = p.parse_args()
    if args.scripted is None and args.artifact is None:
        p.error("an artifact, or --scripted RATE")
    result = scripted(args) if args.scripted else served(args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
