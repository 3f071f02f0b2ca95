"""Corpus preparation speed: `prepare_librispeech` (durations from FLAC headers) vs the peer way
of getting the same durations, decoding every file with soundfile, on the same tree in the same run.

    python scripts/bench_prepare.py --root /tmp/ls            # a tree from `asr synth OUT --layout librispeech`

Prints files/s for both and their ratio. The tree is read once before timing so both runs see a
warm page cache (cold-cache speed depends on the disk, not on this code).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import soundfile as sf

from asr.data.corpora.librispeech import prepare_librispeech


def decode_all(files: list[Path]) -> float:
    """Total seconds of audio, by decoding every file (what a reader without header durations does)."""
    total = 0.0
    for f in files:
        samples, rate = sf.read(str(f), dtype="float32")
        total += len(samples) / rate
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="a LibriSpeech-layout tree")
    parser.add_argument("--threads", type=int, default=8, help="header-reading threads of prepare_librispeech")
    args = parser.parse_args()
    files = sorted(Path(args.root).rglob("*.flac"))
    if not files:
        raise SystemExit(f"{args.root}: no .flac files")
    for f in files:  # warm the page cache for both contenders
        f.read_bytes()
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = prepare_librispeech(args.root, out, progress=False, num_threads=args.threads)
        prepare_s = time.perf_counter() - started
    started = time.perf_counter()
    decoded_hours = decode_all(files) / 3600
    decode_s = time.perf_counter() - started
    header_hours = sum(result.hours.values())
    print(f"files: {len(files)}, audio: {header_hours:.3f} h from headers, {decoded_hours:.3f} h decoded")
    print(f"prepare_librispeech (headers, {args.threads} threads): {prepare_s:.2f} s = {len(files) / prepare_s:.0f} files/s")
    print(f"decode every file (soundfile.read):          {decode_s:.2f} s = {len(files) / decode_s:.0f} files/s")
    print(f"ratio: prepare is {decode_s / prepare_s:.1f}x faster than decoding")


if __name__ == "__main__":
    main()
