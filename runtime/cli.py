"""tilert-run: token generation from a compiled artifact, on the serving box.

    tilert-run build/llama-3.2-1b/                      # prompt 1,2,3; 8 new tokens
    tilert-run out/ --prompt-ids 5,9,2 --max-new-tokens 32 --weights hf_model_dir/
    tilert-run out/ --prompt "The capital of France is" --weights hf_model_dir/

On a machine with a CUDA GPU the whole request (prompt, then new tokens sampled on the
GPU) is one launch of the persistent kernel (--per-token: one launch per token, sampled on
the host); without one it runs the same task table through the CPU interpreter (float32,
slow but exact). The
artifact is checked whole before any weight is loaded, so a damaged or foreign artifact is
one line on stderr and exit code 2. Imports only the runtime, models and ir: never the
compiler (passes, codegen, driver).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tilert_compiler.models.config import load_config
from tilert_compiler.models.schema import ModelConfig
from tilert_compiler.models.text import ConfigError, path_kind, show_path
from tilert_compiler.models.weights import load_weights
from tilert_compiler.runtime.artifact import Artifact, ArtifactError, load_artifact
from tilert_compiler.runtime.decoder import Decoder
from tilert_compiler.runtime.gpu import MAX_STOP_IDS, GpuModel, KernelError, check_device
from tilert_compiler.runtime.interpreter import Interpreter, InterpreterError
from tilert_compiler.runtime.sampling import GenerationError, Sampling
from tilert_compiler.runtime.tokenizer import (
    TOKENIZER_FILE,
    TextCodec,
    TokenizerError,
    find_tokenizer,
)

PROG = "tilert-run"
EXIT_BAD_INPUT = 2
EXIT_KERNEL_FAILED = 1


class UsageError(ValueError):
    """A command-line value that does not fit the artifact (prompt ids, token count)."""


@dataclass(frozen=True)
class Plan:
    """Everything checked before the first weight is read."""

    path: Path
    artifact: Artifact
    config: ModelConfig  # weights resolved: the artifact's, or --weights
    prompt: list[int]
    new_tokens: int
    gpu: bool
    sampling: dict  # temperature, top_k, top_p, seed, stop_ids
    per_token: bool = False  # one launch per token (GPU), host sampling
    codec: TextCodec | None = None  # text prompts: decode the output too


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        # argparse prints the whole usage first; every error of this command is one line
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Generate tokens from a tilert-compile artifact.")
    p.add_argument("artifact", help="artifact folder written by tilert-compile")
    p.add_argument(
        "--prompt-ids", default="1,2,3", help="comma-separated token ids (default: 1,2,3)"
    )
    p.add_argument(
        "--prompt",
        help="prompt text (needs a tokenizer.json: --tokenizer, or in the weights or artifact "
        "folder); the output is decoded too",
    )
    p.add_argument("--tokenizer", help="a tokenizer.json, or a folder holding one")
    p.add_argument(
        "-n", "--max-new-tokens", type=int, default=8, help="tokens to generate (default 8)"
    )
    p.add_argument(
        "--weights", help="folder of *.safetensors (default: the artifact's weights spec)"
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    p.add_argument("--top-k", type=int, default=0, help="keep the k likeliest (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass to keep (1: all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--stop-ids", default="", help="comma-separated ids that end generation")
    p.add_argument(
        "--per-token",
        action="store_true",
        help="one launch per token, sampled on the host (default: one launch per request)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        plan = _plan(args)
        _decode(plan, print)
    except (ArtifactError, ConfigError, UsageError, TokenizerError) as e:
        return _fail(e, EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (KernelError, InterpreterError) as e:  # the run failed, and says where
        return _fail(e, EXIT_KERNEL_FAILED)
    return 0


def _fail(e: Exception, code: int) -> int:
    line = " ".join(str(e).split())  # one line, whatever the message held
    print(f"{PROG}: error: {line}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------- checks


def _plan(args: argparse.Namespace) -> Plan:
    gpu = torch.cuda.is_available()
    path_kind(Path(args.artifact), ArtifactError)  # a name the OS refuses: one line
    art = load_artifact(args.artifact, need_cubin=gpu)
    path = Path(args.artifact)
    m = art.manifest  # load_artifact checked format, arch, table and cubin
    if gpu:  # the checks GpuModel makes, made before weights are packed (minutes at 8B)
        check_device(path, m)
    cfg = _config(path, m, args.weights)
    codec = _codec(args, cfg, path) if args.prompt is not None else None
    prompt = codec.encode(args.prompt) if codec else _prompt(args.prompt_ids, cfg.vocab)
    n = args.max_new_tokens
    if n < 1:
        raise UsageError(f"--max-new-tokens must be >= 1 (got {n})")
    # The last generated token is never fed back, so the cache holds prompt + n - 1 rows.
    positions = len(prompt) + n - 1
    if positions > cfg.max_seq_len:
        raise UsageError(
            f"--max-new-tokens {n} after a {len(prompt)}-token prompt needs {positions} cache "
            f"positions; the artifact's max_seq_len is {cfg.max_seq_len} "
            f"(at most {cfg.max_seq_len - len(prompt) + 1} new tokens, or recompile with a "
            "larger --max-seq-len)"
        )
    sampling = {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop_ids": _prompt(args.stop_ids, cfg.vocab) if args.stop_ids else [],
    }
    if len(sampling["stop_ids"]) > MAX_STOP_IDS:
        raise UsageError(f"--stop-ids: at most {MAX_STOP_IDS} (got {len(sampling['stop_ids'])})")
    try:
        Sampling(**{k: sampling[k] for k in ("temperature", "top_k", "top_p", "seed")})
    except GenerationError as e:
        raise UsageError(str(e)) from None
    return Plan(path, art, cfg, prompt, n, gpu, sampling, args.per_token, codec)


def _codec(args: argparse.Namespace, cfg: ModelConfig, path: Path) -> TextCodec:
    """The tokenizer for a text prompt: --tokenizer, else the weights' or artifact's folder."""
    if args.tokenizer is not None and find_tokenizer(args.tokenizer) is None:
        raise UsageError(f"--tokenizer {show_path(args.tokenizer)}: no {TOKENIZER_FILE} there")
    found = find_tokenizer(args.tokenizer, cfg.weights.path, path)
    if found is None:
        raise UsageError(
            f"--prompt needs a {TOKENIZER_FILE}: pass --tokenizer FILE, or keep one in the "
            "weights folder (--weights) or the artifact folder"
        )
    try:
        return TextCodec(found, cfg.vocab)
    except TokenizerError as e:
        raise UsageError(str(e)) from None


def _config(path: Path, m: dict, weights_dir: str | None) -> ModelConfig:
    """The artifact's model config with its weights source resolved on this machine."""
    raw = m["config"]
    try:  # the model itself first, so a weights problem is not blamed on the shapes
        load_config(raw, overrides={"weights": {"random": 0}})
    except ConfigError as e:
        raise ArtifactError(f"{path}: manifest config is invalid: {e}") from None
    if weights_dir is not None:
        if path_kind(Path(weights_dir), UsageError) != "dir":
            raise UsageError(f"--weights {show_path(weights_dir)}: not a folder")
        return load_config(raw, overrides={"weights": {"path": weights_dir}})
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


