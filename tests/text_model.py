"""A tiny model with text, for the text and serving tests: tiny-llama compiled with a
vocabulary the size of a byte-level BPE tokenizer trained here (Llama 3's kind: a word's
leading space in its tokens, a CJK character or an emoji split over byte tokens), a chat
template, and a generation_config.json."""

from __future__ import annotations

import json
from pathlib import Path

import tilert_compiler as tc

VOCAB = 320
SPECIALS = ["<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
EOS = 1  # "</s>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "the cat sat on the mat and the dog ran after it",
    "héllo wörld, ça va? naïve café",
    "日本語のテキスト 🙂 and 中文 too",
    "once upon a time there was a tiny model that spoke in bytes",
]


def byte_tokenizer(folder: Path, generation: dict | None = None) -> Path:
    """tokenizer.json (byte-level BPE, at most VOCAB tokens), tokenizer_config.json with the
    chat template, and generation_config.json (`generation`, default: greedy, EOS 1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    assert tok.get_vocab_size() <= VOCAB
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    gen = {"eos_token_id": EOS} if generation is None else generation
    (folder / "generation_config.json").write_text(json.dumps(gen))
    return folder


def text_artifact(folder: Path, seed: int, max_seq_len: int = 128, **options) -> Path:
    """tiny-llama with VOCAB tokens and random weights `seed`, saved (no cubin: the
    interpreter runs it); `options`: compile options."""
    overrides = {
        "vocab": VOCAB,
        "max_seq_len": max_seq_len,
        "tie_embeddings": False,  # a tied head repeats the last token: less to check
        "weights": {"random": seed},
    }
    tc.compile("tiny-llama", nvcc=False, overrides=overrides, **options).save(folder)
    return folder
