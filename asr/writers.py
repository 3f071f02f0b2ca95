"""Writers of timed transcripts. Every file is written atomically (`asr.fileio`).

- `asr align`: CTM (Kaldi / sclite), JSON lines, Praat TextGrid of alignments.
- `asr transcribe`: txt, json, tsv, srt, vtt and ctm of a `Transcript`, the formats and subtitle
  options whisper users know (openai/whisper `whisper/utils.py`).

CTM (NIST sclite's time-marked conversation format, as Kaldi writes it): one line per word or
token, `<utterance-id> 1 <start> <duration> <text> <confidence>`, seconds from the start of the
utterance's audio.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from asr.align import Alignment, Span
from asr.fileio import atomic_path, atomic_write
from asr.transcript import Transcript, TranscriptSegment



def ctm_lines(alignment: Alignment, level: str = "words", decimals: int = 2) -> list[str]:
    """One alignment's CTM lines: its words or its tokens ("tokens"), times to `decimals`."""
    spans: Sequence[Span] = alignment.words if level == "words" else alignment.tokens
    return [
        f"{alignment.id} 1 {s.start:.{decimals}f} {s.end - s.start:.{decimals}f} {s.text} {s.confidence:.3f}"
        for s in spans
    ]


def write_ctm(path: str | os.PathLike, alignments: Iterable[Alignment], level: str = "words", decimals: int = 2) -> None:
    if level not in ("words", "tokens"):
        raise ValueError(f"level must be 'words' or 'tokens', not {level!r}")
    with atomic_write(path) as f:
        for alignment in alignments:
            for line in ctm_lines(alignment, level, decimals):
                f.write(line + "\n")


def span_records(spans: Sequence[Span]) -> list[dict]:
    """Timed words or tokens as JSON: text, start and end (s, 3 decimals), confidence (4)."""
    return [{"text": s.text, "start": round(s.start, 3), "end": round(s.end, 3), "confidence": round(s.confidence, 4)} for s in spans]


def alignment_record(alignment: Alignment) -> dict:
    """What alignments.jsonl says of one utterance."""
    return {"id": alignment.id, "score": round(alignment.score, 3), "words": span_records(alignment.words), "tokens": span_records(alignment.tokens)}


def write_alignments(path: str | os.PathLike, alignments: Iterable[Alignment], failed: Iterable[tuple[str, str]] = ()) -> None:
    """One JSON line per aligned utterance (words and tokens with start, end, confidence), then
    one per utterance that failed, with its error."""
    with atomic_write(path) as f:
        for alignment in alignments:
            f.write(json.dumps(alignment_record(alignment), ensure_ascii=False) + "\n")
        for utt_id, reason in failed:
            f.write(json.dumps({"id": utt_id, "error": reason}, ensure_ascii=False) + "\n")


def write_alignment_files(out_dir: str | os.PathLike, alignments: Sequence[Alignment], failed: Iterable[tuple[str, str]] = ()) -> None:
    """What `asr align` writes for any input: OUT_DIR/words.ctm (2 decimals), tokens.ctm (3)
    and alignments.jsonl."""
    write_ctm(os.path.join(out_dir, "words.ctm"), alignments, "words", decimals=2)
    write_ctm(os.path.join(out_dir, "tokens.ctm"), alignments, "tokens", decimals=3)
    write_alignments(os.path.join(out_dir, "alignments.jsonl"), alignments, failed)


def write_textgrid(path: str | os.PathLike, alignment: Alignment, duration: float) -> None:
    """A Praat TextGrid of one utterance, `duration` seconds long: a "words" tier (where the
    tokenizer has words) and a "tokens" tier (praatio writes it; `pip install praatio`)."""
    try:
        from praatio import textgrid
    except ImportError as e:
        raise ImportError("TextGrid output needs praatio: pip install 'asr[align]' (or praatio)") from e
    end = max([duration] + [s.end for s in alignment.tokens])
    grid = textgrid.Textgrid(minTimestamp=0.0, maxTimestamp=end)
    tiers = [("words", alignment.words)] if alignment.words else []
    for name, spans in tiers + [("tokens", alignment.tokens)]:
        entries = [(round(s.start, 4), round(s.end, 4), s.text) for s in _disjoint(spans)]  # 0.1 ms, no float noise
        grid.addTier(textgrid.IntervalTier(name, entries, 0.0, end))
    with atomic_path(path) as tmp:
        grid.save(str(tmp), format="long_textgrid", includeBlankSpaces=True)


