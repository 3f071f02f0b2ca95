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

Tensor form (see `NGramLM`): an n-gram is keyed by (id of its context, its last word), its
context being itself an n-gram (of one order less) with an id; the keys of all orders are in
one sorted table, looked up through a bucket index (two gathers per query, see
`NGramLM._index_buckets`).
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
# ratio); a false hit is about 2**-64 per lookup for sequences as short as label prefixes.
# Multiplying by it alone is a bijection modulo 2**64: the LM's keys stay exact.
_MUL = 0x9E3779B97F4A7C15 - (1 << 64)


class ArpaError(ValueError):
    """A malformed ARPA file; the message names the file and line."""


def hash_step(key: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Fold one more id (>= 0) into a key (int64, same shape; the empty sequence is 0)."""
    return (key + ids + 1) * _MUL


@dataclass
class Arpa:
    """An ARPA file as plain Python: `ngrams[n-1]` maps a word tuple to (log10 prob, log10 bow)."""

    ngrams: list[dict[tuple[str, ...], tuple[float, float]]]

    @property
    def order(self) -> int:
        return len(self.ngrams)


_SECTION = re.compile(r"\\(\d+)-grams:")


def _parse_float(text: str, where: str, what: str) -> float:
    try:
        value = float(text)  # also takes "-inf" (SRILM writes it for impossible events)
    except ValueError:
        value = math.nan
    if math.isnan(value) or "_" in text:  # float() would take "nan" and "1_0"; ARPA has neither
        raise ArpaError(f"{where}: {what} {text!r} is not a number")
    return value


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
            section = _SECTION.fullmatch(line) if line[0] == "\\" else None
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

    State of a hypothesis = one id: its context, the longest end of its word history that the
    model lists as an n-gram of order < N (KenLM's state minimization: a longer history scores
    the same, since no listed n-gram starts with it and its back-off weight is 1). Id 0 is the
    empty context; the state after <s> is the id of the 1-gram <s>.

    A query (context c, word w) looks up the N n-grams (c_j w), c_j the last j words of c
    (j = 0 .. N-1), in one table, all at once (`_lookup`). The answer is ln P of the longest one
    listed plus the back-off weights of c's listed ends longer than it (a per-context table, by
    j), and the next state is that n-gram itself, or for an N-gram its longest listed end short
    enough to be a context (a table by n-gram). About twenty tensor ops at any order.
    """

    def __init__(self, arpa: Arpa, device: torch.device | str = "cpu"):
        self.order = order = arpa.order
        unigrams = {words[0]: value for words, value in arpa.ngrams[0].items()}
        unigrams.setdefault(UNK, (MISSING_UNK_LOG10, 0.0))
        self.words: list[str] = sorted(unigrams)
        self.word_ids = {w: i for i, w in enumerate(self.words)}
        for special in (BOS, EOS):
            if special not in self.word_ids:
                raise ArpaError(f"the language model has no {special} 1-gram")
        self.bos, self.eos, self.unk = self.word_ids[BOS], self.word_ids[EOS], self.word_ids[UNK]
        vocab = len(self.words)
        self.num_contexts = 1  # id 0: the empty context
        # contexts, sorted by key (context id of all words but the last * vocab + the last word)
        self._context_keys = torch.zeros(0, dtype=torch.long)
        self._context_ids = torch.zeros(0, dtype=torch.long)
        parents, lasts, bow_of = [torch.zeros(1, dtype=torch.long)], [torch.full((1,), -1)], [torch.zeros(1, dtype=torch.float64)]
        keys, logps, nexts = [], [], []
        for n, table in enumerate([{(w,): v for w, v in unigrams.items()}, *arpa.ngrams[1:]], start=1):
            ids = torch.tensor([[self.word_ids[w] for w in words] for words in table], dtype=torch.long).reshape(-1, n)
            values = torch.tensor(list(table.values()), dtype=torch.float64).reshape(-1, 2) * LN10
            # read_arpa has checked that every n-gram's context is listed: the walk finds it
            parent, _ = self._find_context(ids[:, :-1])
            key = parent * vocab + ids[:, -1]
            keys.append(key)
            logps.append(values[:, 0])
            if n < order:  # an n-gram of order < N is a context, and the state after itself
                new = torch.arange(self.num_contexts, self.num_contexts + len(table))
                self.num_contexts += len(table)
                all_keys = torch.cat([self._context_keys, key])
                by_key = torch.argsort(all_keys)
                self._context_keys, self._context_ids = all_keys[by_key], torch.cat([self._context_ids, new])[by_key]
                parents.append(parent)
                lasts.append(ids[:, -1])
                bow_of.append(values[:, 1])
                nexts.append(new)
            else:  # the state after an N-gram: its longest end of order < N that is listed
                nexts.append(self._longest_listed_end(ids[:, 1:]))
        self._bos_state = int(self._find_context(torch.tensor([[self.bos]]))[0]) if order > 1 else 0
        # per context and j: the key part of its last j words (their context id * vocab; -vocab
        # when those words are not listed: no key matches), and the ln back-off weights of its
        # listed ends longer than j
        self._parent, self._last = torch.cat(parents), torch.cat(lasts)  # by context id
        words_of = self._context_word_table()  # (contexts, order - 1), oldest first, -1 padding in front
        ends = torch.full((self.num_contexts, order), -1, dtype=torch.long)
        ends[:, 0] = 0
        for j in range(1, order):
            end, found = self._find_context(words_of[:, order - 1 - j :])
            ends[:, j] = torch.where(found & (words_of[:, order - 1 - j] >= 0), end, -1)  # a context has ends up to its length
        bow_of_end = torch.cat(bow_of)[ends.clamp(min=0)] * (ends >= 0)  # (contexts, order)
        above = bow_of_end.flip(1).cumsum(1).flip(1)  # sum over the ends of length >= j
        bows = torch.cat([above[:, 1:], torch.zeros(self.num_contexts, 1, dtype=torch.float64)], dim=1)  # ... > j
        # the table is sorted by key * MUL (mod 2**64): a bijection that spreads the keys evenly
        # over the buckets of the index (see _index_buckets); a lookup matches exact keys
        key = torch.cat(keys).mul_(_MUL)
        by_key = torch.argsort(key)
        device = torch.device(device)
        self.keys = key[by_key].to(device)
        self._index_buckets()
        # one entry more than there are n-grams: where a lookup that finds nothing points
        self.logp = torch.cat([torch.cat(logps)[by_key].float(), torch.zeros(1)]).to(device)  # (ngrams + 1,) ln P
        self.next_state = torch.cat([torch.cat(nexts)[by_key], torch.zeros(1, dtype=torch.long)]).to(device)  # (ngrams + 1,)
        self._ends = (ends * vocab).where(ends >= 0, -vocab).to(device)  # (contexts, order)
        self._bows = bows.float().to(device)  # (contexts, order)
        self._levels = torch.arange(1, order + 1, device=device)  # (order,)

    def _find_context(self, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, j) word ids, oldest first, -1 for none (in front) -> the context id of each row's
        words and whether they are a listed context (CPU, for building the tables; j > 0 only
        once the 1-grams are contexts)."""
        vocab = len(self.words)
        context = torch.zeros(words.shape[0], dtype=torch.long)
        found = torch.ones(words.shape[0], dtype=torch.bool)
        for j in range(words.shape[1]):
            w = words[:, j]
            key = context * vocab + w
            at = torch.searchsorted(self._context_keys, key).clamp_(max=self._context_keys.numel() - 1)
            hit = self._context_keys[at] == key
            step = w >= 0  # padding leaves the context as it is
            found &= hit | ~step
            context = torch.where(step & hit, self._context_ids[at], context)
        return torch.where(found, context, 0), found

    def _longest_listed_end(self, words: torch.Tensor) -> torch.Tensor:
        """(m, N-1) word ids -> the context id of each row's longest listed end (0: none)."""
        best = torch.zeros(words.shape[0], dtype=torch.long)
        for start in range(words.shape[1] - 1, -1, -1):  # shortest first, longer ones override
            context, found = self._find_context(words[:, start:])
            best = torch.where(found, context, best)
        return best

    def _context_word_table(self) -> torch.Tensor:
        """(contexts, order - 1) word ids of every context, oldest first, -1 padding in front."""
        width = max(self.order - 1, 1)
        table = torch.full((self.num_contexts, width), -1, dtype=torch.long)
        node = torch.arange(self.num_contexts)
        for j in range(width - 1, -1, -1):
            table[:, j] = self._last[node]
            node = self._parent[node]
        return table

    def context(self, state: int) -> tuple[str, ...]:
        """The words of a state's context, oldest first (for tests and tools)."""
        words = []
        while state:
            words.append(self.words[int(self._last[state])])
            state = int(self._parent[state])
        return tuple(reversed(words))

    def _index_buckets(self) -> None:
        """A bucket index over the sorted keys, so that a lookup is two gathers, not a binary search.

        A key's bucket is its top `_bits` bits; buckets rise with the keys, so each bucket's keys
        are one run of the sorted table, starting at `_first[bucket]`. With 2 to 4 buckets per
        key the runs are short (a well-mixed key spreads evenly); a query is compared with
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
        an entry that may be the one past the end, whose log prob is 0)."""
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
        for name in ("keys", "logp", "next_state", "_ends", "_bows", "_levels"):
            setattr(self, name, getattr(self, name).to(device))
        self._index_buckets()
        return self

    def unigram_logp(self) -> list[float]:
        """ln P(w) of every word, by word id, as the 1-gram table lists it."""
        ids = torch.arange(len(self.words), device=self.device)
        logp, _ = self.score(torch.zeros_like(ids), ids)
        return logp.tolist()

    def word_id(self, word: str) -> int:
        return self.word_ids.get(word, self.unk)

    def start_state(self, *shape: int) -> torch.Tensor:
        """The state after <s>, (*shape) long."""
        return torch.full(shape, self._bos_state, dtype=torch.long, device=self.device)

    def score(self, state: torch.Tensor, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ln P(word | state) and the state after it, for a whole batch.

        state (...) long, words (...) long -> logp (...) float, new state (...) long.
        """
        shape = words.shape
        queries = self._ends.index_select(0, state.reshape(-1)).add_(words.reshape(-1, 1)).mul_(_MUL)  # (m, order)
        found, idx = self._lookup(queries)
        # the longest listed n-gram (the 1-gram always is: unknown words are <unk>) ...
        _, which = (found * self._levels).max(dim=1, keepdim=True)  # (m, 1)
        entry = idx.gather(1, which).view(-1)
        # ... plus the back-off weights of the context's listed ends longer than its context
        logp = self.logp.index_select(0, entry).add_(self._bows.view(-1).index_select(0, state.reshape(-1) * self.order + which.view(-1)))
        return logp.view(shape), self.next_state.index_select(0, entry).view(shape)

    def score_sentence(self, words: Sequence[str], bos: bool = True, eos: bool = True) -> float:
        """Total ln probability of a word sequence (OOV words score as <unk>); for tests and tools."""
        ids = [self.word_id(w) for w in words] + ([self.eos] if eos else [])
        state = self.start_state(1) if bos else torch.zeros(1, dtype=torch.long, device=self.device)
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
