"""Text in, text out: a model's tokenizer through transformers' AutoTokenizer (a
tokenizer.json, or a sentencepiece tokenizer.model), its chat template, and incremental
detokenization for streaming. transformers is imported only when text is used."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tilert_compiler.models.config import hub_folder, is_hub_id
from tilert_compiler.models.text import path_kind, read_text, shorten, show_path

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# A folder holding any of these is a tokenizer's (AutoTokenizer reads what is there).
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG, "tokenizer.model")
# Real tokenizer.json files run to ~35 MB (Gemma's); this refuses a wrong file, not them.
MAX_TOKENIZER_BYTES = 256 << 20


class TokenizerError(ValueError):
    """No usable tokenizer, one that does not fit the model, or text it cannot take."""


def find_tokenizer(*places: str | Path | None) -> Path | None:
    """The first tokenizer among `places`: a tokenizer.json file, a folder holding one of
    TOKENIZER_FILES, or a Hugging Face model id in the local hub cache. A place the OS will
    not look at (a name over 255 characters) is one TokenizerError line."""
    for place in places:
        if place is None:
            continue
        p = Path(place)
        kind = path_kind(p, TokenizerError)
        if kind is None and isinstance(place, str) and is_hub_id(place):
            p, kind = hub_folder(place, TokenizerError), "dir"
        if kind == "file":
            return p
        if kind == "dir" and any(_is_file(p / n) for n in TOKENIZER_FILES):
            return p
    return None


class TextCodec:
    """A model's tokenizer: text to ids and back, its chat template, its end-of-sequence id.
    `path` is a tokenizer folder (AutoTokenizer) or a bare tokenizer.json file."""

    def __init__(self, path: str | Path, vocab: int):
        p = Path(path)
        kind = path_kind(p, TokenizerError)
        file = p if kind == "file" else p / TOKENIZER_FILE
        if kind == "file" or path_kind(file, TokenizerError) == "file":
            # Read here, so a binary, UTF-16 or huge file is the same one line as a bad config.
            text = read_text(file, TOKENIZER_FILE, limit=MAX_TOKENIZER_BYTES, error=TokenizerError)
        # A tokenizer.json beside its tokenizer_config.json is read as the folder it is in.
        bare = kind == "file" and not (
            p.name == TOKENIZER_FILE and _is_file(p.parent / TOKENIZER_CONFIG)
        )
        try:
            if bare:
                from tokenizers import Tokenizer
                from transformers import PreTrainedTokenizerFast

                self.tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(text))
            else:
                from transformers import AutoTokenizer

                folder = p if kind == "dir" else p.parent
                self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # the package's own message, on one line
            raise TokenizerError(
                f"{show_path(path)}: not a usable tokenizer ({shorten(str(e), 120)})"
            ) from None
        self.path, self.vocab = p, vocab
        # One call at a time: a fast tokenizer used from two threads at once (the server's
        # event loop encoding a request while its worker decodes) can fail "Already
        # borrowed" in the Rust binding.
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        """The ids of a prompt, with the special tokens the tokenizer adds (a BOS)."""
        if not isinstance(text, str):
            raise TokenizerError(f"a prompt is text (got {type(text).__name__})")
        with self._lock:
            ids = self.tok.encode(text)
        return self._checked(ids, text)

    def chat(self, messages: Iterable[Mapping[str, Any]]) -> list[int]:
        """The ids of a conversation through the tokenizer's chat template, ending where the
        assistant's next reply begins."""
        if not self.tok.chat_template:
            raise TokenizerError(
                f"{show_path(self.path)}: the tokenizer has no chat template (a chat_template "
                f"in {TOKENIZER_CONFIG}, or chat_template.jinja)"
            )
        try:
            with self._lock:
                text = self.tok.apply_chat_template(
                    [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
                )
        except Exception as e:  # the template's raise_exception, a missing field
            raise TokenizerError(
                f"the chat template refused the messages ({shorten(str(e), 120)})"
            ) from None
        # The template writes the special tokens (a BOS) itself.
        with self._lock:
            ids = self.tok.encode(text, add_special_tokens=False)
        return self._checked(ids, text)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, special tokens (EOS, chat markers) left out."""
        with self._lock:
            return self.tok.decode(list(ids), skip_special_tokens=True)

    @property
    def eos_ids(self) -> list[int]:
        eos = self.tok.eos_token_id
        return [] if eos is None else [int(eos)]

    def detokenizer(self, context: Sequence[int] = ()) -> Detokenizer:
        """Text of new tokens as they come, after `context` (the prompt)."""
        return Detokenizer(self.decode, context)

    def _checked(self, ids: list[int], text: str) -> list[int]:
        if not ids:
            raise TokenizerError(f"the prompt {shorten(repr(text), 60)} encodes to no tokens")
        big = [i for i in ids if i >= self.vocab]
        if big:
            raise TokenizerError(
                f"{show_path(self.path)}: token id {big[0]} is outside the model's vocabulary "
                f"(0..{self.vocab - 1}): a tokenizer of another model?"
            )
        return ids


def _is_file(p: Path) -> bool:
    return path_kind(p, TokenizerError) == "file"


class Detokenizer:
    """The text of tokens pushed one at a time, whole characters only. A byte-level token can
    end inside a character (日 is three byte tokens in Llama 3's vocabulary): until the token
    that completes it, the window decodes to a trailing U+FFFD and nothing is shown. Each
    push decodes a short window, the tokens shown last and the new ones, so a decoder that
    drops a word's leading space at the start of a text (sentencepiece's) keeps it here;
    the pieces joined are the decode of all tokens, as the vLLM and TGI servers do it."""

    CONTEXT = 5  # prompt tokens decoded before the first new one

    def __init__(self, decode: Callable[[Sequence[int]], str], context: Sequence[int] = ()):
        self._decode = decode
        self._ids = [int(t) for t in context][-self.CONTEXT :]
        self._shown = len(self._ids)  # _ids[:_shown] are shown (the first ones as context)
        self._shown_text = decode(self._ids)

    def push(self, token: int) -> str:
        """The text `token` completes: "" while a character is unfinished."""
        self._ids.append(int(token))
        text = self._decode(self._ids)
        if len(text) <= len(self._shown_text) or text.endswith("\ufffd"):
            return ""
        new = text[len(self._shown_text) :]
        # The tokens just shown become the next window's context.
        self._ids = self._ids[self._shown :]
        self._shown = len(self._ids)
        self._shown_text = self._decode(self._ids)
        return new

    def flush(self) -> str:
        """What is left at the end of the text (an unfinished character: U+FFFD)."""
        text = self._decode(self._ids)
        new = text[len(self._shown_text) :] if len(text) > len(self._shown_text) else ""
        self._ids, self._shown, self._shown_text = [], 0, ""
        return new
