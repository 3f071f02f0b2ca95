"""The container of a compiled language model (`NGramLM.save`, `asr lm compile`): named numpy
arrays and a few strings, in the safetensors layout (github.com/huggingface/safetensors):

    8 bytes      N, the header's size (unsigned, little-endian)
    N bytes      JSON: {"__metadata__": {str: str}, name: {"dtype": "I64", "shape": [...],
                 "data_offsets": [begin, end]}, ...}, padded with spaces
    the rest     the arrays' bytes (C order, little-endian), one after another, no gaps

Loading parses the header and maps the file into memory (copy-on-write): an array costs nothing
until the decoder reads its pages, and nothing is unpickled, ever. We write "__metadata__" as
the header's first key, which is how `is_array_file` tells our files from ARPA text; the arrays
go largest item size first, so each starts aligned to its item size (the header is padded so
that the first starts at a multiple of 64 bytes).

Files of an older asr are torch.save archives (zip): `read_torch_archive` reads those, with
torch's weights_only loader (tensors, numbers, strings and lists only), where torch is installed.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np

from asr.fileio import atomic_path

HEAD = b'{"__metadata__":'  # bytes 8 .. 24 of every file we write
ZIP_MAGIC = b"PK\x03\x04"  # a torch.save archive (the format before this one)
_DTYPES = {"I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "BOOL": np.dtype("?")}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_ALIGN = 64


class ArrayFileError(ValueError):
    """A file that is not an array file of ours, or is damaged; the message says what is wrong
    (the caller names the file)."""


def is_array_file(head: bytes) -> bool:
    """Whether a file's first 24 bytes are those of a file `write_arrays` wrote."""
    return head[8 : 8 + len(HEAD)] == HEAD


def write_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write named arrays (int64, int32, float64, float32 or bool) and string metadata, atomically."""
    if sys.byteorder != "little":  # (the layout is little-endian; so is every machine we run on)
        raise NotImplementedError("writing language model files on a big-endian machine")
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    order = sorted(arrays, key=lambda name: (-arrays[name].dtype.itemsize, name))
    header: dict = {"__metadata__": dict(metadata)}
    offset = 0
    for name in order:
        a = arrays[name]
        if a.dtype.newbyteorder("<") not in _NAMES:
            raise TypeError(f"array {name!r} is {a.dtype}; a language model file holds {', '.join(_NAMES)}")
        header[name] = {"dtype": _NAMES[a.dtype.newbyteorder("<")], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % _ALIGN)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for name in order:
            arrays[name].tofile(f)


def read_arrays(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays and metadata `write_arrays` wrote, the arrays memory-mapped (copy-on-write:
    writeable, and nothing goes back to the file). ArrayFileError if the header is not one we
    wrote or the arrays do not tile the rest of the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= size - 8:
            raise ArrayFileError(f"a header of {length} bytes in a file of {size}")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArrayFileError(f"its header is not JSON ({e})") from None
    metadata = header.pop("__metadata__", None) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ArrayFileError("its header has no metadata of strings")
    start = 8 + length  # where the arrays start
    raw = np.memmap(path, dtype=np.uint8, mode="c") if size > start else np.zeros(0, np.uint8)
    arrays, spans = {}, []
    for name, entry in header.items():
        try:
            dtype, shape, (begin, stop) = _DTYPES[entry["dtype"]], tuple(int(n) for n in entry["shape"]), entry["data_offsets"]
            begin, stop = int(begin), int(stop)
        except (KeyError, TypeError, ValueError):
            raise ArrayFileError(f"its header's entry {name!r} is not an array's") from None
        count = math.prod(shape)
        if min(shape, default=0) < 0 or stop - begin != count * dtype.itemsize or begin % dtype.itemsize or not 0 <= begin <= stop <= size - start:
            raise ArrayFileError(f"array {name!r}: {entry['dtype']} {list(shape)} does not fit bytes {begin} .. {stop} of {size - start}")
        arrays[name] = np.ndarray(shape, dtype, buffer=raw, offset=start + begin) if count else np.zeros(shape, dtype)
        spans.append((begin, stop))
    for (_, stop), (begin, _) in zip(sorted(spans), sorted(spans)[1:]):
        if begin != stop:
            raise ArrayFileError("its arrays overlap or leave gaps")
    end = max((stop for _, stop in spans), default=0)
    if min((begin for begin, _ in spans), default=0) != 0 or end != size - start:
        raise ArrayFileError(f"its arrays take {end} bytes of the {size - start} after the header")
    return arrays, metadata


def read_torch_archive(path: str | os.PathLike) -> dict:
    """The dict an older asr wrote with torch.save (tensors as numpy arrays, sharing the file's
    memory map), read with torch's weights_only loader. ImportError without torch; anything
    torch cannot read as such an archive is an ArrayFileError."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a broken archive, or one that holds more than tensors and numbers
        raise ArrayFileError(f"not a readable torch archive ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ArrayFileError(f"a torch archive of a {type(data).__name__}, not a dict")
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in data.items()}
