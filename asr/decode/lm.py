"""Back-off n-gram language models as tensors that score a whole batch of (context, word) queries
at once, on the decoder's device. They load from ARPA files (`asr/decode/arpa.py`) of any order.

P(w | h) = P_arpa(h w) when the n-gram h w is listed, else bow(h) * P(w | h minus its first word).

Tensor form (see `NGramLM`): an n-gram is keyed by (id of its context, its last word), its
context being itself an n-gram (of one order less) with an id; the keys of all orders are in
one sorted table, looked up through a bucket index (two gathers per query, see
`NGramLM._index_buckets`).
"""

from __future__ import annotations

import ctypes
import math
import os
from typing import Iterable, Sequence

import torch

from asr.decode.arpa import Arpa, ArpaError, ArpaTables, arpa_lines, file_head, parse_arpa, parse_arpa_lines
from asr.fileio import atomic_path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LN10 = math.log(10.0)
MISSING_UNK_LOG10 = -100.0  # what KenLM assigns <unk> when an ARPA file does not list it

_BLOCK = 1 << 20  # rows per step where the tables are built in blocks
_FORMAT, _VERSION = "asr.ngram", 1  # the binary form (`NGramLM.save`): a torch.save zip archive
_ZIP_MAGIC = b"PK\x03\x04"

# Polynomial hash modulo 2**64: int64 multiplication wraps around (two's complement) on CPU
# and CUDA alike, so one step is an add and a multiply. The multiplier is odd (2**64 / golden
# ratio); a false hit is about 2**-64 per lookup for sequences as short as label prefixes.
# Multiplying by it alone is a bijection modulo 2**64: the LM's keys stay exact.
_MUL = 0x9E3779B97F4A7C15 - (1 << 64)


