"""Back-off n-gram language models: ARPA files of any order in and out, and a tensor form that
scores a whole batch of (context, word) queries at once, on the decoder's device.

The ARPA format (Stolcke's SRILM; also what KenLM reads and writes):

    \\data\\
    ngram 1=3
    ngram 2=2
    \\1-grams:
    -1.0  <s>  -0.3        log10 P(w)   w   [log10 back-off weight]
    ...
    \\end\\

P(w | h) = P_arpa(h w) when the n-gram h w is listed, else bow(h) * P(w | h minus its first word).

Tensor form: every n-gram (unigrams included) is keyed by a 64-bit polynomial hash of its word
ids, and the keys of all orders are sorted into one table, looked up through a bucket index on
their top bits (two gathers per query, see `NGramLM._index_buckets`). The keys of the contexts
(h1), (h2 h1), ... are the prefix sums of one sequence and come out of a single `cumsum`, and a
suffix n-gram's key is its context's plus one term for the word (see `NGramLM.score`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from asr.fileio import atomic_write

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LN10 = math.log(10.0)
MISSING_UNK_LOG10 = -100.0  # what KenLM assigns <unk> when an ARPA file does not list it

# Polynomial hash modulo 2**64: int64 multiplication wraps around (two's complement) on CPU
# and CUDA alike, so one step is an add and a multiply. The multiplier is odd (2**64 / golden
# ratio); a false hit is about 2**-64 per lookup for sequences as short as n-grams and prefixes.
_MUL = 0x9E3779B97F4A7C15 - (1 << 64)


class ArpaError(ValueError):
    """A malformed ARPA file; the message names the file and line."""


def hash_step(key: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Fold one more id (>= 0) into a key (int64, same shape; the empty sequence is 0)."""
    return (key + ids + 1) * _MUL


def _wrap(value: int) -> int:
    """An integer modulo 2**64 as the int64 with the same bits."""
    value %= 1 << 64
    return value - (1 << 64) if value >= 1 << 63 else value


def ngram_keys(ngrams: torch.Tensor) -> torch.Tensor:
    """(num, n) word ids -> (num,) int64 keys, folded from the last word to the first."""
    key = torch.zeros(ngrams.shape[0], dtype=torch.long, device=ngrams.device)
    for j in range(ngrams.shape[1] - 1, -1, -1):
        key = hash_step(key, ngrams[:, j])
    return key


@dataclass
class Arpa:
    """An ARPA file as plain Python: `ngrams[n-1]` maps a word tuple to (log10 prob, log10 bow)."""

    ngrams: list[dict[tuple[str, ...], tuple[float, float]]]

    @property
    def order(self) -> int:
        return len(self.ngrams)


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-?inf$", re.IGNORECASE)


def _parse_float(text: str, where: str, what: str) -> float:
    if not _NUMBER.match(text):
        raise ArpaError(f"{where}: {what} {text!r} is not a number")
    return float(text)


