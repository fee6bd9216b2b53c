"""tilert-run: generation from a compiled artifact, on the serving box.

    tilert-run build/llama-3.2-1b/                      # prompt ids 1,2,3; 8 new tokens
    tilert-run out/ --prompt-ids 5,9,2 --max-new-tokens 32 --weights hf_model_dir/
    tilert-run out/ --prompt "The capital of France is" --weights meta-llama/Llama-3.2-1B
    tilert-run out/ --chat --tokenizer meta-llama/Llama-3.2-1B-Instruct

Text streams to stdout as tokens arrive; messages (timings, what runs where) go to
stderr through logging (-q: warnings and errors only, -v: debug too). On a machine with a
CUDA GPU the request runs on the kernel (prompt through the prefill program, then new
tokens sampled on the GPU in one launch; --per-token: one launch per token, sampled on
the host); without one (or with --device cpu) the same task table runs in the CPU
interpreter (float32, slow but exact). Text needs a tokenizer (--tokenizer, or in the
weights or artifact folder); EOS ids and default sampling come from generation_config.json
beside it. The artifact is checked whole before any weight is loaded, so a damaged or
foreign artifact is one line on stderr and exit code 2. Imports only the runtime, models
and ir: never the compiler (passes, codegen, driver). tilert-serve (runtime/serve.py)
opens its model through `open_model` here.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from tilert_compiler.models.config import hub_folder, is_hub_id, load_config
from tilert_compiler.models.schema import ModelConfig
from tilert_compiler.models.text import ConfigError, path_kind, show_path
from tilert_compiler.models.weights import load_weights, stream_weights
from tilert_compiler.runtime import log as logs
from tilert_compiler.runtime.artifact import Artifact, ArtifactError, load_artifact
from tilert_compiler.runtime.decoder import Decoder
from tilert_compiler.runtime.gpu import MAX_STOP_IDS, GpuModel, KernelError, check_device
from tilert_compiler.runtime.interpreter import Interpreter, InterpreterError
from tilert_compiler.runtime.model import (
    Completion,
    GenerationDefaults,
    Model,
    find_generation_config,
    text_codec,
)
from tilert_compiler.runtime.sampling import GenerationError, Sampling
from tilert_compiler.runtime.tokenizer import TOKENIZER_FILE, TextCodec, TokenizerError

PROG = "tilert-run"
EXIT_BAD_INPUT = 2
EXIT_KERNEL_FAILED = 1
DEFAULT_IDS_TOKENS = 8  # --prompt-ids without -n; text and chat run to EOS or a full cache
log = logs.log


class UsageError(ValueError):
    """A command-line value that does not fit the artifact (prompt ids, token count)."""


@dataclass(frozen=True)
class Opened:
    """An artifact checked for this machine, before any weight is read: tilert-run's and
    tilert-serve's common start."""

    path: Path
    artifact: Artifact
    config: ModelConfig  # weights resolved: the artifact's, or --weights
    gpu: bool
    codec: TextCodec | None
    defaults: GenerationDefaults


