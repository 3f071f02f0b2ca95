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
