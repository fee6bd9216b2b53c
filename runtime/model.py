"""`Model`: a compiled model ready for text, what `load` (tc.runtime.load), tilert-run and
tilert-serve hand requests to. It holds the artifact's Decoder (the kernel on the GPU, or
the interpreter on the CPU), the model's tokenizer and the defaults of its
generation_config.json. `complete` is the one generation loop with text: stop ids (EOS),
stop strings, text streamed in whole characters, and a caller that may give up at any
token (the kernel then stops at the token it is on)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tilert_compiler.models.text import ConfigError, parse_json, path_kind, read_text, show_path
from tilert_compiler.runtime.decoder import Decoder
from tilert_compiler.runtime.gpu import MAX_STOP_IDS
from tilert_compiler.runtime.sampling import (
    GenerationError,
    RequestTypeError,
    Sampling,
    check_tokens,
)
from tilert_compiler.runtime.tokenizer import TextCodec, TokenizerError, find_tokenizer

GENERATION_CONFIG = "generation_config.json"


class Cancelled(Exception):
    """The caller gave up on a request (its `cancelled()` said so at a token); `tokens`:
    how many the decoder had drawn when it stopped."""

    def __init__(self, tokens: int):
        super().__init__(f"the caller gave up after {tokens} tokens")
        self.tokens = tokens


class _StopText(Exception):
    """A stop string was generated: the decoder stops at this token."""


@dataclass(frozen=True)
class GenerationDefaults:
    """What a request leaves out, from generation_config.json as transformers' generate reads
    it: do_sample false or absent is greedy; when sampling, temperature 1, top_k 50 and
    top_p 1 unless the file says otherwise. `eos_ids` end a sequence: the file's
    eos_token_id and the tokenizer's EOS."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    eos_ids: tuple[int, ...] = ()
    source: Path | None = None  # the generation_config.json read, if any

    @classmethod
    def read(cls, path: Path | None, codec: TextCodec | None, vocab: int) -> GenerationDefaults:
        """From the file at `path` (None: greedy), with the tokenizer's EOS added; ids past
        the model's vocabulary are left out. A malformed file is one ConfigError line."""
        eos = list(codec.eos_ids) if codec is not None else []
        if path is None:
            return cls(eos_ids=_eos(eos, vocab))
        shown = show_path(path)
        data = parse_json(read_text(path, GENERATION_CONFIG), shown)
        if not isinstance(data, dict):
            raise ConfigError(f"{shown}: must be a JSON object (got {type(data).__name__})")
        ids = data.get("eos_token_id")
        ids = [] if ids is None else ids if isinstance(ids, list) else [ids]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise ConfigError(f"{shown}: eos_token_id must be a token id or a list of them")
        rules = Sampling()
        if data.get("do_sample") is True:
            given = {k: data.get(k) for k in ("temperature", "top_k", "top_p")}
            hf = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}  # transformers' defaults
            try:
                rules = Sampling(**{k: hf[k] if v is None else v for k, v in given.items()})
            except GenerationError as e:
                raise ConfigError(f"{shown}: {e}") from None
        return cls(rules.temperature, rules.top_k, rules.top_p, _eos(ids + eos, vocab), path)


def _eos(ids: Iterable[int], vocab: int) -> tuple[int, ...]:
    return tuple(dict.fromkeys(i for i in ids if i < vocab))[:MAX_STOP_IDS]


def find_generation_config(*folders: str | os.PathLike | None) -> Path | None:
    """The first generation_config.json among `folders`."""
    for folder in folders:
        if folder is not None and path_kind(Path(folder), ConfigError) == "dir":
            p = Path(folder) / GENERATION_CONFIG
            if path_kind(p, ConfigError) == "file":
                return p
    return None