def _disjoint(spans: Sequence[Span]) -> list[Span]:
    """Spans whose times do not overlap and are not empty, as a TextGrid tier needs (a span
    that begins before the previous one ends starts where it ends)."""
    out: list[Span] = []
    for s in spans:
        start = max(s.start, out[-1].end) if out else s.start
        if s.end > start:
            out.append(Span(s.text, start, s.end, s.confidence))
    return out


# --- asr transcribe: a Transcript as txt, json, tsv, srt, vtt, ctm ---------------------------------


@dataclass
class SubtitleOptions:
    """How srt and vtt cut a transcript into cues (whisper's --max_line_width, --max_line_count,
    --max_words_per_line). Without word times only the line width and words per line apply: a
    segment is one cue."""

    max_line_width: int | None = None  # characters per line; None: no limit
    max_line_count: int | None = None  # lines per cue; None: no limit, or 1 where max_words_per_line is set (as whisper)
    max_words_per_line: int | None = None  # words per line; None: no limit
    max_gap: float = 1.0  # s: with word times, a pause between words longer than this starts a new cue (whisper: 3 s, with both line options only)

    def __post_init__(self):
        for name in ("max_line_width", "max_line_count", "max_words_per_line"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if not self.max_gap >= 0:  # also refuses NaN
            raise ValueError(f"max_gap must be >= 0 s, not {self.max_gap!r}")


@dataclass
class Cue:
    """One subtitle: shown from `start` to `end` (s from the file's start), its lines of text."""

    start: float
    end: float
    lines: list[str]


def transcript_segments(transcript: Transcript) -> list[TranscriptSegment]:
    """The transcript's segments; one from 0 to its duration where it has text but no segments.
    A transcript whose file could not be read (text None) is a ValueError naming the file."""
    if transcript.text is None:
        raise ValueError(f"{transcript.path}: no transcript to write ({transcript.error})")
    if transcript.segments or not transcript.text.strip():
        return transcript.segments
    return [TranscriptSegment(0.0, transcript.duration, transcript.text, transcript.words)]


def subtitle_cues(transcript: Transcript, options: SubtitleOptions | None = None) -> list[Cue]:
    """The transcript's subtitles, in time order: with word times, cut at word boundaries (a new
    line where the next word would pass max_line_width or max_words_per_line, a new cue where the
    cue has max_line_count lines, after a pause longer than max_gap, and at every segment
    boundary); without, one cue per segment. No cue is empty; times lie in [0, duration], each
    cue ends at or after its start and starts at or after the previous cue's end."""
    options = options or SubtitleOptions()
    cues: list[Cue] = []
    for segment in transcript_segments(transcript):
        if segment.words:
            for lines in _word_cues(segment.words, options):
                cues.append(Cue(lines[0][0].start, lines[-1][-1].end, [" ".join(w.text for w in line) for line in lines]))
        elif segment.text.split():
            cues.append(Cue(segment.start, segment.end, _wrap(segment.text.split(), options)))
    return _ordered(cues, transcript.duration)


def _word_cues(words: Sequence[Span], options: SubtitleOptions) -> Iterator[list[list[Span]]]:
    """One segment's words -> its cues, each a list of lines, each a list of words."""
    # whisper (SubtitlesWriter.iterate_result): without a line count, lines are unlimited and
    # only segments end cues, except that max_words_per_line alone gives a cue per line. Unlike
    # whisper, max_words_per_line also holds beside max_line_width.
    max_lines = options.max_line_count or (1 if options.max_words_per_line else math.inf)
    cue: list[list[Span]] = []
    for word in words:
        if cue and word.start - cue[-1][-1].end > options.max_gap:
            yield cue
            cue = []
        if cue and _fits([w.text for w in cue[-1]], word.text, options):
            cue[-1].append(word)
            continue
        if len(cue) >= max_lines:
            yield cue
            cue = []
        cue.append([word])
    if cue:
        yield cue


def _fits(line: list[str], word: str, options: SubtitleOptions) -> bool:
    """Whether `word` may join `line` (words joined by spaces) within the width and word count."""
    width = sum(map(len, line)) + len(line) + len(word)
    return (options.max_line_width is None or width <= options.max_line_width) and (
        options.max_words_per_line is None or len(line) < options.max_words_per_line
    )


def _wrap(words: list[str], options: SubtitleOptions) -> list[str]:
    """Words -> lines within the width and word count (a word wider than the width stands alone)."""
    lines: list[list[str]] = []
    for word in words:
        if lines and _fits(lines[-1], word, options):
            lines[-1].append(word)
        else:
            lines.append([word])
    return [" ".join(line) for line in lines]


def _ordered(cues: list[Cue], duration: float) -> list[Cue]:
    """Cues clamped to [0, duration] (no upper bound where the duration is unknown, 0), each
    starting no earlier than the previous one ends and ending no earlier than it starts."""
    last = duration if duration > 0 else math.inf
    previous_end = 0.0
    out = []
    for cue in cues:
        start = min(max(cue.start, previous_end), last)
        previous_end = min(max(cue.end, start), last)
        out.append(Cue(start, previous_end, cue.lines))
    return out


def format_timestamp(seconds: float, decimal_marker: str = ".") -> str:
    """`HH:MM:SS.mmm` (srt: `HH:MM:SS,mmm`); hours take as many digits as they need, at least two."""
    hours, ms = divmod(round(seconds * 1000), 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def _srt_text(line: str) -> str:
    """A cue line without `-->`, which would read as a timing line (whisper writes `->`)."""
    return re.sub(r"-{2,}>", "->", line)


def write_txt(path: str | os.PathLike, transcript: Transcript, options: SubtitleOptions | None = None) -> None:
    """The transcript's text, one segment a line (as whisper's txt); empty segments left out."""
    lines = [" ".join(s.text.split()) for s in transcript_segments(transcript) if s.text.strip()]
    with atomic_write(path) as f:
        f.writelines(line + "\n" for line in lines)


def transcript_record(transcript: Transcript) -> dict:
    """What the json output says of a transcript: file, text, duration, segments (with their
    words where timed), warnings; times in s to the ms."""
    segments = []
    for i, s in enumerate(transcript_segments(transcript)):
        record = {"id": i, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
        if s.words is not None:
            record["words"] = span_records(s.words)
        segments.append(record)
    return {"file": transcript.path, "text": transcript.text, "duration": round(transcript.duration, 3), "segments": segments, "warnings": list(transcript.warnings)}


def write_json(path: str | os.PathLike, transcript: Transcript, options: SubtitleOptions | None = None) -> None:
    """`transcript_record` as one JSON object."""
    record = transcript_record(transcript)
    with atomic_write(path) as f:
        json.dump(record, f, ensure_ascii=False, indent=2)
        f.write("\n")


def write_tsv(path: str | os.PathLike, transcript: Transcript, options: SubtitleOptions | None = None) -> None:
    """Whisper's tsv: a `start end text` header, then a row per segment, times in integer ms
    (no decimal point a locale could turn into a comma)."""
    rows = [f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{' '.join(s.text.split())}" for s in transcript_segments(transcript)]
    with atomic_write(path) as f:
        f.writelines(row + "\n" for row in ["start\tend\ttext", *rows])


def format_srt(transcript: Transcript, options: SubtitleOptions | None = None) -> str:
    """SubRip: cues numbered from 1, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, its lines, a blank line."""
    out = []
    for i, cue in enumerate(subtitle_cues(transcript, options), start=1):
        text = "\n".join(map(_srt_text, cue.lines))
        out.append(f"{i}\n{format_timestamp(cue.start, ',')} --> {format_timestamp(cue.end, ',')}\n{text}\n\n")
    return "".join(out)


def format_vtt(transcript: Transcript, options: SubtitleOptions | None = None) -> str:
    """WebVTT: a `WEBVTT` header, then per cue `HH:MM:SS.mmm --> HH:MM:SS.mmm`, its lines with
    `&`, `<` and `>` as entities (so no `-->` either), a blank line."""
    out = ["WEBVTT\n\n"]
    for cue in subtitle_cues(transcript, options):
        text = "\n".join(html.escape(line, quote=False) for line in cue.lines)
        out.append(f"{format_timestamp(cue.start)} --> {format_timestamp(cue.end)}\n{text}\n\n")
    return "".join(out)


def write_srt(path: str | os.PathLike, transcript: Transcript, options: SubtitleOptions | None = None) -> None:
    """`format_srt`, to a file."""
    text = format_srt(transcript, options)
    with atomic_write(path) as f:
        f.write(text)


def write_vtt(path: str | os.PathLike, transcript: Transcript, options: SubtitleOptions | None = None) -> None:
    """`format_vtt`, to a file."""
    text = format_vtt(transcript, options)
    with atomic_write(path) as f:
        f.write(text)


def write_transcript_ctm(path: str | os.PathLike, transcript: Transcript, options: SubtitleOptions | None = None) -> None:
    """One CTM line per timed word (token, for a phone model), the file's stem as utterance id;
    a transcript without word times is a ValueError."""
    utt_id = re.sub(r"\s+", "_", Path(transcript.path).stem)  # CTM fields are split at whitespace
    alignment = Alignment(utt_id, words=_timed_words(transcript))
    with atomic_write(path) as f:
        f.writelines(line + "\n" for line in ctm_lines(alignment, "words", decimals=2))


def _timed_words(transcript: Transcript) -> list[Span]:
    """The transcript's timed words; a ValueError without them, or without a transcript."""
    transcript_segments(transcript)
    if transcript.words is None:
        raise ValueError(f"{transcript.path}: ctm needs word times: --word-timestamps")
    return transcript.words


WRITERS: dict[str, Callable[[str | os.PathLike, Transcript, SubtitleOptions | None], None]] = {
    "txt": write_txt, "json": write_json, "tsv": write_tsv, "srt": write_srt, "vtt": write_vtt, "ctm": write_transcript_ctm,
}
OUTPUT_FORMATS = tuple(WRITERS)  # ("txt", "json", "tsv", "srt", "vtt", "ctm"); "all": every one


def write_transcript(
    transcript: Transcript, out_dir: str | os.PathLike, formats: Sequence[str] = ("txt",), options: SubtitleOptions | None = None
) -> list[Path]:
    """Write OUT_DIR/<file stem>.<format> for each of `formats` (names from OUTPUT_FORMATS, or
    "all": every one, ctm only where the transcript has word times) and return their paths.
    An unknown format, or ctm asked for by name without word times, is a ValueError raised
    before any file is written."""
    names: list[str] = []
    for name in formats:
        if name == "all":
            names += [n for n in OUTPUT_FORMATS if n != "ctm" or transcript.words is not None]
        elif name in WRITERS:
            names.append(name)
        else:
            raise ValueError(f"unknown output format {name!r}: choose from {', '.join(OUTPUT_FORMATS)} or all")
    names = list(dict.fromkeys(names))
    transcript_segments(transcript)  # a file that could not be read: ValueError
    if "ctm" in names:
        _timed_words(transcript)
    paths = []
    for name in names:
        paths.append(Path(out_dir) / f"{Path(transcript.path).stem}.{name}")
        WRITERS[name](paths[-1], transcript, options)
    return paths
