"""Long recordings made by joining a corpus's utterances, with the truth kept: what
`scripts/bench_long.py` and the long-file tests transcribe.

A joined file is a manifest's utterances, in a shuffled order (repeated, reshuffled, until the
file is `seconds` long), each followed by a pause drawn uniformly from `pause` (seconds of
silence), except that a `no_pause` fraction of the joins has none at all: there the two
utterances are trimmed to their first and last words (`word_starts`, `word_ends`, less a
`margin`) so the speech runs on. The reference is the utterances' texts in order.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asr.audio import SAMPLE_RATE, load_audio


@dataclass
class JoinedFile:
    path: str
    duration: float  # s
    texts: list[str] = field(default_factory=list)  # the utterances' transcripts, in order
    times: list[tuple[float, float]] = field(default_factory=list)  # where each one's words start and end (s), where known
    num_no_pause: int = 0  # joins without a pause

    @property
    def text(self) -> str:
        return " ".join(self.texts)


def join_utterances(
    manifest: str | os.PathLike,
    out_path: str | os.PathLike,
    seconds: float,
    pause: tuple[float, float] = (0.2, 1.5),
    no_pause: float = 0.0,
    margin: float = 0.03,
    seed: int = 0,
) -> JoinedFile:
    """Write a 16 kHz WAV of a manifest's utterances joined until it is `seconds` long (see the
    module docstring) and return its truth. Writes block by block: memory stays at one utterance."""
    import soundfile as sf

    root = Path(manifest).parent
    rows = [json.loads(line) for line in Path(manifest).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{manifest}: no utterances")
    rng = random.Random(seed)
    joined = JoinedFile(str(out_path), 0.0)
    order: list[dict] = []
    trim_start = False  # the previous join had no pause: this utterance starts at its first word
    with sf.SoundFile(str(out_path), "w", SAMPLE_RATE, 1, "PCM_16") as out:
        while joined.duration < seconds:
            if not order:
                order = rows[:]
                rng.shuffle(order)
            row = order.pop()
            audio = load_audio(root / row["audio"], SAMPLE_RATE)
            starts, ends = row.get("word_starts"), row.get("word_ends")
            trim_end = bool(starts) and rng.random() < no_pause and joined.duration + len(audio) / SAMPLE_RATE < seconds
            first = int(max(starts[0] - margin, 0) * SAMPLE_RATE) if trim_start and starts else 0
            last = int(min(ends[-1] + margin, len(audio) / SAMPLE_RATE) * SAMPLE_RATE) if trim_end else len(audio)
            at = joined.duration - first / SAMPLE_RATE
            out.write(audio[first:last])
            joined.texts.append(row["text"])
            joined.times.append((at + starts[0], at + ends[-1]) if starts else (joined.duration, joined.duration + (last - first) / SAMPLE_RATE))
            joined.duration += (last - first) / SAMPLE_RATE
            if trim_end:
                joined.num_no_pause += 1
            else:
                gap = round(rng.uniform(*pause) * SAMPLE_RATE)
                out.write(np.zeros(gap, np.float32))
                joined.duration += gap / SAMPLE_RATE
            trim_start = trim_end
    return joined