class StopStrings:
    """Streamed text cut before the first stop string. A tail that may be the start of one
    is held back until the next piece shows whether it is."""

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = [s for s in stops if s]
        self._held = ""

    def __bool__(self) -> bool:
        return bool(self.stops)

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to show, whether a stop string ended the text)."""
        buf = self._held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return buf[: min(hits)], True
        hold = max(
            (
                k
                for s in self.stops
                for k in range(min(len(s) - 1, len(buf)), 0, -1)
                if buf.endswith(s[:k])
            ),
            default=0,
        )
        self._held = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


def stop_strings(stop: Any) -> list[str]:
    """A request's `stop`: None, a string, or a list of strings."""
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise RequestTypeError("stop must be a string or a list of strings")
    if any(not s for s in stop):
        raise GenerationError("stop: a stop string must not be empty")
    return list(stop)


@dataclass(frozen=True)
class Completion:
    ids: list[int]  # the new tokens; a stop id that ended them is the last
    text: str  # their text, cut before a stop string ("" without a tokenizer)
    finish_reason: str  # "stop": a stop id or string; "length": max_new_tokens ran out
    prompt_tokens: int
    cached_tokens: int = 0  # the prompt's first tokens whose cache rows were reused


class Model:
    """A Decoder with text: `generate` takes a prompt's text or ids (and answers in kind),
    `chat` a conversation. The Decoder's own methods (step, prefill, run, reset) and the GPU
    model's others (timeline, ...) pass through.

    Prefix reuse (`reuse`, on by default): a request whose prompt begins with the tokens
    the cache already holds from the last request (its prompt and reply: a chat's next
    turn) runs only the rest. Those rows may have been written by decode steps where a
    fresh request would take the prefill program, so the logits equal a fresh run's up to
    that rounding (bit for bit without a prefill program). Anything else that touches the
    decoder (a failed or cancelled request, a stop string, step, prefill, run, reset, any
    method of the decoder's own) forgets what the cache holds."""

    def __init__(
        self,
        decoder: Decoder,
        *,
        codec: TextCodec | None = None,
        defaults: GenerationDefaults | None = None,
        device: str = "cpu",
        reuse: bool = True,
    ):
        self.decoder, self.codec, self.device = decoder, codec, device
        self.defaults = defaults or GenerationDefaults.read(None, codec, decoder.vocab)
        self.reuse = reuse
        self._rows: list[int] = []  # the tokens whose rows 0, 1, ... the cache holds

    # ------------------------------------------------------------ the Decoder surface
    @property
    def vocab(self) -> int:
        return self.decoder.vocab

    @property
    def max_seq_len(self) -> int:
        return self.decoder.max_seq_len

    @property
    def prefill_chunk(self) -> int:
        return self.decoder.prefill_chunk

    def reset(self) -> None:
        self._rows = []
        self.decoder.reset()

    def step(self, token: int, pos: int):
        self._rows = []
        return self.decoder.step(token, pos)

    def prefill(self, tokens: Sequence[int], pos: int = 0) -> None:
        self._rows = []
        self.decoder.prefill(tokens, pos)

    def run(self, tokens, pos, n_steps, sampling, stop_ids=(), on_token=None) -> list[int]:
        self._rows = []
        return self.decoder.run(tokens, pos, n_steps, sampling, stop_ids, on_token)

    def __getattr__(self, name: str) -> Any:
        decoder = self.__dict__.get("decoder")
        if decoder is None or name.startswith("__"):
            raise AttributeError(name)
        self.__dict__["_rows"] = []  # the caller may write the cache through it
        return getattr(decoder, name)

    def _reusable(self, prompt: list[int]) -> int:
        """How many of the prompt's first tokens the cache holds (its last token always
        runs: its logits draw the first new token)."""
        if not self.reuse:
            return 0
        n = 0
        for a, b in zip(self._rows, prompt[:-1], strict=False):
            if a != b:
                break
            n += 1
        return n

    # ------------------------------------------------------------ text
    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """A prompt's ids: text through the tokenizer, ids checked against the vocabulary."""
        if isinstance(prompt, str):
            return self._text().encode(prompt)
        return check_tokens(prompt, self.vocab, "the prompt")

    def chat_ids(self, messages: Iterable[Mapping[str, Any]]) -> list[int]:
        """A conversation's ids through the chat template, up to the assistant's reply."""
        return self._text().chat(messages)

    def room(self, prompt_tokens: int) -> int:
        """The most new tokens after a prompt of this length (the KV cache's rows left; the
        last token is never fed back)."""
        return self.max_seq_len - prompt_tokens + 1

    def sampling(self, temperature=None, top_k=None, top_p=None, seed=None) -> Sampling:
        """The request's rules, what it leaves out taken from the defaults."""
        d = self.defaults
        return Sampling(
            d.temperature if temperature is None else temperature,
            d.top_k if top_k is None else top_k,
            d.top_p if top_p is None else top_p,
            0 if seed is None else seed,
        )

    def complete(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int | None = None,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_ids: Sequence[int] | None = None,
        on_text: Callable[[str], None] | None = None,
        on_token: Callable[[int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        per_token: bool = False,
    ) -> Completion:
        """New tokens and their text after a prompt, from a fresh cache. Left out:
        max_new_tokens fills the cache, sampling comes from the defaults, stop_ids are the
        EOS ids. Text reaches `on_text` in whole characters as tokens arrive, a stop id's
        own text and anything from a stop string on left out; `cancelled()` is asked at
        every token and, once true, the decoder stops there and Cancelled is raised."""
        prompt = check_tokens(prompt_ids, self.vocab, "the prompt")
        n = self.room(len(prompt)) if max_new_tokens is None else max_new_tokens
        rules = self.sampling(temperature, top_k, top_p, seed)
        if stop_ids is None:
            ends = list(self.defaults.eos_ids)
        else:
            ends = check_tokens(stop_ids, self.vocab, "stop_ids", empty=True)
        stops = StopStrings(stop_strings(stop))
        if stops and self.codec is None:
            raise TokenizerError("stop strings need a tokenizer (this model has none)")
        detok = self.codec.detokenizer(prompt) if self.codec is not None else None
        ids: list[int] = []
        pieces: list[str] = []

        def show(text: str) -> None:
            if text:
                pieces.append(text)
                if on_text is not None:
                    on_text(text)

        def take(tok: int) -> None:
            ids.append(tok)
            if cancelled is not None and cancelled():
                raise Cancelled(len(ids))
            if on_token is not None:
                on_token(tok)
            if detok is not None and tok not in ends:
                text, hit = stops.push(detok.push(tok))
                show(text)
                if hit:
                    raise _StopText

        if cancelled is not None and cancelled():
            raise Cancelled(0)
        reason = "length"
        keep, self._rows = self._reusable(prompt), []
        try:
            self.decoder.generate(
                prompt,
                n,
                per_token=per_token,
                temperature=rules.temperature,
                top_k=rules.top_k,
                top_p=rules.top_p,
                seed=rules.seed,
                stop_ids=ends,
                stream=take,
                keep=keep,
            )
        except _StopText:  # the launch was stopped mid-way: what it wrote is not known
            reason = "stop"
        else:
            self._rows = prompt + ids[:-1]  # the last new token was never fed
            if ids and ids[-1] in ends:
                reason = "stop"
            if detok is not None:
                text, hit = stops.push(detok.flush())
                show(text)
                if hit:
                    reason = "stop"
                else:
                    show(stops.flush())
        return Completion(ids, "".join(pieces), reason, len(prompt), keep)

    def generate(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int | None = None,
        *,
        stream: Callable[[Any], None] | None = None,
        **kw: Any,
    ) -> Any:
        """Text in, text out; ids in, ids out. A text prompt goes through the tokenizer and
        `stream` gets text as it comes; an id prompt returns the new ids (a stop id that
        ended them included) and `stream` gets each. Keywords: `complete`'s."""
        if isinstance(prompt, str):
            return self.complete(self.encode(prompt), max_new_tokens, on_text=stream, **kw).text
        return self.complete(prompt, max_new_tokens, on_token=stream, **kw).ids

    def chat(
        self,
        messages: Iterable[Mapping[str, Any]],
        max_new_tokens: int | None = None,
        *,
        stream: Callable[[str], None] | None = None,
        **kw: Any,
    ) -> str:
        """The assistant's reply to a conversation ([{"role": ..., "content": ...}])."""
        ids = self.chat_ids(messages)
        return self.complete(ids, max_new_tokens, on_text=stream, **kw).text

    def _text(self) -> TextCodec:
        if self.codec is None:
            raise TokenizerError(
                "this model has no tokenizer: pass tokenizer= (a folder, a tokenizer.json or "
                "a Hugging Face id), or keep one in the weights or artifact folder"
            )
        return self.codec


# --------------------------------------------------------------------------- loading


def load(
    path: str | os.PathLike,
    device: str | None = None,
    *,
    weights: dict | str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    **kw: Any,
) -> Model:
    """A compiled artifact, ready to run: on the GPU (device "cuda" or "cuda:N": the kernel,
    runtime.gpu.GpuModel, which takes `kw`) or the CPU ("cpu": the interpreter, float32);
    by default the GPU where torch sees one. `weights`: a dict of tensors, a folder of
    *.safetensors or a Hugging Face id (default: the artifact's own). `tokenizer`: a folder,
    a tokenizer.json or a Hugging Face id (default: one in the weights folder, else in the
    artifact folder; without one, prompts are ids). generation_config.json is read from
    the tokenizer's folder, else the weights', else the artifact's."""
    import torch

    from tilert_compiler.models.config import hub_folder, is_hub_id, load_config
    from tilert_compiler.models.weights import load_weights, stream_weights
    from tilert_compiler.runtime.artifact import load_artifact

    where = _device(device, torch.cuda.is_available())
    art = load_artifact(path, need_cubin=where != "cpu")
    raw = art.manifest["config"]
    if isinstance(weights, dict):  # the caller's tensors (checked when packed)
        w, spec = weights, raw.get("weights") or {}
        folder = Path(spec["path"]) if isinstance(spec, dict) and "path" in spec else None
    else:
        if weights is not None:
            folder = Path(weights)
            if path_kind(folder) is None and isinstance(weights, str) and is_hub_id(weights):
                folder = hub_folder(weights)
            cfg = load_config(raw, overrides={"weights": {"path": str(folder)}})
        else:
            cfg = load_config(raw)
        # the GPU packs a tensor at a time; the interpreter keeps float32 copies
        w = load_weights(cfg) if where == "cpu" else stream_weights(cfg)
        folder = cfg.weights.path
    if where == "cpu":
        from tilert_compiler.runtime.interpreter import Interpreter

        decoder: Decoder = Interpreter(art, w)
    else:
        from tilert_compiler.runtime.gpu import GpuModel

        index = int(where.partition(":")[2] or 0)
        decoder = GpuModel(path, weights=w, device=index, **kw)
    # The fallbacks are Paths: only a tokenizer named by the caller may be a hub id.
    codec = text_codec(tokenizer, folder, Path(path), vocab=decoder.vocab)
    folders = [codec.path if codec and codec.path.is_dir() else None, folder, path]
    defaults = GenerationDefaults.read(find_generation_config(*folders), codec, decoder.vocab)
    return Model(decoder, codec=codec, defaults=defaults, device=where)


def text_codec(
    tokenizer: str | os.PathLike | None, *fallbacks: str | os.PathLike | None, vocab: int
) -> TextCodec | None:
    """The tokenizer at `tokenizer` (refused if none is there), else the first among
    `fallbacks`, else None."""
    if tokenizer is not None:
        found = find_tokenizer(tokenizer)
        if found is None:
            raise TokenizerError(
                f"{show_path(tokenizer)}: no tokenizer.json there (nor tokenizer_config.json "
                "or tokenizer.model)"
            )
    else:
        found = find_tokenizer(*fallbacks)
    return None if found is None else TextCodec(found, vocab)


def _device(device: Any, have_gpu: bool) -> str:
    """ "cpu", "cuda" or "cuda:N" from what the caller wrote (None: the GPU if there is one)."""
    if device is None:
        return "cuda" if have_gpu else "cpu"
    text = str(device)
    kind, _, index = text.partition(":")
    if kind not in ("cuda", "cpu") or (index and (kind == "cpu" or not index.isdigit())):
        raise GenerationError(f'device must be "cuda", "cuda:N" or "cpu" (got {text!r})')
    if kind == "cuda" and not have_gpu:
        raise GenerationError('no CUDA device here: device="cpu" runs the interpreter')
    return text
