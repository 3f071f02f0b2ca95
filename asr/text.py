"""Tokenizers: text to label ids and back. Blank is id 0, always.

A tokenizer is stored inside every checkpoint as a plain dict (`to_dict`), so a model file
carries its own vocabulary and loads without unpickling objects.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Sequence

from asr.phones import PhoneTokenizer
from asr.tokens import BLANK, BLANK_ID, SPACE, TokenizerError

# Lowercase letters, apostrophe and space: enough for LibriSpeech and the built-in corpus.
DEFAULT_CHARS = tuple(SPACE + "'" + "abcdefghijklmnopqrstuvwxyz")


def normalize_text(text: str) -> str:
    """Unicode NFKC, lowercase, typographic apostrophes to ', whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("\u2019", "'").replace("`", "'")
    return re.sub(r"\s+", " ", text).strip()


class CharTokenizer:
    """Characters to ids: 0 is blank, then one id per symbol in `chars` order."""

    kind = "char"

    def __init__(self, chars: Sequence[str] = DEFAULT_CHARS, on_unknown: str = "error"):
        if len(set(chars)) != len(chars):
            raise ValueError("duplicate characters in the tokenizer vocabulary")
        if on_unknown not in ("error", "drop"):
            raise ValueError(f"on_unknown must be 'error' or 'drop', not {on_unknown!r}")
        self.symbols: list[str] = [BLANK, *chars]
        self.on_unknown = on_unknown
        self._ids = {c: i for i, c in enumerate(self.symbols) if i != BLANK_ID}

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def encode(self, text: str, utterance: str = "<text>") -> list[int]:
        """Normalize and map to ids. Unknown characters raise TokenizerError naming `utterance`
        (or are dropped when on_unknown="drop")."""
        text = normalize_text(text)
        ids = []
        for c in text:
            i = self._ids.get(c)
            if i is None:
                if self.on_unknown == "error":
                    raise TokenizerError(f"{utterance}: character {c!r} is not in the vocabulary")
                continue
            ids.append(i)
        if self.on_unknown == "drop":  # dropping may leave double spaces
            ids = [i for k, i in enumerate(ids) if not (self.symbols[i] == SPACE and k and ids[k - 1] == i)]
        return ids

    @staticmethod
    def normalize(text: str) -> str:
        return normalize_text(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Ids (blanks and repeats already removed) back to text."""
        return "".join(self.symbols[i] for i in ids if i != BLANK_ID).strip()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "symbols": self.symbols[1:], "on_unknown": self.on_unknown}

    @classmethod
    def from_texts(cls, texts: Sequence[str], on_unknown: str = "error") -> "CharTokenizer":
        """A vocabulary of every character seen in `texts` (after normalization), sorted."""
        chars = sorted({c for t in texts for c in normalize_text(t)})
        return cls(chars, on_unknown=on_unknown)


def tokenizer_from_dict(data: dict[str, Any]) -> CharTokenizer:
    kind = data.get("kind")
    if kind == "char":
        return CharTokenizer(data["symbols"], on_unknown=data.get("on_unknown", "error"))
    if kind == "phone":
        return PhoneTokenizer.from_dict(data)  # type: ignore[return-value]
    raise ValueError(f"unknown tokenizer kind {kind!r}")


def build_tokenizer(data_config) -> CharTokenizer:
    """The tokenizer `data.unit` asks for: "char" (CharTokenizer) or "phone" (TIMIT phones,
    `data.phone_set` 61, 48 or 39; see asr/phones.py)."""
    if data_config.unit == "char":
        return CharTokenizer(on_unknown=data_config.on_unknown_char)
    if data_config.unit == "phone":
        return PhoneTokenizer(data_config.phone_set)  # type: ignore[return-value]
    from asr.config import ConfigError

    raise ConfigError(f"data.unit must be 'char' or 'phone', not {data_config.unit!r}")


def label_utterances(utterances: Sequence, tokenizer) -> list:
    """Utterances whose `text` is what `tokenizer` reads: unchanged for characters, the manifest's
    `phones` for a phone tokenizer (an utterance without phones then fails to encode, by name)."""
    import dataclasses

    label_text = getattr(tokenizer, "label_text", None)
    if label_text is None:
        return list(utterances)
    return [dataclasses.replace(u, text=label_text(u)) for u in utterances]
