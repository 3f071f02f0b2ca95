"""Timed transcripts -> per-frame targets for the frame head (`model.frame_head`).

A manifest row may say when its tokens were spoken: `words`, `word_starts`, `word_ends` (seconds)
for a character model, `phone_times`, `phone_ends` beside `phones` for a phone model (the
built-in corpus writes the first, `asr prepare timit` the second from TIMIT's hand-labelled
`.PHN`). `token_intervals` turns that into one (start, end, label) per token the model
predicts: a phone is its own interval (folded onto the model's phone set; a phone the set
deletes, TIMIT's `q`, has none); the letters of a word share its span evenly, since nothing
says where one letter ends and the next begins. The word boundaries, which are what a character
model's alignment is judged on, are exact. `frame_targets` then labels each output frame with the
token whose interval holds the frame's centre, blank where none does (silence), -1 where nothing
is known (padding, an utterance without times).

Speed perturbation moves the times with the audio: the dataset scales them by 1 / factor.
SpecAugment's time warp would move the audio under them; do not use both.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from asr.phones import fold_phones
from asr.tokens import BLANK_ID, SPACE

IGNORE = -1  # a frame whose target is unknown


class TimingError(ValueError):
    """Token times in a manifest row that do not fit its transcript; the message names the utterance."""


Intervals = tuple[list[float], list[float], list[int]]  # starts (s), ends (s), labels


def token_intervals(utterance: Any, tokenizer) -> Intervals | None:
    """The timed tokens of a manifest row (`asr.data.manifest.Utterance`) for `tokenizer`, or None
    where the row carries no times. Raises TimingError when its times do not fit its transcript."""
    extra = utterance.extra
    if tokenizer.kind == "phone":
        if "phone_times" not in extra or "phone_ends" not in extra or utterance.phones is None:
            return None
        phones = utterance.phones.split()
        starts, ends = extra["phone_times"], extra["phone_ends"]
        if not len(phones) == len(starts) == len(ends):
            raise TimingError(f"{utterance.id}: {len(phones)} phones but {len(starts)} phone_times and {len(ends)} phone_ends")
        out: Intervals = ([], [], [])
        for phone, start, end in zip(phones, starts, ends):
            folded = fold_phones([phone], tokenizer.phone_set, where=utterance.id)  # [] for a deleted phone
            if folded:
                (label,) = tokenizer.encode(folded[0], utterance.id)
                _add(out, float(start), float(end), label, utterance.id)
        return out
    if "words" not in extra or "word_starts" not in extra or "word_ends" not in extra:
        return None
    words, starts, ends = extra["words"], extra["word_starts"], extra["word_ends"]
    if not len(words) == len(starts) == len(ends):
        raise TimingError(f"{utterance.id}: {len(words)} words but {len(starts)} word_starts and {len(ends)} word_ends")
    space = tokenizer.symbols.index(SPACE)
    spelled = [tokenizer.encode(word, utterance.id) for word in words]
    joined: list[int] = []
    for labels in spelled:
        joined += ([space] if joined else []) + labels
    if joined != tokenizer.encode(utterance.text, utterance.id):
        raise TimingError(f"{utterance.id}: its timed words {' '.join(words)!r} do not spell its text {utterance.text!r}")
    out = ([], [], [])
    for labels, start, end in zip(spelled, starts, ends):
        start, end = float(start), float(end)
        step = (end - start) / max(len(labels), 1)
        for i, label in enumerate(labels):
            _add(out, start + i * step, start + (i + 1) * step, label, utterance.id)
    return out


def _add(out: Intervals, start: float, end: float, label: int, utterance: str) -> None:
    if not (math.isfinite(start) and math.isfinite(end) and end >= start):
        raise TimingError(f"{utterance}: a token from {start} s to {end} s")
    if out[1] and start < out[1][-1] - 1e-6:
        raise TimingError(f"{utterance}: token times go backwards ({start} s after one ending at {out[1][-1]} s)")
    out[0].append(start)
    out[1].append(end)
    out[2].append(label)


def scale_intervals(intervals: Intervals | None, factor: float) -> Intervals | None:
    """The times of audio played `factor` times as fast (speed perturbation)."""
    if intervals is None or factor == 1.0:
        return intervals
    starts, ends, labels = intervals
    return [s / factor for s in starts], [e / factor for e in ends], labels


def shift_intervals(intervals: Intervals | None, seconds: float) -> Intervals | None:
    """The times of audio with `seconds` of silence put before it."""
    if intervals is None or seconds == 0.0:
        return intervals
    starts, ends, labels = intervals
    return [s + seconds for s in starts], [e + seconds for e in ends], labels


def pad_intervals(items: list[Intervals | None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch's intervals -> starts, ends (batch, most) float64 seconds padded with +inf, labels
    (batch, most) long, timed (batch,) bool: whether each utterance has times at all."""
    most = max([len(it[0]) for it in items if it is not None], default=0)
    starts = torch.full((len(items), most), math.inf, dtype=torch.float64)
    ends = torch.full((len(items), most), math.inf, dtype=torch.float64)
    labels = torch.zeros((len(items), most), dtype=torch.long)
    timed = torch.zeros(len(items), dtype=torch.bool)
    for b, it in enumerate(items):
        if it is None:
            continue
        n = len(it[0])
        starts[b, :n] = torch.tensor(it[0], dtype=torch.float64)
        ends[b, :n] = torch.tensor(it[1], dtype=torch.float64)
        labels[b, :n] = torch.tensor(it[2], dtype=torch.long)
        timed[b] = True
    return starts, ends, labels, timed


def frame_targets(
    starts: torch.Tensor, ends: torch.Tensor, labels: torch.Tensor, timed: torch.Tensor, centres: torch.Tensor,
    frame_lengths: torch.Tensor, blank: int = BLANK_ID,
) -> torch.Tensor:
    """Each frame's target: the label whose interval [start, end) holds the frame's centre, blank
    where none does, IGNORE past the utterance's length or where it has no times. starts, ends,
    labels (batch, most) as `pad_intervals` gives them, timed (batch,), centres (frames,) seconds,
    frame_lengths (batch,) -> (batch, frames) long, on centres' device."""
    device = centres.device
    batch, frames = len(timed), len(centres)
    valid = timed.to(device)[:, None] & (torch.arange(frames, device=device)[None] < frame_lengths.to(device)[:, None])
    if starts.shape[1] == 0:
        return torch.full((batch, frames), IGNORE, dtype=torch.long, device=device)
    starts, ends, labels = starts.to(device), ends.to(device), labels.to(device)
    at = centres.to(starts.dtype)[None].expand(batch, frames).contiguous()  # (batch, frames)
    index = torch.searchsorted(starts, at, right=True) - 1  # the last interval starting at or before each centre
    inside = (index >= 0) & (at < ends.gather(1, index.clamp(min=0)))
    target = torch.where(inside, labels.gather(1, index.clamp(min=0)), blank)
    return torch.where(valid, target, IGNORE)
