"""Text in, text out: a Hugging Face tokenizer.json through the `tokenizers` package (which
transformers already brings; it is imported only when text is used)."""

from __future__ import annotations

from pathlib import Path

from tilert_compiler.models.text import path_kind, read_text, show_path

TOKENIZER_FILE = "tokenizer.json"
# Real tokenizer.json files run to ~35 MB (Gemma's); this refuses a wrong file, not them.
MAX_TOKENIZER_BYTES = 256 << 20


class TokenizerError(ValueError):
    """No usable tokenizer.json, or one that does not fit the model."""


def find_tokenizer(*places: str | Path | None) -> Path | None:
    """The first tokenizer.json among `places` (files, or folders holding one). A place the
    OS will not look at (a name over 255 characters) is one TokenizerError line."""
    for place in places:
        if place is None:
            continue
        p = Path(place)
        kind = path_kind(p, TokenizerError)
        if kind == "file":
            return p
        if kind == "dir" and path_kind(p / TOKENIZER_FILE, TokenizerError) == "file":
            return p / TOKENIZER_FILE
    return None


class TextCodec:
    def __init__(self, path: str | Path, vocab: int):
        from tokenizers import Tokenizer

        # Read here, so a binary, UTF-16 or huge file is the same one line as a bad config.
        text = read_text(path, TOKENIZER_FILE, limit=MAX_TOKENIZER_BYTES, error=TokenizerError)
        try:
            self.tok = Tokenizer.from_str(text)
        except Exception as e:  # the package's own message, on one line
            why = " ".join(str(e).split())[:120]
            raise TokenizerError(f"{show_path(path)}: not a tokenizer.json ({why})") from None
        self.path, self.vocab = Path(path), vocab

    def encode(self, text: str) -> list[int]:
        ids = self.tok.encode(text).ids
        if not ids:
            raise TokenizerError(f"the prompt {text[:60]!r} encodes to no tokens")
        big = [i for i in ids if i >= self.vocab]
        if big:
            raise TokenizerError(
                f"{show_path(self.path)}: token id {big[0]} is outside the model's vocabulary "
                f"(0..{self.vocab - 1}): a tokenizer of another model?"
            )
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)
