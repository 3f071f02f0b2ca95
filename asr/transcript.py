"""What recognition says of a file: its transcript, the segments it was decoded in (with times),
its n best, its words' times, and what went wrong without stopping it. Made by
`asr.inference.Recognizer.transcribe_files`, written by `asr.writers`."""

from __future__ import annotations

from dataclasses import dataclass, field

from asr.align import Span


@dataclass
class Alternative:
    """One of an utterance's n best transcripts, with its beam-search scores (natural log)."""

    text: str
    score: float  # acoustic + lm_weight * lm + word_bonus * num_words: what ranks the list
    acoustic: float  # ln P_ctc(text | audio), over all its alignments
    lm: float  # ln P_lm of its words, </s> included (0 without an LM)
    num_words: int  # words (or tokens) the LM scored


@dataclass
class TranscriptSegment:
    """A stretch of a file decoded at once (a pause-bounded piece of speech), with its times."""

    start: float  # s, from the start of the file
    end: float  # s
    text: str
    words: list[Span] | None = None  # with word_timestamps: its words (tokens, for a phone model), times from the file's start


@dataclass
class Transcript:
    """What `Recognizer.transcribe_files` says of one file."""

    path: str
    text: str | None  # None when the file could not be read
    error: str | None  # why not
    nbest: list[Alternative]  # with nbest > 1: the n best, best first (text is the first's)
    words: list[Span] | None = None  # with word_timestamps: when each word of `text` was spoken
    segments: list[TranscriptSegment] = field(default_factory=list)  # in time order; their texts joined by spaces are `text`
    duration: float = 0.0  # s of audio read
    warnings: list[str] = field(default_factory=list)  # what went wrong without stopping it (a cut-off file, a segment not decoded), naming the file