@dataclass(frozen=True)
class Plan:
    """Everything checked before the first weight is read."""

    model: Opened
    prompt: list[int]  # empty for --chat
    new_tokens: int | None  # None: to EOS or the end of the cache
    sampling: Sampling
    stop_ids: list[int]
    stop: list[str]  # stop strings (text)
    per_token: bool = False  # one launch per token (GPU), host sampling
    text: bool = False  # --prompt: stream the output as text
    chat: bool = False
    system: str | None = None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        # argparse prints the whole usage first; every error of this command is one line
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The arguments that say which model runs where (tilert-run's and tilert-serve's)."""
    p.add_argument("artifact", help="artifact folder written by tilert-compile")
    p.add_argument(
        "--weights",
        help="folder of *.safetensors, or a Hugging Face id in the local cache "
        "(default: the artifact's weights)",
    )
    p.add_argument(
        "--tokenizer",
        help="a tokenizer folder (tokenizer.json or sentencepiece), a tokenizer.json, or a "
        "Hugging Face id (default: one in the weights or artifact folder)",
    )
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        help="cuda: the kernel; cpu: the interpreter (default: cuda where there is a GPU)",
    )


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Generate from a tilert-compile artifact.")
    add_model_args(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--prompt-ids", help="comma-separated token ids (default: 1,2,3)")
    what.add_argument("--prompt", help="prompt text; the output streams as text")
    what.add_argument(
        "--chat",
        action="store_true",
        help="interactive chat through the tokenizer's chat template: one line per turn, "
        "Ctrl-D ends, /reset starts over",
    )
    p.add_argument("--system", help="--chat: a system message to start with")
    p.add_argument(
        "-n",
        "--max-new-tokens",
        type=int,
        help=f"tokens to generate (default: {DEFAULT_IDS_TOKENS} for --prompt-ids; for text, "
        "until EOS or the KV cache is full)",
    )
    g = p.add_argument_group("sampling (default: generation_config.json's, else greedy)")
    g.add_argument("--temperature", type=float, help="0: greedy")
    g.add_argument("--top-k", type=int, help="keep the k likeliest (0: all)")
    g.add_argument("--top-p", type=float, help="nucleus mass to keep (1: all)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument(
        "--stop-ids",
        help="comma-separated ids that end generation (default: generation_config.json's "
        "eos_token_id and the tokenizer's EOS; '' for none)",
    )
    p.add_argument(
        "--stop", action="append", default=[], help="a text that ends generation (repeatable)"
    )
    p.add_argument(
        "--per-token",
        action="store_true",
        help="one launch per token, sampled on the host (default: one launch per request)",
    )
    logs.add_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup(PROG, args)
    try:
        return _main(args)
    finally:
        logs.restore()


def _main(args: argparse.Namespace) -> int:
    try:
        plan = _plan(args)
        model, where = load_model(plan.model)
        if plan.chat:
            _chat(model, plan, sys.stdin, sys.stdout)
        else:
            _decode(model, where, plan, sys.stdout)
    except (ArtifactError, ConfigError, UsageError, TokenizerError, GenerationError) as e:
        return fail(e, EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        log.error("interrupted")
        return 130
    except (KernelError, InterpreterError) as e:  # the run failed, and says where
        return fail(e, EXIT_KERNEL_FAILED)
    return 0


def fail(e: Exception, code: int) -> int:
    log.error(" ".join(str(e).split()))  # one line, whatever the message held
    return code


# --------------------------------------------------------------------------- checks


def open_model(args: argparse.Namespace, *, text: str | None) -> Opened:
    """The artifact, its config with the weights resolved, its generation defaults and, when
    `text` (what needs it, for the message), its tokenizer; all checked before any weight
    is read."""
    gpu = torch.cuda.is_available() if args.device is None else args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA device here (--device cpu)")
    path_kind(Path(args.artifact), ArtifactError)  # a name the OS refuses: one line
    art = load_artifact(args.artifact, need_cubin=gpu)
    path = Path(args.artifact)
    m = art.manifest  # load_artifact checked format, arch, table and cubin
    if gpu:  # the checks GpuModel makes, made before weights are packed (minutes at 8B)
        check_device(path, m)
    cfg = _config(path, m, args.weights)
    codec = _codec(args.tokenizer, cfg, path) if text else None
    if text and codec is None:
        raise UsageError(
            f"{text} needs a {TOKENIZER_FILE} (or a sentencepiece tokenizer.model): pass "
            "--tokenizer (a folder, a file or a Hugging Face id), or keep one in the weights "
            "folder (--weights) or the artifact folder"
        )
    folders = [
        codec.path if codec is not None and codec.path.is_dir() else None,
        cfg.weights.path,
        path,
    ]
    found = find_generation_config(*folders)
    defaults = GenerationDefaults.read(found, codec, cfg.vocab)
    if found is not None:
        log.debug("generation defaults from %s: %s", show_path(found), defaults)
    return Opened(path, art, cfg, gpu, codec, defaults)


def _plan(args: argparse.Namespace) -> Plan:
    text = args.prompt is not None or args.chat
    if args.system is not None and not args.chat:
        raise UsageError("--system goes with --chat")
    if args.stop and not text:
        raise UsageError("--stop needs text: --prompt or --chat")
    opened = open_model(args, text=("--chat" if args.chat else "--prompt") if text else None)
    cfg, codec = opened.config, opened.codec
    if args.chat:
        prompt: list[int] = []
    elif codec is not None:  # --prompt
        prompt = codec.encode(args.prompt)
    else:
        prompt = _ids(args.prompt_ids or "1,2,3", cfg.vocab, "--prompt-ids")
    n = args.max_new_tokens
    if n is None and not text:
        n = DEFAULT_IDS_TOKENS
    if n is not None and n < 1:
        raise UsageError(f"--max-new-tokens must be >= 1 (got {n})")
    # The last generated token is never fed back, so the cache holds prompt + n - 1 rows.
    positions = len(prompt) + (n or 1) - 1
    if positions > cfg.max_seq_len:
        what = f"--max-new-tokens {n} after a" if n is not None else "a"
        raise UsageError(
            f"{what} {len(prompt)}-token prompt needs {positions} cache "
            f"positions; the artifact's max_seq_len is {cfg.max_seq_len} "
            f"(at most {cfg.max_seq_len - len(prompt) + 1} new tokens, or recompile with a "
            "larger --max-seq-len)"
        )
    d = opened.defaults
    try:
        rules = Sampling(
            d.temperature if args.temperature is None else args.temperature,
            d.top_k if args.top_k is None else args.top_k,
            d.top_p if args.top_p is None else args.top_p,
            args.seed,
        )
    except GenerationError as e:
        raise UsageError(str(e)) from None
    if args.stop_ids is None:
        stop_ids = list(d.eos_ids)
    else:
        stop_ids = _ids(args.stop_ids, cfg.vocab, "--stop-ids", empty=True)
    if len(stop_ids) > MAX_STOP_IDS:
        raise UsageError(f"--stop-ids: at most {MAX_STOP_IDS} (got {len(stop_ids)})")
    if any(not s for s in args.stop):
        raise UsageError("--stop: a stop text must not be empty")
    return Plan(
        opened,
        prompt,
        n,
        rules,
        stop_ids,
        args.stop,
        args.per_token,
        args.prompt is not None,
        args.chat,
        args.system,
    )


def _codec(tokenizer: str | None, cfg: ModelConfig, path: Path) -> TextCodec | None:
    """--tokenizer (refused if none is there), else one in the weights' or artifact's folder."""
    try:
        return text_codec(tokenizer, cfg.weights.path, path, vocab=cfg.vocab)
    except TokenizerError as e:
        if tokenizer is not None and "no tokenizer.json there" in str(e):
            raise UsageError(f"--tokenizer {e}") from None
        raise UsageError(str(e)) from None


def _config(path: Path, m: dict, weights: str | None) -> ModelConfig:
    """The artifact's model config with its weights source resolved on this machine."""
    raw = m["config"]
    try:  # the model itself first, so a weights problem is not blamed on the shapes
        load_config(raw, overrides={"weights": {"random": 0}})
    except ConfigError as e:
        raise ArtifactError(f"{path}: manifest config is invalid: {e}") from None
    if weights is not None:
        kind = path_kind(Path(weights), UsageError)
        if kind is None and is_hub_id(weights):
            weights, kind = str(hub_folder(weights, UsageError)), "dir"
        if kind != "dir":
            raise UsageError(f"--weights {show_path(weights)}: not a folder")
        return load_config(raw, overrides={"weights": {"path": weights}})
    spec = raw.get("weights", {})
    if isinstance(spec, dict) and "path" in spec:
        where = str(spec["path"])
        if path_kind(Path(where), UsageError) != "dir":
            raise UsageError(
                f"{path}: built with weights from {show_path(where)}, which is not on this "
                "machine; pass --weights DIR"
            )
    cfg = load_config(raw)
    if not cfg.weights.bound:  # compiled from a folder without loadable weights
        raise UsageError(
            f"{path}: built without weights ({cfg.weights.none}); pass --weights DIR, a folder "
            "of *.safetensors for this model"
        )
    return cfg


