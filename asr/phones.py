"""TIMIT phones: the 61-symbol set of the corpus's .PHN files, the 48-phone training set and
the 39-phone scoring set of Lee & Hon (1989), the foldings between them, and a phone tokenizer.

K.-F. Lee and H.-W. Hon, "Speaker-independent phone recognition using hidden Markov models",
IEEE Trans. ASSP 37(11), 1989: train on 48 phones, fold to 39 for scoring; the glottal stop q
is not scored. The table below is the one every TIMIT recipe uses (e.g. Kaldi's
egs/timit/s5/conf/phones.60-48-39.map, checked against it line by line): the 48-set keeps
unvoiced (`cl`) and voiced (`vcl`) closures apart, the 39-set folds them, `epi`, `pau` and `h#`
into `sil`. This module is the one owner of these facts; everything else imports them.
"""

from __future__ import annotations

from typing import Any, Sequence

from asr.tokens import BLANK, TokenizerError

# 61 TIMIT symbol -> (48-set symbol, 39-set symbol); None = deleted (q, the glottal stop).
_FOLDING: dict[str, tuple[str, str] | None] = {
    "aa": ("aa", "aa"), "ae": ("ae", "ae"), "ah": ("ah", "ah"), "ao": ("ao", "aa"), "aw": ("aw", "aw"),
    "ax": ("ax", "ah"), "ax-h": ("ax", "ah"), "axr": ("er", "er"), "ay": ("ay", "ay"), "b": ("b", "b"),
    "bcl": ("vcl", "sil"), "ch": ("ch", "ch"), "d": ("d", "d"), "dcl": ("vcl", "sil"), "dh": ("dh", "dh"),
    "dx": ("dx", "dx"), "eh": ("eh", "eh"), "el": ("el", "l"), "em": ("m", "m"), "en": ("en", "n"),
    "eng": ("ng", "ng"), "epi": ("epi", "sil"), "er": ("er", "er"), "ey": ("ey", "ey"), "f": ("f", "f"),
    "g": ("g", "g"), "gcl": ("vcl", "sil"), "h#": ("sil", "sil"), "hh": ("hh", "hh"), "hv": ("hh", "hh"),
    "ih": ("ih", "ih"), "ix": ("ix", "ih"), "iy": ("iy", "iy"), "jh": ("jh", "jh"), "k": ("k", "k"),
    "kcl": ("cl", "sil"), "l": ("l", "l"), "m": ("m", "m"), "n": ("n", "n"), "ng": ("ng", "ng"),
    "nx": ("n", "n"), "ow": ("ow", "ow"), "oy": ("oy", "oy"), "p": ("p", "p"), "pau": ("sil", "sil"),
    "pcl": ("cl", "sil"), "q": None, "r": ("r", "r"), "s": ("s", "s"), "sh": ("sh", "sh"),
    "t": ("t", "t"), "tcl": ("cl", "sil"), "th": ("th", "th"), "uh": ("uh", "uh"), "uw": ("uw", "uw"),
    "ux": ("uw", "uw"), "v": ("v", "v"), "w": ("w", "w"), "y": ("y", "y"), "z": ("z", "z"),
    "zh": ("zh", "sh"),
}  # fmt: skip

PHONES_61: tuple[str, ...] = tuple(sorted(_FOLDING))
PHONES_48: tuple[str, ...] = tuple(sorted({f[0] for f in _FOLDING.values() if f}))
PHONES_39: tuple[str, ...] = tuple(sorted({f[1] for f in _FOLDING.values() if f}))
PHONE_SETS: dict[int, tuple[str, ...]] = {61: PHONES_61, 48: PHONES_48, 39: PHONES_39}

# Any symbol of a larger set -> its symbol in a smaller one (a 48-set symbol is also folded to 39).
FOLD_61_TO_48: dict[str, str | None] = {p: f[0] if f else None for p, f in _FOLDING.items()}
FOLD_TO_39: dict[str, str | None] = {
    **{p: f[1] if f else None for p, f in _FOLDING.items()},
    **{f[0]: f[1] for f in _FOLDING.values() if f},
}


class PhoneError(ValueError):
    """A phone symbol outside the set a caller expects; the message names it and where it came from."""


def fold_phones(phones: Sequence[str], phone_set: int, where: str = "<phones>") -> list[str]:
    """Fold a sequence of TIMIT phones (61-, 48- or 39-set symbols) onto `phone_set` (61, 48 or 39).

    Deleted symbols (q) vanish; a symbol already in the target set stays; a symbol that is in no
    set, or that the target cannot express (a 39-set `sil` asked for in the 48-set), raises
    PhoneError naming `where`."""
    if phone_set not in PHONE_SETS:
        raise ValueError(f"phone_set must be one of 61, 48, 39, not {phone_set!r}")
    target = PHONE_SETS[phone_set]
    folding = {61: {}, 48: FOLD_61_TO_48, 39: FOLD_TO_39}[phone_set]
    folded = []
    for p in phones:
        if p in folding:
            q = folding[p]
            if q is not None:
                folded.append(q)
        elif p in target:
            folded.append(p)
        else:
            raise PhoneError(f"{where}: phone {p!r} is not a TIMIT phone that folds to the {phone_set}-phone set")
    return folded


class PhoneTokenizer:
    """TIMIT phones to ids: 0 is blank, then one id per phone of the chosen set (61, 48 or 39).

    Text in and out is space-separated phone symbols. `encode` folds what it is given (e.g. the
    61-symbol .PHN transcription) onto the tokenizer's set first, so training on 48 phones needs
    no separate preprocessing; `normalize` does the same for references."""

    kind = "phone"

    def __init__(self, phone_set: int = 48):
        if phone_set not in PHONE_SETS:
            raise ValueError(f"phone_set must be one of 61, 48, 39, not {phone_set!r}")
        self.phone_set = phone_set
        self.symbols: list[str] = [BLANK, *PHONE_SETS[phone_set]]
        self._ids = {p: i for i, p in enumerate(self.symbols) if i}

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def encode(self, text: str, utterance: str = "<text>") -> list[int]:
        """Space-separated phones -> ids, folded onto this tokenizer's set. Raises TokenizerError
        naming `utterance` for an unknown phone or an utterance with no phones."""
        try:
            phones = fold_phones(text.split(), self.phone_set, where=utterance)
        except PhoneError as e:
            raise TokenizerError(str(e)) from e
        if not phones:
            raise TokenizerError(f"{utterance}: no phone transcription (does the manifest have a 'phones' field?)")
        return [self._ids[p] for p in phones]

    def normalize(self, text: str) -> str:
        return " ".join(fold_phones(text.split(), self.phone_set))

    def decode(self, ids: Sequence[int]) -> str:
        """Ids (blanks and repeats already removed) back to space-separated phones."""
        return " ".join(self.symbols[i] for i in ids if i)

    @staticmethod
    def label_text(utterance) -> str:
        """What this tokenizer reads from a manifest row: its `phones`, not its words."""
        return utterance.phones or ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "phone_set": self.phone_set}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PhoneTokenizer":
        return cls(int(data["phone_set"]))