def _release_free_memory() -> None:
    """Hand the free pages of the C heap back to the system (glibc's malloc_trim(3)). glibc keeps
    what a big build freed for later use, some 2x the tables after an ARPA file is loaded; a
    no-op where there is no glibc."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def hash_step(key: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Fold one more id (>= 0) into a key (int64, same shape; the empty sequence is 0)."""
    return (key + ids + 1) * _MUL


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

    def __init__(self, arpa: Arpa | ArpaTables, device: torch.device | str = "cpu"):
        if isinstance(arpa, Arpa):  # through the file parser, which checks it (floats written exactly)
            arpa = parse_arpa_lines(arpa_lines(arpa, exact=True), "<Arpa>")
        self.order = order = arpa.order
        file_words = arpa.words + ([] if UNK in arpa.words else [UNK])  # by file order; ids as in `arpa`
        by_word = sorted(range(len(file_words)), key=file_words.__getitem__)
        self.words: list[str] = [file_words[i] for i in by_word]
        self.word_ids = {w: i for i, w in enumerate(self.words)}
        for special in (BOS, EOS):
            if special not in self.word_ids:
                raise ArpaError(f"the language model has no {special} 1-gram")
        self.bos, self.eos, self.unk = self.word_ids[BOS], self.word_ids[EOS], self.word_ids[UNK]
        vocab = len(self.words)
        word_of = torch.empty(vocab, dtype=torch.long)  # (vocab,) file word id -> ours (sorted)
        word_of[torch.tensor(by_word)] = torch.arange(vocab)
        # context ids: 0 the empty context, then the n-grams of each order < N in file order
        self.num_contexts = 1
        parents, lasts, bow_of = [torch.zeros(1, dtype=torch.long)], [torch.full((1,), -1)], [torch.zeros(1, dtype=torch.float64)]
        keys, logps, context_keys = [], [], []
        first_id = 0  # the context id of the first (n-1)-gram
        for n in range(1, order + 1):
            logp = torch.from_numpy(arpa.logp[n - 1])  # (count,) float64 log10
            bow = torch.from_numpy(arpa.bow[n - 1])
            if n == 1 and len(file_words) > len(arpa.words):  # <unk> is not listed
                logp, bow = torch.cat([logp, torch.tensor([MISSING_UNK_LOG10])]), torch.cat([bow, torch.zeros(1, dtype=torch.float64)])
            count = len(logp)
            last = word_of[torch.from_numpy(arpa.ids[n - 1][:, -1]).long()] if n > 1 else word_of
            parent = torch.from_numpy(arpa.context[n - 1]) + first_id if n > 1 else torch.zeros(count, dtype=torch.long)
            key = parent * vocab + last  # (count,)
            keys.append(key)
            logps.append((logp * LN10).float())
            if n < order:  # an n-gram of order < N is a context, and the state after itself
                first_id = self.num_contexts
                self.num_contexts += count
                context_keys.append(key)
                parents.append(parent)
                lasts.append(last)
                bow_of.append(bow * LN10)
            del logp, bow, last, parent, key
        # all contexts, sorted by key, for _find_context
        self._context_keys, by_key = torch.sort(torch.cat(context_keys)) if context_keys else (torch.zeros(0, dtype=torch.long),) * 2
        self._context_ids = by_key + 1
        # the state after an N-gram: its longest end of order < N that is listed (in blocks of
        # rows: the lookups' temporaries stay small next to the tables)
        top = arpa.ids[order - 1]
        nexts = [torch.arange(1, self.num_contexts)] if order > 1 else []
        for start in range(0, len(top), _BLOCK):
            nexts.append(self._longest_listed_end(word_of[torch.from_numpy(top[start : start + _BLOCK, 1:]).long()]))
        self._bos_state = int(self._find_context(torch.tensor([[self.bos]]))[0]) if order > 1 else 0
        # per context and j: the key part of its last j words (their context id * vocab; -vocab
        # when those words are not listed: no key matches), and the ln back-off weights of its
        # listed ends longer than j
        self._parent, self._last = torch.cat(parents), torch.cat(lasts)  # by context id
        del parents, lasts, context_keys
        words_of = self._context_word_table()  # (contexts, order - 1), oldest first, -1 padding in front
        ends = torch.full((self.num_contexts, order), -1, dtype=torch.long)
        ends[:, 0] = 0
        for j in range(1, order):
            end, found = self._find_context(words_of[:, order - 1 - j :])
            ends[:, j] = torch.where(found & (words_of[:, order - 1 - j] >= 0), end, -1)  # a context has ends up to its length
            del end, found
        del words_of, self._context_keys, self._context_ids  # the rest needs no search among the contexts
        # the ln back-off weights of each context's listed ends longer than j: a running sum from
        # the longest end down, a column at a time (float64, as the file's numbers are summed)
        bow_of = torch.cat(bow_of)
        bows = torch.zeros(self.num_contexts, order)
        running = torch.zeros(self.num_contexts, dtype=torch.float64)
        for j in range(order - 1, 0, -1):
            running += bow_of.index_select(0, ends[:, j].clamp(min=0)).mul_(ends[:, j] >= 0)
            bows[:, j - 1] = running
        del bow_of, running
        self._ends = ends.mul_(vocab).masked_fill_(ends < 0, -vocab)  # (contexts, order), in place
        del ends
        # the table is sorted by key * MUL (mod 2**64): a bijection that spreads the keys evenly
        # over the buckets of the index (see _index_buckets); a lookup matches exact keys
        key = torch.cat(keys).mul_(_MUL)
        del keys
        key, by_key = torch.sort(key)  # (ngrams,)
        self.keys = key
        del key
        self._index_buckets()
        # one entry more than there are n-grams: where a lookup that finds nothing points
        self.logp = torch.zeros(len(by_key) + 1)  # (ngrams + 1,) ln P
        torch.index_select(torch.cat(logps), 0, by_key, out=self.logp[:-1])
        del logps
        self.next_state = torch.zeros(len(by_key) + 1, dtype=torch.long)  # (ngrams + 1,)
        nexts = torch.cat(nexts)
        torch.index_select(nexts, 0, by_key, out=self.next_state[:-1])
        del nexts, by_key
        self._bows = bows  # (contexts, order)
        self._levels = torch.arange(1, order + 1)  # (order,)
        self._parent, self._last = self._parent.int(), self._last.int()  # for `context`
        if torch.device(device).type != "cpu":
            self.to(device)

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
        for _ in range(self.order - 1):  # a context has fewer words than the order
            if not state:
                break
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
        # a bucket's run starts after the keys of the buckets below it: where the bucket's number
        # would go among the keys' (rising) bucket numbers, found a block of buckets at a time,
        # so that no (buckets,) int64 temporary sits beside the table
        buckets, small = 1 << self._bits, keys.numel() < 2**31
        self._first = torch.empty(buckets + 1, dtype=torch.int32 if small else torch.long, device=keys.device)
        of_keys = self._bucket(keys)  # (ngrams,) rising
        for start in range(0, buckets + 1, _BLOCK):
            number = torch.arange(start, min(start + _BLOCK, buckets + 1), device=keys.device)
            torch.searchsorted(of_keys, number, out_int32=small, out=self._first[start : start + len(number)])
        del of_keys
        window = max(int(self._first.diff().max()), 1)
        self._padded = torch.cat([keys, keys[-1:].expand(window)])  # (ngrams + window,)
        self._set_windows(keys.numel(), window)

    def _set_windows(self, ngrams: int, window: int) -> None:
        self.keys = self._padded[:ngrams]  # the same memory as the windows
        self._windows = self._padded.unfold(0, window, 1)  # (ngrams + 1, window) view

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
        """Load an ARPA file (plain or compressed, streamed into arrays: see `parse_arpa`), or the
        binary form `save` writes (`asr lm compile`), told apart by the file's first bytes.
        Errors are ArpaError naming the file (and the line, in an ARPA file)."""
        if file_head(path, len(_ZIP_MAGIC), "language model file") == _ZIP_MAGIC:
            return cls._load(path, device)
        lm = cls(parse_arpa(path), device)
        _release_free_memory()  # what the parser and the build freed
        return lm

    def save(self, path: str | os.PathLike) -> None:
        """Write the model's tables as they are (atomically), for `from_file` to map back in a
        moment and at their own size: a torch.save archive of plain tensors, numbers and the word
        list, read with weights_only=True (nothing is unpickled but those)."""
        data = {
            "format": _FORMAT, "version": _VERSION, "order": self.order, "words": self.words,
            "num_contexts": self.num_contexts, "bos_state": self._bos_state, "bits": self._bits,
            "window": self._windows.shape[1], "padded_keys": self._padded, "first": self._first,
            "logp": self.logp, "next_state": self.next_state, "ends": self._ends, "bows": self._bows,
            "parent": self._parent, "last": self._last,
        }
        with atomic_path(path) as tmp:
            torch.save({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in data.items()}, tmp)

    @classmethod
    def _load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> "NGramLM":
        """The model `save` wrote. The tensors are memory-mapped from the file (on CPU), so
        loading reads only the word list; its shapes and dtypes are checked here."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # a broken archive, or one that holds more than tensors and numbers
            raise ArpaError(f"{path}: not a language model file of ours ({type(e).__name__}: {e})") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ArpaError(f"{path}: not a language model file of ours (a torch archive without format {_FORMAT!r})")
        if data.get("version") != _VERSION:
            raise ArpaError(f"{path}: language model file version {data.get('version')!r}; this asr reads version {_VERSION}")
        lm = cls.__new__(cls)
        try:
            lm.order, lm.words, lm.num_contexts = int(data["order"]), list(data["words"]), int(data["num_contexts"])
            lm._bos_state, lm._bits, window = int(data["bos_state"]), int(data["bits"]), int(data["window"])
            lm._padded, lm._first, lm.logp, lm.next_state = data["padded_keys"], data["first"], data["logp"], data["next_state"]
            lm._ends, lm._bows, lm._parent, lm._last = data["ends"], data["bows"], data["parent"], data["last"]
        except (KeyError, TypeError, ValueError) as e:
            raise ArpaError(f"{path}: language model file lacks or garbles {e}") from None
        if not (2 <= lm._bits <= 62 and window >= 1 and lm.order >= 1 and lm.num_contexts >= 1 and all(isinstance(w, str) for w in lm.words)):
            raise ArpaError(f"{path}: language model file is inconsistent (bits {lm._bits}, window {window}, order {lm.order}, "
                            f"{lm.num_contexts} contexts, or a word that is not a string)")
        ngrams = lm._padded.numel() - window if isinstance(lm._padded, torch.Tensor) else 0
        expected = {  # name: (tensor, dtypes, shape)
            "padded_keys": (lm._padded, (torch.long,), (ngrams + window,)),
            "first": (lm._first, (torch.int32, torch.long), ((1 << lm._bits) + 1,)),
            "logp": (lm.logp, (torch.float32,), (ngrams + 1,)),
            "next_state": (lm.next_state, (torch.long,), (ngrams + 1,)),
            "ends": (lm._ends, (torch.long,), (lm.num_contexts, lm.order)),
            "bows": (lm._bows, (torch.float32,), (lm.num_contexts, lm.order)),
            "parent": (lm._parent, (torch.int32,), (lm.num_contexts,)),
            "last": (lm._last, (torch.int32,), (lm.num_contexts,)),
        }
        for name, (tensor, dtypes, shape) in expected.items():
            if not isinstance(tensor, torch.Tensor) or tensor.dtype not in dtypes or tuple(tensor.shape) != shape:
                got = f"{tensor.dtype} {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ArpaError(f"{path}: language model file's {name!r} is {got}, expected {dtypes[0]} {shape}")
        # the values every lookup indexes with, in range (one pass over each table)
        vocab, runs = len(lm.words), lm._first.diff()  # runs: keys per bucket, at most the window
        sound = (
            vocab == len(set(lm.words)) and 0 <= lm._bos_state < lm.num_contexts
            and bool(lm._ends.ge(-vocab).all()) and bool(lm._ends.lt(lm.num_contexts * vocab).all())
            and int(lm._first[0]) == 0 and int(lm._first[-1]) == ngrams and bool(runs.ge(0).all()) and int(runs.max()) <= window
            and bool(lm.next_state.ge(0).all()) and bool(lm.next_state.lt(lm.num_contexts).all())
            and bool(lm._parent.ge(0).all()) and bool(lm._parent.lt(lm.num_contexts).all())
            and bool(lm._last.ge(-1).all()) and bool(lm._last.lt(vocab).all())
        )
        del runs
        if not sound:
            raise ArpaError(f"{path}: language model file is inconsistent (an index out of range, or a word listed twice)")
        lm.word_ids = {w: i for i, w in enumerate(lm.words)}
        for special in (BOS, EOS, UNK):
            if special not in lm.word_ids:
                raise ArpaError(f"{path}: language model file has no {special} word")
        lm.bos, lm.eos, lm.unk = lm.word_ids[BOS], lm.word_ids[EOS], lm.word_ids[UNK]
        lm._levels = torch.arange(1, lm.order + 1)
        lm._set_windows(ngrams, window)
        return lm if torch.device(device).type == "cpu" else lm.to(device)

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def to(self, device: torch.device | str) -> "NGramLM":
        ngrams, window = self.keys.numel(), self._windows.shape[1]
        for name in ("_padded", "_first", "logp", "next_state", "_ends", "_bows", "_levels"):
            setattr(self, name, getattr(self, name).to(device))
        self._set_windows(ngrams, window)
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