def _ids(text: str, vocab: int, flag: str, *, empty: bool = False) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated integers (got {text[:60]!r})") from None
    if not ids and not empty:
        raise UsageError(f"{flag} must name at least one token")
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise UsageError(f"{flag}: token {bad[0]} is outside the vocabulary (0..{vocab - 1})")
    return ids


# --------------------------------------------------------------------------- decoding


def load_model(o: Opened) -> tuple[Model, str]:
    """The weights loaded and packed: the Model, and where it runs (in words)."""
    decoder: Decoder
    if o.gpu:  # streamed into the bf16 arena a tensor at a time
        weights = stream_weights(o.config)
        decoder, where = GpuModel(o.path, weights=weights), f"GPU ({torch.cuda.get_device_name()})"
    else:
        decoder, where = Interpreter(o.artifact, load_weights(o.config)), "CPU interpreter"
    device = "cuda" if o.gpu else "cpu"
    return Model(decoder, codec=o.codec, defaults=o.defaults, device=device), where


def _complete(model: Model, plan: Plan, prompt: list[int], out: TextIO, n: int | None):
    """One request, its text or ids written to `out` as they arrive; -> (Completion, the
    time each token reached the host)."""
    stamps: list[float] = []

    def write(s: str) -> None:
        out.write(s)
        out.flush()

    def token(t: int) -> None:
        stamps.append(time.perf_counter())
        if not plan.text and not plan.chat:
            write(f"{',' if len(stamps) > 1 else ''}{t}")

    r = plan.sampling
    done = model.complete(
        prompt,
        n,
        temperature=r.temperature,
        top_k=r.top_k,
        top_p=r.top_p,
        seed=r.seed,
        stop=plan.stop,
        stop_ids=plan.stop_ids,
        on_text=write if plan.text or plan.chat else None,
        on_token=token,
        per_token=plan.per_token,
    )
    write("\n")
    return done, stamps


