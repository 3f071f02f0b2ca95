"""Back-off n-gram language models as numpy arrays that score a whole batch of (context, word)
queries at once. They load from ARPA files (`asr/decode/arpa.py`) of any order, or from the
arrays `NGramLM.save` wrote (`asr/decode/lm_file.py`), without torch.

P(w | h) = P_arpa(h w) when the n-gram h w is listed, else bow(h) * P(w | h minus its first word).

Array form (see `NGramLM`): an n-gram is keyed by (id of its context, its last word), its
context being itself an n-gram (of one order less) with an id; the keys of all orders are in
one sorted table, looked up through a bucket index (two gathers per query, see
`NGramLM._index_buckets`). The numba layout of the beam search reads these arrays as they are;
the torch layouts read the same tables as tensors on their device (`NGramLM.tensors`), with
the same lookup in torch ops (`NGramTensors.score`).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
from typing import Iterable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from asr.arrays import is_tensor
from asr.decode.arpa import Arpa, ArpaError, ArpaTables, arpa_lines, file_head, parse_arpa, parse_arpa_lines
from asr.decode.lm_file import HEAD, ZIP_MAGIC, ArrayFileError, is_array_file, read_arrays, read_torch_archive, write_arrays

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LN10 = math.log(10.0)
MISSING_UNK_LOG10 = -100.0  # what KenLM assigns <unk> when an ARPA file does not list it

_BLOCK = 1 << 20  # rows per step where the tables are built in blocks
_FORMAT = "asr.ngram"  # the binary form (`NGramLM.save`)
_VERSION = 2  # 2: arrays (`lm_file.write_arrays`); 1: a torch.save archive (read where torch is installed)
_TABLES = {  # the arrays of the binary form: name in the file -> attribute
    "padded_keys": "_padded", "first": "_first", "logp": "logp", "next_state": "next_state",
    "ends": "_ends", "bows": "_bows", "parent": "_parent", "last": "_last",
}

# Polynomial hash modulo 2**64: int64 multiplication wraps around (two's complement) in numpy
# arrays, numba, and torch on CPU and CUDA alike, so one step is an add and a multiply. The
# multiplier is odd (2**64 / golden ratio); a false hit is about 2**-64 per lookup for sequences
# as short as label prefixes. Multiplying by it alone is a bijection modulo 2**64: the LM's keys
# stay exact.
_MUL = 0x9E3779B97F4A7C15 - (1 << 64)


def _release_free_memory() -> None:
    """Hand the free pages of the C heap back to the system (glibc's malloc_trim(3)). glibc keeps
    what a big build freed for later use, some 2x the tables after an ARPA file is loaded; a
    no-op where there is no glibc."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def hash_step(key, ids):
    """Fold one more id (>= 0) into a key (int64 numpy arrays or torch tensors, same shape; the
    empty sequence is 0)."""
    return (key + ids + 1) * _MUL


class NGramLM:
    """A back-off n-gram model as numpy arrays, scoring batches of queries in natural-log units.

    State of a hypothesis = one id: its context, the longest end of its word history that the
    model lists as an n-gram of order < N (KenLM's state minimization: a longer history scores
    the same, since no listed n-gram starts with it and its back-off weight is 1). Id 0 is the
    empty context; the state after <s> is the id of the 1-gram <s>.

    A query (context c, word w) looks up the N n-grams (c_j w), c_j the last j words of c
    (j = 0 .. N-1), in one table, all at once (`_lookup`). The answer is ln P of the longest one
    listed plus the back-off weights of c's listed ends longer than it (a per-context table, by
    j), and the next state is that n-gram itself, or for an N-gram its longest listed end short
    enough to be a context (a table by n-gram). About twenty array ops at any order.

    device: also make the tables' tensors there now (`tensors`), for the torch layouts.
    """

    def __init__(self, arpa: Arpa | ArpaTables, device=None):
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
        vocab = len(self.words)
        word_of = np.empty(vocab, dtype=np.int64)  # (vocab,) file word id -> ours (sorted)
        word_of[np.array(by_word, dtype=np.int64)] = np.arange(vocab)
        # context ids: 0 the empty context, then the n-grams of each order < N in file order
        self.num_contexts = 1
        parents, lasts, bow_of = [np.zeros(1, dtype=np.int64)], [np.full(1, -1, dtype=np.int64)], [np.zeros(1)]
        keys, logps, context_keys = [], [], []
        first_id = 0  # the context id of the first (n-1)-gram
        for n in range(1, order + 1):
            logp, bow = arpa.logp[n - 1], arpa.bow[n - 1]  # (count,) float64 log10
            if n == 1 and len(file_words) > len(arpa.words):  # <unk> is not listed
                logp, bow = np.append(logp, MISSING_UNK_LOG10), np.append(bow, 0.0)
            count = len(logp)
            last = word_of[arpa.ids[n - 1][:, -1]] if n > 1 else word_of
            parent = arpa.context[n - 1] + first_id if n > 1 else np.zeros(count, dtype=np.int64)
            key = parent * vocab + last  # (count,)
            keys.append(key)
            logps.append((logp * LN10).astype(np.float32))
            if n < order:  # an n-gram of order < N is a context, and the state after itself
                first_id = self.num_contexts
                self.num_contexts += count
                context_keys.append(key)
                parents.append(parent)
                lasts.append(last)
                bow_of.append(bow * LN10)
            del logp, bow, last, parent, key
        # all contexts, sorted by key, for _find_context (the keys are distinct)
        self._context_keys = np.concatenate(context_keys) if context_keys else np.zeros(0, dtype=np.int64)
        by_key = np.argsort(self._context_keys)
        self._context_keys = self._context_keys[by_key]
        self._context_ids = by_key + 1
        # the state after an N-gram: its longest end of order < N that is listed (in blocks of
        # rows: the lookups' temporaries stay small next to the tables)
        top = arpa.ids[order - 1]
        nexts = [np.arange(1, self.num_contexts)] if order > 1 else []
        for start in range(0, len(top), _BLOCK):
            nexts.append(self._longest_listed_end(word_of[top[start : start + _BLOCK, 1:]]))
        self._bos_state = int(self._find_context(np.array([[self.word_ids[BOS]]]))[0][0]) if order > 1 else 0
        # per context and j: the key part of its last j words (their context id * vocab; -vocab
        # when those words are not listed: no key matches), and the ln back-off weights of its
        # listed ends longer than j
        self._parent, self._last = np.concatenate(parents), np.concatenate(lasts)  # by context id
        del parents, lasts, context_keys
        words_of = self._context_word_table()  # (contexts, order - 1), oldest first, -1 padding in front
        ends = np.full((self.num_contexts, order), -1, dtype=np.int64)
        ends[:, 0] = 0
        for j in range(1, order):
            end, found = self._find_context(words_of[:, order - 1 - j :])
            ends[:, j] = np.where(found & (words_of[:, order - 1 - j] >= 0), end, -1)  # a context has ends up to its length
            del end, found
        del words_of, self._context_keys, self._context_ids  # the rest needs no search among the contexts
        # the ln back-off weights of each context's listed ends longer than j: a running sum from
        # the longest end down, a column at a time (float64, as the file's numbers are summed)
        bow_of = np.concatenate(bow_of)
        bows = np.zeros((self.num_contexts, order), dtype=np.float32)
        running = np.zeros(self.num_contexts)
        for j in range(order - 1, 0, -1):
            running += bow_of[np.maximum(ends[:, j], 0)] * (ends[:, j] >= 0)
            bows[:, j - 1] = running
        del bow_of, running
        ends *= vocab  # (contexts, order), in place
        ends[ends < 0] = -vocab
        self._ends = ends
        del ends
        # the table is sorted by key * MUL (mod 2**64): a bijection that spreads the keys evenly
        # over the buckets of the index (see _index_buckets); a lookup matches exact keys
        key = np.concatenate(keys)
        key *= _MUL
        del keys
        by_key = np.argsort(key)  # (ngrams,) the keys are distinct
        self.keys = key[by_key]
        del key
        self._index_buckets()
        # one entry more than there are n-grams: where a lookup that finds nothing points
        self.logp = np.zeros(len(by_key) + 1, dtype=np.float32)  # (ngrams + 1,) ln P
        np.take(np.concatenate(logps), by_key, out=self.logp[:-1])
        del logps
        self.next_state = np.zeros(len(by_key) + 1, dtype=np.int64)  # (ngrams + 1,)
        nexts = np.concatenate(nexts)
        np.take(nexts, by_key, out=self.next_state[:-1])
        del nexts, by_key
        self._bows = bows  # (contexts, order)
        self._parent, self._last = self._parent.astype(np.int32), self._last.astype(np.int32)  # for `context`
        self._finish(device)

    def _finish(self, device) -> None:
        """What both ways of making a model (an ARPA file, a saved one) end with."""
        self.bos, self.eos, self.unk = self.word_ids[BOS], self.word_ids[EOS], self.word_ids[UNK]
        self._levels = np.arange(1, self.order + 1)  # (order,)
        self._tensors: dict = {}  # torch device -> NGramTensors
        if device is not None and str(device) != "cpu":
            self.tensors(device)

    def _find_context(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(m, j) word ids, oldest first, -1 for none (in front) -> the context id of each row's
        words and whether they are a listed context (for building the tables; j > 0 only once
        the 1-grams are contexts)."""
        vocab = len(self.words)
        context = np.zeros(words.shape[0], dtype=np.int64)
        found = np.ones(words.shape[0], dtype=bool)
        for j in range(words.shape[1]):
            w = words[:, j]
            key = context * vocab + w
            at = np.minimum(np.searchsorted(self._context_keys, key), len(self._context_keys) - 1)
            hit = self._context_keys[at] == key
            step = w >= 0  # padding leaves the context as it is
            found &= hit | ~step
            context = np.where(step & hit, self._context_ids[at], context)
        return np.where(found, context, 0), found

    def _longest_listed_end(self, words: np.ndarray) -> np.ndarray:
        """(m, N-1) word ids -> the context id of each row's longest listed end (0: none)."""
        best = np.zeros(words.shape[0], dtype=np.int64)
        for start in range(words.shape[1] - 1, -1, -1):  # shortest first, longer ones override
            context, found = self._find_context(words[:, start:])
            best = np.where(found, context, best)
        return best

    def _context_word_table(self) -> np.ndarray:
        """(contexts, order - 1) word ids of every context, oldest first, -1 padding in front."""
        width = max(self.order - 1, 1)
        table = np.full((self.num_contexts, width), -1, dtype=np.int64)
        node = np.arange(self.num_contexts)
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
        keys = np.asarray(self.keys)  # (a plain array: the index is built of it)
        self._bits = min(max(len(keys).bit_length() + 1, 2), 62)
        # a bucket's run starts after the keys of the buckets below it: where the bucket's number
        # would go among the keys' (rising) bucket numbers, found a block of buckets at a time,
        # so that no (buckets,) int64 temporary sits beside the table
        buckets = 1 << self._bits
        self._first = np.empty(buckets + 1, dtype=np.int32 if len(keys) < 2**31 else np.int64)
        of_keys = self._bucket(keys)  # (ngrams,) rising
        for start in range(0, buckets + 1, _BLOCK):
            number = np.arange(start, min(start + _BLOCK, buckets + 1))
            self._first[start : start + len(number)] = np.searchsorted(of_keys, number)
        del of_keys
        window = max(int(np.diff(self._first).max()), 1)
        self._padded = np.concatenate([keys, np.repeat(keys[-1:], window)])  # (ngrams + window,)
        self._set_windows(len(keys), window)

    def _set_windows(self, ngrams: int, window: int) -> None:
        self.keys = self._padded[:ngrams]  # the same memory as the windows
        self._windows = sliding_window_view(self._padded, window)  # (ngrams + 1, window) view

    def _bucket(self, keys: np.ndarray) -> np.ndarray:
        return (keys >> (64 - self._bits)) + (1 << (self._bits - 1))  # top bits, 0 .. 2**bits - 1, rising with the key

    def _lookup(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(m, c) keys -> whether each is listed (bool), and its entry (else its bucket's start:
        an entry that may be the one past the end, whose log prob is 0)."""
        column = queries.reshape(-1, 1)
        start = self._first[self._bucket(column.reshape(-1))]
        same = self._windows[start] == column  # (m * c, window)
        at = same.argmax(axis=1)  # the first match, 0 when nothing matched
        hit = same[np.arange(len(at)), at]
        return hit.reshape(queries.shape), (start + at).reshape(queries.shape)

    @property
    def num_ngrams(self) -> int:
        return self.keys.size

    @classmethod
    def from_file(cls, path: str | os.PathLike, device=None) -> "NGramLM":
        """Load an ARPA file (plain or compressed, streamed into arrays: see `parse_arpa`), or the
        binary form `save` writes (`asr lm compile`; or an older asr's torch archive, where torch
        is installed), told apart by the file's first bytes. Errors are ArpaError naming the file
        (and the line, in an ARPA file). device: as for `NGramLM`."""
        head = file_head(path, 8 + len(HEAD), "language model file")
        if head.startswith(ZIP_MAGIC) or is_array_file(head):
            return cls._load(path, head.startswith(ZIP_MAGIC), device)
        lm = cls(parse_arpa(path), device)
        _release_free_memory()  # what the parser and the build freed
        return lm

    def save(self, path: str | os.PathLike) -> None:
        """Write the model's tables as they are (atomically), for `from_file` to map back in a
        moment and at their own size: arrays and a JSON header (`lm_file.write_arrays`); the
        word list and the numbers are in the header's metadata."""
        model = {
            "order": self.order, "num_contexts": self.num_contexts, "bos_state": self._bos_state, "bits": self._bits,
            "window": self._windows.shape[1], "words": self.words,
        }
        metadata = {"format": _FORMAT, "version": str(_VERSION), "model": json.dumps(model, ensure_ascii=False)}
        write_arrays(path, {name: getattr(self, attr) for name, attr in _TABLES.items()}, metadata)

    @classmethod
    def _load(cls, path: str | os.PathLike, torch_archive: bool, device=None) -> "NGramLM":
        """The model `save` wrote (or an older asr's torch archive). The arrays are memory-mapped
        from the file, so loading reads only the header; their shapes, dtypes and the values
        every lookup indexes with are checked here."""
        try:
            arrays, model = cls._read_torch_archive(path) if torch_archive else cls._read_arrays(path)
        except ArrayFileError as e:
            raise ArpaError(f"{path}: not a language model file of ours ({e})") from None
        lm = cls.__new__(cls)
        try:
            lm.order, lm.words, lm.num_contexts = int(model["order"]), list(model["words"]), int(model["num_contexts"])
            lm._bos_state, lm._bits, window = int(model["bos_state"]), int(model["bits"]), int(model["window"])
            for name, attr in _TABLES.items():
                setattr(lm, attr, arrays[name])
        except (KeyError, TypeError, ValueError) as e:
            raise ArpaError(f"{path}: language model file lacks or garbles {e}") from None
        if not (2 <= lm._bits <= 62 and window >= 1 and lm.order >= 1 and lm.num_contexts >= 1 and all(isinstance(w, str) for w in lm.words)):
            raise ArpaError(f"{path}: language model file is inconsistent (bits {lm._bits}, window {window}, order {lm.order}, "
                            f"{lm.num_contexts} contexts, or a word that is not a string)")
        ngrams = lm._padded.size - window if isinstance(lm._padded, np.ndarray) else 0
        expected = {  # name: (array, dtypes, shape)
            "padded_keys": (lm._padded, (np.int64,), (ngrams + window,)),
            "first": (lm._first, (np.int32, np.int64), ((1 << lm._bits) + 1,)),
            "logp": (lm.logp, (np.float32,), (ngrams + 1,)),
            "next_state": (lm.next_state, (np.int64,), (ngrams + 1,)),
            "ends": (lm._ends, (np.int64,), (lm.num_contexts, lm.order)),
            "bows": (lm._bows, (np.float32,), (lm.num_contexts, lm.order)),
            "parent": (lm._parent, (np.int32,), (lm.num_contexts,)),
            "last": (lm._last, (np.int32,), (lm.num_contexts,)),
        }
        for name, (array, dtypes, shape) in expected.items():
            if not isinstance(array, np.ndarray) or array.dtype not in dtypes or array.shape != shape:
                got = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
                raise ArpaError(f"{path}: language model file's {name!r} is {got}, expected {np.dtype(dtypes[0])} {shape}")
        # the values every lookup indexes with, in range (one pass over each table)
        lm.word_ids = {w: i for i, w in enumerate(lm.words)}
        vocab, runs = len(lm.words), np.diff(lm._first)  # runs: keys per bucket, at most the window
        sound = (
            vocab == len(lm.word_ids) and 0 <= lm._bos_state < lm.num_contexts
            and lm._ends.min() >= -vocab and lm._ends.max() < lm.num_contexts * vocab
            and int(lm._first[0]) == 0 and int(lm._first[-1]) == ngrams and runs.min() >= 0 and int(runs.max()) <= window
            and lm.next_state.min() >= 0 and lm.next_state.max() < lm.num_contexts
            and lm._parent.min() >= 0 and lm._parent.max() < lm.num_contexts
            and lm._last.min() >= -1 and lm._last.max() < vocab
        )
        del runs
        if not sound:
            raise ArpaError(f"{path}: language model file is inconsistent (an index out of range, or a word listed twice)")
        for special in (BOS, EOS, UNK):
            if special not in lm.word_ids:
                raise ArpaError(f"{path}: language model file has no {special} word")
        lm._set_windows(ngrams, window)
        lm._finish(device)
        return lm

    @staticmethod
    def _read_arrays(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
        """`save`'s arrays and the header's model description."""
        arrays, metadata = read_arrays(path)
        if metadata.get("format") != _FORMAT:
            raise ArrayFileError(f"an array file without format {_FORMAT!r}")
        if metadata.get("version") != str(_VERSION):
            raise ArrayFileError(f"language model file version {metadata.get('version')!r}; this asr reads version {_VERSION}")
        try:
            model = json.loads(metadata.get("model", ""))
        except json.JSONDecodeError as e:
            raise ArrayFileError(f"its model description is not JSON ({e})") from None
        if not isinstance(model, dict):
            raise ArrayFileError("its model description is not a JSON object")
        return arrays, model

    @staticmethod
    def _read_torch_archive(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
        """What an older asr saved (a torch.save archive, format version 1): its arrays and numbers."""
        try:
            data = read_torch_archive(path)
        except ImportError:
            raise ArpaError(
                f"{path}: a language model file of an older asr (a torch archive), which only reads where torch is installed; "
                f"compile the ARPA file again (`asr lm compile LM.arpa -o {path}`), or convert this one where torch is "
                f"(`asr lm compile {path} -o NEW.bin`)"
            ) from None
        if data.get("format") != _FORMAT:
            raise ArrayFileError(f"a torch archive without format {_FORMAT!r}")
        if data.get("version") != 1:
            raise ArrayFileError(f"language model file version {data.get('version')!r}; this asr reads torch archives of version 1")
        return data, data

    def tensors(self, device="cpu") -> "NGramTensors":
        """The tables as torch tensors on `device`, for the torch layouts of the beam search: made
        on first use, then kept (on the CPU they share the arrays' memory)."""
        import torch

        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._tensors:
            self._tensors[device] = NGramTensors(self, device)
        return self._tensors[device]

    def to(self, device) -> "NGramLM":
        """Make the tables' tensors on `device` now (`tensors`); the model itself stays arrays."""
        self.tensors(device)
        return self

    def unigram_logp(self) -> list[float]:
        """ln P(w) of every word, by word id, as the 1-gram table lists it."""
        ids = np.arange(len(self.words))
        logp, _ = self.score(np.zeros_like(ids), ids)
        return logp.tolist()

    def word_id(self, word: str) -> int:
        return self.word_ids.get(word, self.unk)

    def start_state(self, *shape: int) -> np.ndarray:
        """The state after <s>, (*shape) int64."""
        return np.full(shape, self._bos_state, dtype=np.int64)

    def score(self, state, words):
        """ln P(word | state) and the state after it, for a whole batch.

        state (...) int64, words (...) int64 -> logp (...) float32, new state (...) int64: numpy
        arrays, or torch tensors (scored on their device by `tensors(device).score`).
        """
        if is_tensor(state):
            return self.tensors(state.device).score(state, words)
        state, words = np.asarray(state), np.asarray(words)
        shape = words.shape
        queries = (self._ends[state.reshape(-1)] + words.reshape(-1, 1)) * _MUL  # (m, order)
        found, idx = self._lookup(queries)
        # the longest listed n-gram (the 1-gram always is: unknown words are <unk>) ...
        which = (found * self._levels).argmax(axis=1)  # (m,)
        entry = idx[np.arange(len(which)), which]
        # ... plus the back-off weights of the context's listed ends longer than its context
        logp = self.logp[entry] + self._bows.reshape(-1)[state.reshape(-1) * self.order + which]
        return logp.reshape(shape), self.next_state[entry].reshape(shape)

    def score_sentence(self, words: Sequence[str], bos: bool = True, eos: bool = True) -> float:
        """Total ln probability of a word sequence (OOV words score as <unk>); for tests and tools."""
        ids = [self.word_id(w) for w in words] + ([self.eos] if eos else [])
        state = self.start_state(1) if bos else np.zeros(1, dtype=np.int64)
        total = 0.0
        for i in ids:
            logp, state = self.score(state, np.array([i]))
            total += float(logp[0])
        return total


class NGramTensors:
    """An NGramLM's tables as torch tensors on one device, and its `score` in torch ops: what
    the torch layouts of the beam search (flat, dense, triton) read. On the CPU the tensors
    share the arrays' memory; elsewhere they are copies, made once (`NGramLM.tensors`)."""

    def __init__(self, lm: NGramLM, device):
        import torch

        self.order, self.bos, self.eos, self.unk, self._bits, self._bos_state = lm.order, lm.bos, lm.eos, lm.unk, lm._bits, lm._bos_state
        self.device = torch.device(device)
        self._uint8 = torch.uint8
        self._padded, self._first, self.logp, self.next_state, self._ends, self._bows = (
            torch.from_numpy(a).to(device) for a in (lm._padded, lm._first, lm.logp, lm.next_state, lm._ends, lm._bows)
        )
        self._levels = torch.arange(1, lm.order + 1, device=device)  # (order,)
        self.keys = self._padded[: lm.num_ngrams]
        self._windows = self._padded.unfold(0, lm._windows.shape[1], 1)  # (ngrams + 1, window) view

    def _bucket(self, keys):
        return (keys >> (64 - self._bits)) + (1 << (self._bits - 1))

    def _lookup(self, queries):
        """NGramLM._lookup on tensors: whether each key is listed (uint8), and its entry."""
        column = queries.view(-1, 1)
        start = self._first.index_select(0, self._bucket(column.view(-1)))
        # max returns the first maximal index (torch.max docs), so `at` is 0 when nothing matched
        hit, at = (self._windows.index_select(0, start) == column).view(self._uint8).max(dim=1)
        return hit.view(queries.shape), (start + at).view(queries.shape)

    def start_state(self, *shape: int):
        """The state after <s>, (*shape) long, on the device."""
        import torch

        return torch.full(shape, self._bos_state, dtype=torch.long, device=self.device)

    def score(self, state, words):
        """NGramLM.score in torch ops: state (...) long, words (...) long -> logp (...) float,
        new state (...) long."""
        shape = words.shape
        queries = self._ends.index_select(0, state.reshape(-1)).add_(words.reshape(-1, 1)).mul_(_MUL)  # (m, order)
        found, idx = self._lookup(queries)
        _, which = (found * self._levels).max(dim=1, keepdim=True)  # (m, 1)
        entry = idx.gather(1, which).view(-1)
        logp = self.logp.index_select(0, entry).add_(self._bows.view(-1).index_select(0, state.reshape(-1) * self.order + which.view(-1)))
        return logp.view(shape), self.next_state.index_select(0, entry).view(shape)


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
