"""The ARPA text format of back-off n-gram models (Stolcke's SRILM; also what KenLM reads and writes):

    \\data\\
    ngram 1=3
    ngram 2=2
    \\1-grams:
    -1.0  <s>  -0.3        log10 P(w)   w   [log10 back-off weight]
    ...
    \\end\\

`parse_arpa` streams a file of any order into arrays (`ArpaTables`: a few tens of bytes per
n-gram, where a dict of word tuples takes ~800), checking it as it goes; `NGramLM` builds its
tensors from those. `read_arpa` / `write_arpa` turn a file into plain Python dicts (`Arpa`) and
back, for small models and tools (`asr lm build`, tests).

Files may be compressed with gzip, bzip2 or xz (LibriSpeech's LMs come as .arpa.gz): reading
goes by the file's first bytes, writing by its name's suffix (.gz, .bz2, .xz), as KenLM does.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import math
import os
import re
from array import array
from dataclasses import dataclass
from typing import IO, Iterable, Iterator, NoReturn

import numpy as np

from asr.fileio import atomic_path


class ArpaError(ValueError):
    """A missing or malformed language model file (ARPA text, or `asr lm compile`'s output); the
    message names the file, and the line in an ARPA file."""


@dataclass
class Arpa:
    """An ARPA file as plain Python: `ngrams[n-1]` maps a word tuple to (log10 prob, log10 bow)."""

    ngrams: list[dict[tuple[str, ...], tuple[float, float]]]

    @property
    def order(self) -> int:
        return len(self.ngrams)


@dataclass
class ArpaTables:
    """An ARPA file as arrays, the n-grams of each order in file order (order n at index n - 1).

    Word ids number the 1-grams in file order. Every n-gram's words are 1-grams and its context
    (all words but the last) is listed among the (n-1)-grams, at row `context[n-1][i]`."""

    words: list[str]  # the 1-grams' words; word id = position
    ids: list[np.ndarray]  # (count, n) int32 word ids, oldest first
    logp: list[np.ndarray]  # (count,) float64 log10 P(last word | context)
    bow: list[np.ndarray]  # (count,) float64 log10 back-off weight, 0 where the line has none
    context: list[np.ndarray]  # (count,) int64 row of the context among the (n-1)-grams (0 for 1-grams)

    @property
    def order(self) -> int:
        return len(self.ids)


_SECTION = re.compile(r"\\(\d+)-grams:")
_COUNT = re.compile(r"ngram\s+(\d+)\s*=\s*(\S+)")


def _parse_float(text: str, where: str, what: str) -> float:
    try:
        value = float(text)  # also takes "-inf" (SRILM writes it for impossible events)
    except ValueError:
        value = math.nan
    if math.isnan(value) or "_" in text:  # float() would take "nan" and "1_0"; ARPA has neither
        raise ArpaError(f"{where}: {what} {text!r} is not a number")
    return value


# a compressed file's first bytes -> the module that opens it
_MAGIC = ((b"\x1f\x8b", gzip), (b"BZh", bz2), (b"\xfd7zXZ\x00", lzma))
_SUFFIX = {".gz": gzip, ".bz2": bz2, ".xz": lzma}


def file_head(path: str | os.PathLike, size: int, what: str = "ARPA file") -> bytes:
    """The first `size` bytes of a file, to tell its format by; ArpaError if there is no such file."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ArpaError(f"{path}: no such {what}") from None


def open_arpa(path: str | os.PathLike, binary: bool = False) -> IO:
    """Open an ARPA file for reading as text (or bytes), decompressing it if its first bytes say
    it is gzip, bzip2 or xz. ArpaError if there is no such file."""
    head = file_head(path, 6)
    opener = next((module.open for magic, module in _MAGIC if head.startswith(magic)), open)
    return opener(path, "rb") if binary else opener(path, "rt", encoding="utf-8")


def parse_arpa(path: str | os.PathLike) -> ArpaTables:
    """Read an ARPA file of any order (plain, or compressed: see `open_arpa`) into arrays, line
    by line. Errors are ArpaError naming `path:line`."""
    path = str(path)
    with open_arpa(path) as f:
        return parse_arpa_lines(_checked_lines(f, path), path)


def _checked_lines(f: IO[str], path: str) -> Iterator[str]:
    """The lines of `f`; a file that is not UTF-8 text, or not whole (a truncated download), is
    an ArpaError naming the line."""
    number = 0
    try:
        for number, line in enumerate(f, start=1):
            yield line
    except UnicodeDecodeError:
        # text is decoded a block at a time: find the line again, in bytes (only on this error)
        with open_arpa(path, binary=True) as raw:
            for number, line in enumerate(raw, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ArpaError(f"{path}:{number}: not UTF-8 text (byte {line[e.start]:#04x} at column {e.start + 1})") from None
        raise
    except (EOFError, OSError, lzma.LZMAError) as e:  # gzip.BadGzipFile is an OSError
        raise ArpaError(f"{path}:{number + 1}: cannot decompress the file after line {number}: {e}") from None


def parse_arpa_lines(lines: Iterable[str], name: str) -> ArpaTables:
    """`parse_arpa` on the lines of an ARPA text; `name` stands for the file in error messages."""
    return _ArpaReader(name).read(enumerate(lines, start=1))


class _ArpaReader:
    """One pass over an ARPA text. The n-gram lines of a section go into growing arrays; the
    checks that need a whole section (contexts listed, no n-gram twice) run on arrays at its end,
    and report the first offending line, as a check line by line would."""

    def __init__(self, name: str):
        self.name = name
        self.counts: list[int] = []  # from \data\, by order
        self.words: list[str] = []
        self.word_id: dict[str, int] = {}
        self.tables = ArpaTables(self.words, [], [], [], [])
        # per order read so far: its keys (row of the context * vocab + last word id), sorted, and
        # the row of each, to find the contexts of the next order
        self.sorted_keys: list[tuple[np.ndarray, np.ndarray]] = []
        self.last_line = 0

    def read(self, numbered: Iterator[tuple[int, str]]) -> ArpaTables:
        number, line = self._read_header(numbered)
        while True:  # `line` is a section header
            n = len(self.tables.ids) + 1
            found = int(_SECTION.fullmatch(line).group(1))
            if found != n:
                raise ArpaError(f"{self.name}:{number}: expected the \\{n}-grams: section, found \\{found}-grams:")
            if n > len(self.counts):
                raise ArpaError(f"{self.name}:{number}: \\{n}-grams: section has no 'ngram {n}=count' line in \\data\\")
            # lines: (count,) int64 the line of each n-gram, for the messages of the checks below
            ids, logp, bow, lines, stop = self._read_ngrams(numbered, n, number)
            self._add_section(n, ids, logp, bow, lines)
            if stop is None:
                raise ArpaError(f"{self.name}:{self.last_line}: file ends without \\end\\")
            number, line = stop
            if line != "\\end\\" and not _SECTION.fullmatch(line):
                self._raise_line_error(number, line, n, lines)
            if line == "\\end\\" and n != len(self.counts):
                raise ArpaError(f"{self.name}:{number}: \\end\\ before the \\{n + 1}-grams: section")
            if len(lines) != self.counts[n - 1]:
                raise ArpaError(f"{self.name}:{number}: \\data\\ says ngram {n}={self.counts[n - 1]}, but the section has {len(lines)}")
            if line == "\\end\\":
                return self.tables  # what follows \end\ is not part of the model

    def _read_header(self, numbered: Iterator[tuple[int, str]]) -> tuple[int, str]:
        """Read up to the first section header: the `ngram N=count` lines -> that header's (line number, text)."""
        for number, raw in numbered:
            if raw.strip() == "\\data\\":
                break  # text before \data\ is a comment
        else:
            raise ArpaError(f"{self.name}: no \\data\\ header")
        self.last_line = number
        for number, raw in numbered:
            self.last_line = number
            where = f"{self.name}:{number}"
            line = raw.strip()
            if not line:
                continue
            if line == "\\end\\":
                raise ArpaError(f"{where}: \\end\\ before the \\1-grams: section")
            if line[0] == "\\" and _SECTION.fullmatch(line):
                if not self.counts:
                    raise ArpaError(f"{where}: n-gram section before any 'ngram N=count' line")
                return number, line
            m = _COUNT.fullmatch(line)
            if not m:
                raise ArpaError(f"{where}: expected 'ngram N=count' in \\data\\, found {line[:40]!r}")
            n, value = int(m.group(1)), m.group(2)
            if not value.isdigit():
                raise ArpaError(f"{where}: count {value!r} for {n}-grams is not a whole number")
            if n != len(self.counts) + 1:
                raise ArpaError(f"{where}: 'ngram {n}=' out of order (expected ngram {len(self.counts) + 1}=)")
            self.counts.append(int(value))
        raise ArpaError(f"{self.name}:{self.last_line}: file ends without \\end\\")

    def _read_ngrams(
        self, numbered: Iterator[tuple[int, str]], n: int, number: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, str] | None]:
        """Read the n-gram lines after the section header at line `number`, up to the first line
        that is not a well-formed one -> the section's word ids, log10 probs, back-off weights and
        line numbers (grown as arrays: 4 bytes a word id, 8 a number), and that line's (number,
        text), None at the end of the file."""
        ids, logp, bow, lines = array("i"), array("d"), array("d"), array("q")
        words, word_id = self.words, self.word_id
        short, long = n + 1, n + 2  # fields of a line without / with a back-off weight
        stop = None
        for number, raw in numbered:
            fields = raw.split()
            size = len(fields)
            if size != short and size != long:
                if size:
                    stop = number, raw.strip()
                    break
                continue
            try:
                p = float(fields[0])
                b = float(fields[short]) if size == long else 0.0
                row = [word_id[w] for w in fields[1:short]] if n > 1 else None
            except (ValueError, KeyError):  # _raise_line_error says which
                stop = number, raw.strip()
                break
            # float() also takes "nan" and "1_0"; ARPA has neither
            if p != p or b != b or "_" in fields[0] or (size == long and "_" in fields[short]) or (n == 1 and fields[1] in word_id):
                stop = number, raw.strip()
                break
            if n == 1:
                word_id[fields[1]] = len(words)
                words.append(fields[1])
            else:
                ids.extend(row)
            logp.append(p)
            bow.append(b)
            lines.append(number)
        self.last_line = number
        ids = np.arange(len(words), dtype=np.int32) if n == 1 else np.frombuffer(ids, dtype=np.int32)
        # the arrays' memory, without a copy
        return ids.reshape(-1, n), np.frombuffer(logp), np.frombuffer(bow), np.frombuffer(lines, dtype=np.int64), stop

    def _add_section(self, n: int, ids: np.ndarray, logp: np.ndarray, bow: np.ndarray, lines: np.ndarray) -> None:
        """Find each n-gram's context among the (n-1)-grams and append the section to the tables;
        ArpaError naming the first n-gram whose context is not listed, or that repeats an earlier one."""
        vocab = len(self.words)
        context = np.zeros(len(ids), dtype=np.int64)  # (count,) row among the (n-1)-grams
        if n > 1:
            # the context's row, one word at a time: the row of its first j words among the j-grams
            context[:] = ids[:, 0]
            listed = np.ones(len(ids), dtype=bool)
            for j in range(1, n - 1):
                keys, rows = self.sorted_keys[j]
                if not len(keys):  # no (j+1)-grams: no context of this order is listed
                    listed[:] = False
                    break
                query = context * vocab + ids[:, j]
                at = np.searchsorted(keys, query).clip(max=len(keys) - 1)
                hit = keys[at] == query
                listed &= hit
                context = np.where(hit, rows[at], 0)
            if not listed.all():
                first = int(np.argmin(listed))  # rows are in file order: the first offending line
                words = " ".join(self.words[w] for w in ids[first, :-1])
                raise ArpaError(f"{self.name}:{lines[first]}: context {words!r} of this {n}-gram is not listed as a {n - 1}-gram")
        key = context * vocab + ids[:, -1]  # (count,) int64, one per distinct n-gram
        by_key = np.argsort(key, kind="stable")  # stable: of equal keys, the later line comes later
        key = key[by_key]
        again = np.flatnonzero(key[1:] == key[:-1])
        if len(again):
            first = int(by_key[again + 1].min())  # the first line that repeats an earlier one
            earlier = int(by_key[np.searchsorted(key, context[first] * vocab + ids[first, -1])])
            words = " ".join(self.words[w] for w in ids[first])
            raise ArpaError(f"{self.name}:{lines[first]}: {n}-gram {words!r} is listed twice (first at line {lines[earlier]})")
        if n < len(self.counts):  # the next order looks its contexts up among these
            self.sorted_keys.append((key, by_key))
        for table, value in zip((self.tables.ids, self.tables.logp, self.tables.bow, self.tables.context), (ids, logp, bow, context)):
            table.append(value)

    def _raise_line_error(self, number: int, line: str, n: int, lines: np.ndarray) -> NoReturn:
        """The ArpaError for a line that `_read_ngrams` stopped at, checked as a line by itself
        (`lines`: those of the section's n-grams before it)."""
        where = f"{self.name}:{number}"
        fields = line.split()
        if len(fields) not in (n + 1, n + 2):
            raise ArpaError(f"{where}: a {n}-gram line needs {n + 1} or {n + 2} fields, found {len(fields)}")
        _parse_float(fields[0], where, "log probability")
        if len(fields) == n + 2:
            _parse_float(fields[n + 1], where, "back-off weight")
        for w in fields[1 : n + 1]:
            if w not in self.word_id:
                raise ArpaError(f"{where}: word {w!r} is not among the 1-grams")
        w = fields[1]
        raise ArpaError(f"{where}: 1-gram {w!r} is listed twice (first at line {lines[self.word_id[w]]})")


def read_arpa(path: str | os.PathLike) -> Arpa:
    """Parse an ARPA file into dicts, for small models and tools (`NGramLM.from_file` loads big
    ones without them). Errors are ArpaError naming `path:line`."""
    tables = parse_arpa(path)
    words = tables.words
    return Arpa([
        {tuple(words[w] for w in row): values for row, values in zip(ids.tolist(), zip(logp.tolist(), bow.tolist()))}
        for ids, logp, bow in zip(tables.ids, tables.logp, tables.bow)
    ])


def arpa_lines(arpa: Arpa, exact: bool = False) -> Iterator[str]:
    """The ARPA text of `arpa`, line by line: n-grams sorted, numbers with 7 decimals (what
    `write_arpa` writes), or with `exact` in the dicts' order, numbers as repr() writes them
    (which float() reads back bit for bit)."""
    number = (lambda x: repr(float(x))) if exact else (lambda x: f"{x:.7f}")
    yield "\\data\\\n"
    for n, table in enumerate(arpa.ngrams, start=1):
        yield f"ngram {n}={len(table)}\n"
    for n, table in enumerate(arpa.ngrams, start=1):
        yield f"\n\\{n}-grams:\n"
        highest = n == arpa.order  # back-off weights of the highest order are never used
        for words in table if exact else sorted(table):
            logp, bow = table[words]
            line = f"{number(logp)}\t{' '.join(words)}"
            if not highest and bow != 0.0:
                line += f"\t{number(bow)}"
            yield line + "\n"
    yield "\n\\end\\\n"


def write_arpa(path: str | os.PathLike, arpa: Arpa) -> None:
    """Write an ARPA file atomically (log10 values, 7 decimals, n-grams sorted), compressed when
    the name ends in .gz, .bz2 or .xz."""
    module = _SUFFIX.get(os.path.splitext(path)[1].lower())
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        if module is gzip:  # no name (it would be the temporary one) and no time in the header
            stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
        else:
            stream = module.open(raw, "wb") if module else raw
        with io.TextIOWrapper(stream, encoding="utf-8") as f:
            f.writelines(arpa_lines(arpa))