def _prompt(text: str, vocab: int) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(
            f"--prompt-ids must be comma-separated integers (got {text[:60]!r})"
        ) from None
    if not ids:
        raise UsageError("--prompt-ids must name at least one token")
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise UsageError(f"--prompt-ids: token {bad[0]} is outside the vocabulary (0..{vocab - 1})")
    return ids


# --------------------------------------------------------------------------- decoding


def _decode(plan: Plan, say: Callable[[str], None]) -> None:
    model, where = _model(plan, load_weights(plan.config))
    stamps: list[float] = []
    t0 = time.perf_counter()
    generated = model.generate(
        plan.prompt,
        plan.new_tokens,
        per_token=plan.per_token,
        stream=lambda _: stamps.append(time.perf_counter()),
        **plan.sampling,
    )
    dt = time.perf_counter() - t0
    steps = len(plan.prompt) + len(generated) - 1
    how = "one launch per token" if plan.per_token else "one launch"
    if not plan.per_token and model.prefill_chunk > 1 and len(plan.prompt) > 1:
        how = f"prompt in chunks of {model.prefill_chunk} tokens, then one launch"
    say(f"prompt:    {','.join(map(str, plan.prompt))}")
    say(f"generated: {','.join(map(str, generated))}")
    if plan.codec is not None:
        say(f"text:      {plan.codec.decode(generated)!r}")
    say(f"{where}, {how}: {steps} steps in {dt:.3f} s, {steps / dt:.1f} steps/s")
    if stamps:
        say(f"first token after {(stamps[0] - t0) * 1e3:.1f} ms ({len(plan.prompt)} prompt tokens)")
    if len(stamps) > 1:  # new tokens after the first, as they reached the host
        say(f"decode: {(len(stamps) - 1) / (stamps[-1] - stamps[0]):.1f} tokens/s")


def _model(plan: Plan, weights: dict) -> tuple[Decoder, str]:
    """The decoder to run the request on, and where it runs."""
    if plan.gpu:
        return GpuModel(plan.path, weights=weights), f"GPU ({torch.cuda.get_device_name()})"
    return Interpreter(plan.artifact, weights), "CPU interpreter (no GPU)"


if __name__ == "__main__":
    sys.exit(main())