def read_arpa(path: str | os.PathLike) -> Arpa:
    """Parse an ARPA file of any order. Errors are ArpaError naming `path:line`."""
    path = str(path)
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise ArpaError(f"{path}: no such ARPA file") from None
    counts: dict[int, int] = {}
    ngrams: list[dict[tuple[str, ...], tuple[float, float]]] = []
    state = "start"  # start -> data -> ngrams -> end
    order = 0  # the n of the section being read
    last_line = 0
    with f:
        for number, raw in enumerate(f, start=1):
            last_line = number
            where = f"{path}:{number}"
            line = raw.strip()
            if not line:
                continue
            if state == "start":
                if line == "\\data\\":
                    state = "data"
                continue  # text before \data\ is a comment
            if state == "end":
                continue
            if line == "\\end\\":
                if state != "ngrams" or len(ngrams) != len(counts):
                    missing = len(ngrams) + 1
                    raise ArpaError(f"{where}: \\end\\ before the \\{missing}-grams: section")
                _check_count(path, number, order, counts, ngrams)
                state = "end"
                continue
            section = re.fullmatch(r"\\(\d+)-grams:", line)
            if section:
                n = int(section.group(1))
                if state == "data" and not counts:
                    raise ArpaError(f"{where}: n-gram section before any 'ngram N=count' line")
                if state == "ngrams":
                    _check_count(path, number, order, counts, ngrams)
                if n != len(ngrams) + 1:
                    raise ArpaError(f"{where}: expected the \\{len(ngrams) + 1}-grams: section, found \\{n}-grams:")
                if n not in counts:
                    raise ArpaError(f"{where}: \\{n}-grams: section has no 'ngram {n}=count' line in \\data\\")
                ngrams.append({})
                order, state = n, "ngrams"
                continue
            if state == "data":
                m = re.fullmatch(r"ngram\s+(\d+)\s*=\s*(\S+)", line)
                if not m:
                    raise ArpaError(f"{where}: expected 'ngram N=count' in \\data\\, found {line[:40]!r}")
                n, value = int(m.group(1)), m.group(2)
                if not value.isdigit():
                    raise ArpaError(f"{where}: count {value!r} for {n}-grams is not a whole number")
                if n != len(counts) + 1:
                    raise ArpaError(f"{where}: 'ngram {n}=' out of order (expected ngram {len(counts) + 1}=)")
                counts[n] = int(value)
                continue
            # an n-gram line: logp w1 .. wn [bow]
            fields = line.split()
            if len(fields) not in (order + 1, order + 2):
                raise ArpaError(f"{where}: a {order}-gram line needs {order + 1} or {order + 2} fields, found {len(fields)}")
            logp = _parse_float(fields[0], where, "log probability")
            words = tuple(fields[1 : order + 1])
            bow = _parse_float(fields[order + 1], where, "back-off weight") if len(fields) == order + 2 else 0.0
            if order > 1:
                for w in words:
                    if (w,) not in ngrams[0]:
                        raise ArpaError(f"{where}: word {w!r} is not among the 1-grams")
                if words[:-1] not in ngrams[order - 2]:
                    raise ArpaError(f"{where}: context {' '.join(words[:-1])!r} of this {order}-gram is not listed as a {order - 1}-gram")
            ngrams[order - 1][words] = (logp, bow)
    if state != "end":
        if state == "start":
            raise ArpaError(f"{path}: no \\data\\ header")
        raise ArpaError(f"{path}:{last_line}: file ends without \\end\\")
    if not ngrams:
        raise ArpaError(f"{path}: no n-grams")
    return Arpa(ngrams)


def _check_count(path: str, number: int, order: int, counts: dict[int, int], ngrams: list) -> None:
    found = len(ngrams[order - 1])
    if found != counts[order]:
        raise ArpaError(f"{path}:{number}: \\data\\ says ngram {order}={counts[order]}, but the section has {found}")


def write_arpa(path: str | os.PathLike, arpa: Arpa) -> None:
    """Write an ARPA file atomically (log10 values, 7 decimals, n-grams sorted)."""
    with atomic_write(path) as f:
        f.write("\\data\\\n")
        for n, table in enumerate(arpa.ngrams, start=1):
            f.write(f"ngram {n}={len(table)}\n")
        for n, table in enumerate(arpa.ngrams, start=1):
            f.write(f"\n\\{n}-grams:\n")
            highest = n == arpa.order
            for words in sorted(table):
                logp, bow = table[words]
                line = f"{logp:.7f}\t{' '.join(words)}"
                if not highest and bow != 0.0:
                    line += f"\t{bow:.7f}"
                f.write(line + "\n")
        f.write("\n\\end\\\n")