def _decode(model: Model, where: str, plan: Plan, out: TextIO) -> None:
    if not plan.text:
        out.write(f"prompt:    {','.join(map(str, plan.prompt))}\ngenerated: ")
    t0 = time.perf_counter()
    done, stamps = _complete(model, plan, plan.prompt, out, plan.new_tokens)
    _report(model, where, plan, done, t0, stamps)


def _report(model: Model, where: str, plan: Plan, done: Completion, t0: float, stamps) -> None:
    dt = time.perf_counter() - t0
    steps = done.prompt_tokens - done.cached_tokens + len(done.ids) - 1
    how = "one launch per token" if plan.per_token else "one launch"
    if not plan.per_token and model.prefill_chunk > 1 and done.prompt_tokens > 1:
        how = f"prompt in chunks of {model.prefill_chunk} tokens, then one launch"
    log.info(f"{where}, {how}: {steps} steps in {dt:.3f} s, {steps / dt:.1f} steps/s")
    ended = "a stop id or text" if done.finish_reason == "stop" else "max_new_tokens"
    log.info(f"{len(done.ids)} new tokens after {done.prompt_tokens}, ended by {ended}")
    if stamps:
        ms = (stamps[0] - t0) * 1e3
        cached = f", {done.cached_tokens} of them cached" if done.cached_tokens else ""
        log.info(f"first token after {ms:.1f} ms ({done.prompt_tokens} prompt tokens{cached})")
    if len(stamps) > 1:  # new tokens after the first, as they reached the host
        log.info(f"decode: {(len(stamps) - 1) / (stamps[-1] - stamps[0]):.1f} tokens/s")


def _chat(model: Model, plan: Plan, inp: TextIO, out: TextIO) -> None:
    """Turns until end of input: each line a user message, the reply streamed back."""
    start = [{"role": "system", "content": plan.system}] if plan.system else []
    messages = list(start)
    tty = inp.isatty()
    while True:
        if tty:
            out.write("> ")
            out.flush()
        line = inp.readline()
        if not line:
            return
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.strip() == "/reset":
            messages = list(start)
            log.info("a new conversation")
            continue
        messages.append({"role": "user", "content": line})
        try:
            prompt = model.chat_ids(messages)
        except TokenizerError as e:  # the template refused the turn: say so, drop it
            log.error(" ".join(str(e).split()))
            messages.pop()
            continue
        if len(prompt) >= model.max_seq_len:  # no room for a reply: keep this turn alone
            log.warning(
                f"the conversation ({len(prompt)} tokens) fills the KV cache "
                f"({model.max_seq_len}); starting a new one"
            )
            messages = [*start, messages[-1]]
            prompt = model.chat_ids(messages)
            if len(prompt) >= model.max_seq_len:
                log.error(f"this message alone ({len(prompt)} tokens) fills the KV cache")
                messages = list(start)
                continue
        n = model.room(len(prompt))
        if plan.new_tokens is not None:
            n = min(n, plan.new_tokens)
        done, _ = _complete(model, plan, prompt, out, n)
        messages.append({"role": "assistant", "content": done.text})
        log.debug(
            f"{len(done.ids)} tokens, ended by {done.finish_reason}; the prompt's first "
            f"{done.cached_tokens} of {done.prompt_tokens} tokens were in the cache"
        )


if __name__ == "__main__":
    sys.exit(main())
