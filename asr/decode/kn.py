"""Interpolated modified Kneser-Ney estimation (Chen & Goodman 1998, sec. 3.5; the variant
KenLM's lmplz writes): n-gram counts from text to an ARPA model, so a user without KenLM's
binaries still gets a language model.

- Highest order: raw counts. Lower orders: continuation counts N1+(. w1..wn) (how many distinct
  words precede the n-gram), except n-grams that start with <s>, which keep raw counts.
- Three discounts per order from the count-of-counts: Y = n1 / (n1 + 2 n2),
  D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2, D3+ = 3 - 4Y n4/n3.
- P(w | h) = (a(h w) - D(a(h w))) / a(h .) + gamma(h) P(w | h'),
  gamma(h) = (D1 N1(h .) + D2 N2(h .) + D3+ N3+(h .)) / a(h .);
  unigrams interpolate with the uniform distribution over the vocabulary (<unk> included, <s>
  excluded). Interpolated probabilities and gamma as the back-off weight make a valid ARPA file.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Iterable, Sequence

from asr.decode.arpa import Arpa
from asr.decode.lm import BOS, EOS, UNK

NEVER_LOG10 = -99.0  # log10 P(<s>): never predicted (as lmplz writes it)


class LMBuildError(ValueError):
    """Text that cannot make a language model of the requested order."""


def count_ngrams(sentences: Iterable[Sequence[str]], order: int) -> list[Counter]:
    """Raw counts of every n-gram, n = 1..order, over sentences padded with <s> ... </s>."""
    counts = [Counter() for _ in range(order)]
    for words in sentences:
        padded = (BOS, *words, EOS)
        for n in range(1, order + 1):
            table = counts[n - 1]
            for i in range(len(padded) - n + 1):
                table[padded[i : i + n]] += 1
    return counts


def _discounts(adjusted: Counter) -> tuple[float, float, float]:
    """(D1, D2, D3+) from the count-of-counts; a default where data are too scarce for the
    estimate (tiny corpora), and always 0 < D_k < k so every context keeps some back-off mass."""
    cc = Counter(min(c, 4) for c in adjusted.values())
    n1, n2, n3, n4 = (cc.get(k, 0) for k in (1, 2, 3, 4))
    defaults = (0.5, 1.0, 1.5)
    y = n1 / (n1 + 2 * n2) if n1 + n2 else 0.0
    estimates = (
        1 - 2 * y * n2 / n1 if n1 and n2 else None,
        2 - 3 * y * n3 / n2 if n2 and n3 else None,
        3 - 4 * y * n4 / n3 if n3 and n4 else None,
    )
    return tuple(
        min(max(d if d is not None and d > 0 else default, 0.01), k - 0.01)
        for k, (d, default) in enumerate(zip(estimates, defaults), start=1)
    )  # type: ignore[return-value]


def estimate_kneser_ney(sentences: Iterable[Sequence[str]], order: int) -> Arpa:
    """Word sequences (no <s>/</s>) -> an interpolated modified Kneser-Ney model of `order`."""
    if order < 1:
        raise LMBuildError(f"order must be at least 1, not {order}")
    sentences = [tuple(s) for s in sentences]
    if not any(sentences):
        raise LMBuildError("no words to estimate a language model from")
    for s in sentences:
        for w in s:
            if w in (BOS, EOS, UNK):
                raise LMBuildError(f"the text contains the reserved token {w!r}")
    raw = count_ngrams(sentences, order)
    # adjusted counts a(.): raw at the top order and for n-grams starting with <s>, else continuation counts
    adjusted: list[Counter] = [Counter() for _ in range(order)]
    adjusted[order - 1] = raw[order - 1]
    for n in range(order - 1, 0, -1):
        table = adjusted[n - 1]
        for ngram in raw[n]:  # each distinct (n+1)-gram adds one left extension to its suffix
            table[ngram[1:]] += 1
        for ngram, c in raw[n - 1].items():
            if ngram[0] == BOS:
                table[ngram] = c
        # n-grams that only ever appear at the start of a sentence are covered by <s> above;
        # anything else seen has a left neighbour, so it is in `table` already
    adjusted[0].pop((BOS,), None)  # <s> is never predicted

    vocab = sorted({ngram[0] for ngram in raw[0]} | {EOS, UNK})
    predicted = [w for w in vocab if w != BOS]

    probs: list[dict[tuple[str, ...], float]] = [dict() for _ in range(order)]
    gammas: list[dict[tuple[str, ...], float]] = [dict() for _ in range(order)]
    for n in range(1, order + 1):
        table = adjusted[n - 1]
        d = _discounts(table)
        totals: dict[tuple[str, ...], float] = defaultdict(float)
        kinds: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0, 0])
        for ngram, c in table.items():
            totals[ngram[:-1]] += c
            kinds[ngram[:-1]][min(c, 3) - 1] += 1
        gamma = {h: (d[0] * k[0] + d[1] * k[1] + d[2] * k[2]) / totals[h] for h, k in kinds.items()}
        gammas[n - 1] = gamma
        for ngram, c in table.items():
            h = ngram[:-1]
            if n == 1:
                lower = 1.0 / len(predicted)
            else:
                lower = _interpolated(probs, gammas, ngram[1:], predicted)
            probs[n - 1][ngram] = (c - d[min(c, 3) - 1]) / totals[h] + gamma[h] * lower
        if n == 1:
            for w in predicted:  # words with no adjusted count (e.g. <unk>) get the uniform share
                probs[0].setdefault((w,), gamma[()] / len(predicted))

    ngrams: list[dict[tuple[str, ...], tuple[float, float]]] = []
    for n in range(1, order + 1):
        entries: dict[tuple[str, ...], tuple[float, float]] = {}
        for ngram, p in probs[n - 1].items():
            bow = gammas[n].get(ngram) if n < order else None
            entries[ngram] = (math.log10(p), math.log10(bow) if bow else 0.0)
        if n == 1:
            bow = gammas[1].get((BOS,)) if order > 1 else None
            entries[(BOS,)] = (NEVER_LOG10, math.log10(bow) if bow else 0.0)
        ngrams.append(entries)
    # Every context of a listed n-gram must itself be listed (ARPA requires it).
    for n in range(2, order + 1):
        for ngram in ngrams[n - 1]:
            assert ngram[:-1] in ngrams[n - 2], ngram
    return Arpa(ngrams)


def _interpolated(probs, gammas, ngram: tuple[str, ...], predicted) -> float:
    """P(w | h) for a lower-order n-gram that may not be listed: back off through the gammas."""
    n = len(ngram)
    if ngram in probs[n - 1]:
        return probs[n - 1][ngram]
    if n == 1:
        return gammas[0][()] / len(predicted)
    return gammas[n - 1].get(ngram[:-1], 1.0) * _interpolated(probs, gammas, ngram[1:], predicted)