class NGramLM:
    """A back-off n-gram model as tensors, scoring batches of queries in natural-log units.

    State of a hypothesis = its last `order - 1` word ids, newest first, -1 where there are fewer
    words (the state after <s> alone is [bos, -1, ..., -1]).

    All n-grams of all orders share one table of hash keys, so one lookup finds, for every
    query, every suffix n-gram (w), (h1 w), (h2 h1 w), ... and every context (h1), (h2 h1), ...
    at once; the answer is the probability of the longest listed suffix plus the back-off
    weights of the listed contexts longer than it. The cost is the same ~30 tensor ops at any
    order.
    """

    def __init__(self, arpa: Arpa, device: torch.device | str = "cpu"):
        self.order = arpa.order
        unigrams = {words[0]: value for words, value in arpa.ngrams[0].items()}
        unigrams.setdefault(UNK, (MISSING_UNK_LOG10, 0.0))
        self.words: list[str] = sorted(unigrams)
        self.word_ids = {w: i for i, w in enumerate(self.words)}
        for special in (BOS, EOS):
            if special not in self.word_ids:
                raise ArpaError(f"the language model has no {special} 1-gram")
        self.bos, self.eos, self.unk = self.word_ids[BOS], self.word_ids[EOS], self.word_ids[UNK]
        keys, values = [], []
        for n, table in enumerate([{(w,): v for w, v in unigrams.items()}, *arpa.ngrams[1:]], start=1):
            ids = torch.tensor([[self.word_ids[w] for w in words] for words in table], dtype=torch.long).reshape(-1, n)
            keys.append(ngram_keys(ids))
            values.append(torch.tensor(list(table.values()), dtype=torch.float64).reshape(-1, 2) * LN10)
        key = torch.cat(keys)
        by_key = torch.argsort(key)
        key = key[by_key]
        if key.numel() > 1 and bool((key[1:] == key[:-1]).any()):
            raise ArpaError("two n-grams share a hash key (should not happen; report it)")
        value = torch.cat(values)[by_key].float()
        device = torch.device(device)
        self.keys = key.to(device)  # (ngrams,) sorted hash keys of all orders
        self._index_buckets()
        # one entry more than there are n-grams: where a lookup that finds nothing points
        self.logp = torch.cat([value[:, 0], value.new_zeros(1)]).to(device)  # (ngrams + 1,) ln P
        self.bow = torch.cat([value[:, 1], value.new_zeros(1)]).to(device)  # (ngrams + 1,) ln back-off weight (0 if none)
        # key of (h_n .. h1) = MUL**n * sum_i (h_i + 1) * MUL**(1-i) (see hash_step; MUL is odd,
        # so it has an inverse modulo 2**64)
        self._rise = torch.tensor([_wrap(pow(_MUL, n, 1 << 64)) for n in range(1, self.order + 1)], dtype=torch.long, device=device)
        inverse = pow(_MUL, -1, 1 << 64)
        self._fall = torch.tensor([_wrap(pow(inverse, i, 1 << 64)) for i in range(self.order)], dtype=torch.long, device=device)
        self._orders = torch.arange(1, self.order + 1, device=device)  # (order,)
        # a query row: the order suffix n-grams (w), (h1 w), ..., then the order-1 contexts (h1), (h2 h1), ...
        self._word_part = torch.cat([self._rise, torch.zeros(self.order - 1, dtype=torch.long, device=device)])

    def _index_buckets(self) -> None:
        """A bucket index over the sorted keys, so that a lookup is two gathers, not a binary search.

        A key's bucket is its top `_bits` bits; buckets rise with the keys, so each bucket's keys
        are one run of the sorted table, starting at `_first[bucket]`. With 2 to 4 buckets per
        key the runs are short (a well-mixed hash spreads keys evenly); a query is compared with
        the `window` keys from its bucket's start, the longest run, all gathered at once from
        `_windows` (row i = keys[i : i + window]; the table's last key pads the end,
        where no other query can match it first)."""
        keys = self.keys
        self._bits = min(max(keys.numel().bit_length() + 1, 2), 62)
        buckets = torch.arange((1 << self._bits) + 1, device=keys.device)
        first = torch.searchsorted(self._bucket(keys), buckets)
        window = int((first[1:] - first[:-1]).max())
        self._first = first.to(torch.int32 if keys.numel() < 2**31 else torch.long)
        padded = torch.cat([keys, keys[-1:].expand(window)])
        self.keys = padded[: keys.numel()]  # the same memory as the windows
        self._windows = padded.unfold(0, window, 1)  # (ngrams + 1, window) view

    def _bucket(self, keys: torch.Tensor) -> torch.Tensor:
        return (keys >> (64 - self._bits)) + (1 << (self._bits - 1))  # top bits, 0 .. 2**bits - 1, rising with the key

    def _lookup(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, c) keys -> whether each is listed (uint8), and its entry (else its bucket's start:
        an entry that may be the one past the end, whose log prob and back-off weight are 0)."""
        column = queries.view(-1, 1)
        start = self._first.index_select(0, self._bucket(column.view(-1)))
        # max returns the first maximal index (torch.max docs), so `at` is 0 when nothing matched
        hit, at = (self._windows.index_select(0, start) == column).view(torch.uint8).max(dim=1)
        return hit.view(queries.shape), (start + at).view(queries.shape)

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> "NGramLM":
        return cls(read_arpa(path), device)

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def to(self, device: torch.device | str) -> "NGramLM":
        for name in ("keys", "logp", "bow", "_rise", "_fall", "_orders", "_word_part"):
            setattr(self, name, getattr(self, name).to(device))
        self._index_buckets()
        return self

    def unigram_logp(self) -> list[float]:
        """ln P(w) of every word, by word id, as the 1-gram table lists it."""
        ids = torch.arange(len(self.words), device=self.device)
        _, idx = self._lookup((ids + 1) * self._rise[0])
        return self.logp.index_select(0, idx).tolist()

    def word_id(self, word: str) -> int:
        return self.word_ids.get(word, self.unk)

    def start_state(self, *shape: int) -> torch.Tensor:
        """The state after <s>: (*shape, order - 1) long, newest word first."""
        state = torch.full((*shape, max(self.order - 1, 1)), -1, dtype=torch.long, device=self.device)
        state[..., 0] = self.bos
        return state

    def score(self, state: torch.Tensor, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ln P(word | state) and the state after it, for a whole batch.

        state (..., order - 1) long, newest word first; words (...) long -> logp (...) float,
        new state (..., order - 1).
        """
        shape, order = words.shape, self.order
        ctx = state.reshape(-1, state.shape[-1])  # (m, order - 1): h1, h2, ...
        w = words.reshape(-1, 1)  # (m, 1)
        if order == 1:
            _, idx = self._lookup((w + 1) * self._rise)
            return self.logp.index_select(0, idx.view(-1)).view(shape), state
        # keys of the contexts (h1), (h2 h1), ... from one cumsum (hash_step folds the newest word
        # last, so a prefix sum over h1, h2, ... times MUL**j is a key); a suffix n-gram adds the
        # word: key(hj .. h1 w) = key(hj .. h1) + (w + 1) * MUL**(j+1)
        contexts = ((ctx + 1) * self._fall[: order - 1]).cumsum(1).mul_(self._rise[: order - 1])  # (m, order - 1)
        queries = ((w + 1) * self._word_part).add_(torch.cat([torch.zeros_like(w), contexts, contexts], dim=1))  # (m, 2 * order - 1)
        found, idx = self._lookup(queries)
        # the longest listed suffix (w alone always is: unknown words are <unk>) ...
        longest, which = (found[:, :order] * self._orders).max(dim=1, keepdim=True)  # (m, 1) each
        result = self.logp.index_select(0, idx[:, :order].gather(1, which).view(-1))
        # ... plus the back-off weights of the listed contexts longer than its own
        bow = self.bow.index_select(0, idx[:, order:].reshape(-1)).view(-1, order - 1)  # (m, order - 1)
        result += (bow * (found[:, order:] * (self._orders[:-1] >= longest))).sum(dim=1)
        new_state = torch.cat([w, ctx[:, :-1]], dim=1)
        return result.view(shape), new_state.view(*shape, order - 1)

    def score_sentence(self, words: Sequence[str], bos: bool = True, eos: bool = True) -> float:
        """Total ln probability of a word sequence (OOV words score as <unk>); for tests and tools."""
        ids = [self.word_id(w) for w in words] + ([self.eos] if eos else [])
        state = self.start_state(1) if bos else torch.full((1, max(self.order - 1, 1)), -1, device=self.device)
        total = 0.0
        for i in ids:
            logp, state = self.score(state, torch.tensor([i], device=self.device))
            total += float(logp[0])
        return total


def sentences_from_file(path: str | os.PathLike) -> Iterable[str]:
    """Lines of a text file, or the `text` fields of a JSON-lines manifest (`.jsonl`)."""
    path = str(path)
    if path.endswith(".jsonl"):
        from asr.data.manifest import read_manifest

        for utterance in read_manifest(path):
            yield utterance.text
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield line
