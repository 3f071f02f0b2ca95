"""Error rates: WER and CER through jiwer, with per-utterance error counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import jiwer


@dataclass
class ErrorCounts:
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference_length: int = 0  # words (or characters) in the reference

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        return self.errors / max(self.reference_length, 1)


def _counts(output) -> ErrorCounts:
    return ErrorCounts(
        substitutions=output.substitutions,
        deletions=output.deletions,
        insertions=output.insertions,
        reference_length=output.hits + output.substitutions + output.deletions,
    )


def _non_empty(texts: Sequence[str]) -> list[str]:
    # jiwer rejects empty references and hypotheses; a lone space scores as zero words.
    return [t if t.strip() else " " for t in texts]


def score_wer(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorCounts:
    """Word errors summed over the corpus (WER = counts.rate)."""
    if not references:
        return ErrorCounts()
    return _counts(jiwer.process_words(_non_empty(references), _non_empty(hypotheses)))


def score_cer(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorCounts:
    """Character errors summed over the corpus (CER = counts.rate); spaces count as characters."""
    if not references:
        return ErrorCounts()
    return _counts(jiwer.process_characters(_non_empty(references), _non_empty(hypotheses)))


@dataclass
class PhoneErrors:
    """Phone error rate after folding reference and hypothesis to the 39 scoring phones
    (Lee & Hon 1989), with the alignment's errors attributed to phones: a substitution or a
    deletion counts against the reference phone, an insertion against the inserted phone,
    and `confusions` counts (reference, hypothesis) pairs of the substitutions."""

    total: ErrorCounts
    reference_counts: dict[str, int]  # phone -> occurrences in the folded references
    substitutions: dict[str, int]
    deletions: dict[str, int]
    insertions: dict[str, int]
    confusions: dict[tuple[str, str], int]

    @property
    def rate(self) -> float:
        return self.total.rate

    def table(self) -> list[tuple[str, int, int, int, int]]:
        """(phone, reference count, sub, del, ins) per 39-set phone, most errors first."""
        from asr.phones import PHONES_39

        rows = [
            (p, self.reference_counts.get(p, 0), self.substitutions.get(p, 0), self.deletions.get(p, 0), self.insertions.get(p, 0))
            for p in PHONES_39
        ]
        return sorted(rows, key=lambda r: (-(r[2] + r[3] + r[4]), r[0]))


def score_per(references: Sequence[str], hypotheses: Sequence[str]) -> PhoneErrors:
    """PER of space-separated TIMIT phone strings (61-, 48- or 39-set symbols; each side is
    folded to 39 first, q deleted). PER = result.rate."""
    from collections import Counter

    from asr.phones import fold_phones

    refs = [" ".join(fold_phones(r.split(), 39, where="reference")) for r in references]
    hyps = [" ".join(fold_phones(h.split(), 39, where="hypothesis")) for h in hypotheses]
    counts = {k: Counter() for k in ("ref", "sub", "del", "ins")}
    confusions: Counter = Counter()
    for r in refs:
        counts["ref"].update(r.split())
    if not refs:
        return PhoneErrors(ErrorCounts(), {}, {}, {}, {}, {})
    output = jiwer.process_words(_non_empty(refs), _non_empty(hyps))
    for ref_words, hyp_words, chunks in zip(output.references, output.hypotheses, output.alignments):
        for c in chunks:
            if c.type == "substitute":
                pairs = zip(ref_words[c.ref_start_idx : c.ref_end_idx], hyp_words[c.hyp_start_idx : c.hyp_end_idx])
                for r, h in pairs:
                    counts["sub"][r] += 1
                    confusions[(r, h)] += 1
            elif c.type == "delete":
                counts["del"].update(ref_words[c.ref_start_idx : c.ref_end_idx])
            elif c.type == "insert":
                counts["ins"].update(hyp_words[c.hyp_start_idx : c.hyp_end_idx])
    return PhoneErrors(
        _counts(output), dict(counts["ref"]), dict(counts["sub"]), dict(counts["del"]), dict(counts["ins"]), dict(confusions)
    )
