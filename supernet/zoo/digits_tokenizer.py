"""The text-to-image testbed's prompts and the CLIP tokenizer files made for them (no download).

:func:`write_tokenizer` writes ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` that stock
``transformers.CLIPTokenizer.from_pretrained`` loads. The vocabulary is CLIP's byte-level alphabet (every byte, alone
and word-final), the merges that build each prompt word from its bytes, and the two special tokens; so every prompt
word is one token and any other text (an unknown word, a number, punctuation, non-ASCII) falls back to its bytes
instead of failing.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

#: The names of the ten digits, in label order.
DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: The testbed's prompts: ``DIGIT_PROMPTS[d]`` names digit ``d``.
DIGIT_PROMPTS: tuple[str, ...] = tuple(f"a handwritten digit {word}" for word in DIGIT_WORDS)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

#: Tokens per encoded prompt (start, words, end, padding): the tokenizer's ``model_max_length`` and the text
#: encoder's ``max_position_embeddings``.
MAX_LENGTH = 16


@cache
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def _word_symbols(word: str) -> list[str]:
    """A word as CLIP's BPE starts it: its bytes as characters, the last one marked word-final."""
    table = bytes_to_unicode()
    chars = [table[b] for b in word.encode("utf-8")]
    return [*chars[:-1], chars[-1] + END_OF_WORD]


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: merge the lowest-ranked adjacent pair until none is ranked."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(itertools.pairwise(symbols))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        first, second = symbols[i], symbols[i + 1]
        merged, j = [], 0
        while j < len(symbols):
            if j < len(symbols) - 1 and symbols[j] == first and symbols[j + 1] == second:
                merged.append(first + second)
                j += 2
            else:
                merged.append(symbols[j])
                j += 1
        symbols = merged
    return symbols


def build_vocabulary(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary (token -> id) and ordered merges that make each of ``words`` a single token.

    Merges are added word by word, each appended after all earlier ones; since an earlier word is reduced to one
    token by earlier merges alone, later merges never change its encoding.
    """
    table = bytes_to_unicode()
    base = list(table.values())
    tokens = base + [c + END_OF_WORD for c in base]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(w.lower() for w in words):
        symbols = _apply_merges(_word_symbols(word), ranks)
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            tokens.append(pair[0] + pair[1])
            symbols = [pair[0] + pair[1], *symbols[2:]]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    for special in (BOS_TOKEN, EOS_TOKEN):
        vocab[special] = len(vocab)
    return vocab, merges


def prompt_words(prompts: Sequence[str] = DIGIT_PROMPTS) -> list[str]:
    """The distinct words of ``prompts``, in order of first appearance."""
    return list(dict.fromkeys(word for prompt in prompts for word in prompt.lower().split()))


def write_tokenizer(out_dir: str | Path, prompts: Sequence[str] = DIGIT_PROMPTS, max_length: int = MAX_LENGTH) -> int:
    """Write a ``CLIPTokenizer`` directory for ``prompts`` to ``out_dir``; returns the vocabulary size."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocabulary(prompt_words(prompts))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (out / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    log.info("tokenizer: %d tokens (%d merges) for %d prompts -> %s", len(vocab), len(merges), len(prompts), out)
    return len(vocab)
