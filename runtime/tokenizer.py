"""Text in, text out: a Hugging Face tokenizer.json through the `tokenizers` package (which
transformers already brings; it is imported only when text is used)."""

from __future__ import annotations

from pathlib import Path

TOKENIZER_FILE = "tokenizer.json"


class TokenizerError(ValueError):
    """No usable tokenizer.json, or one that does not fit the model."""


def find_tokenizer(*places: str | Path | None) -> Path | None:
    """The first tokenizer.json among `places` (files, or folders holding one)."""
    for place in places:
        if place is None:
            continue
        p = Path(place)
        if p.is_file():
            return p
        if (p / TOKENIZER_FILE).is_file():
            return p / TOKENIZER_FILE
    return None


class TextCodec:
    def __init__(self, path: str | Path, vocab: int):
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the package's own message, on one line
            why = " ".join(str(e).split())
            raise TokenizerError(f"{path}: not a tokenizer.json ({why})") from None
        self.path, self.vocab = Path(path), vocab

    def encode(self, text: str) -> list[int]:
        ids = self.tok.encode(text).ids
        if not ids:
            raise TokenizerError(f"the prompt {text!r} encodes to no tokens")
        big = [i for i in ids if i >= self.vocab]
        if big:
            raise TokenizerError(
                f"{self.path}: token id {big[0]} is outside the model's vocabulary "
                f"(0..{self.vocab - 1}): a tokenizer of another model?"
            )
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)
