"""Writers of timed transcripts: CTM (Kaldi / sclite), JSON lines, Praat TextGrid. Every file
is written atomically (`asr.fileio`).

CTM (NIST sclite's time-marked conversation format, as Kaldi writes it): one line per word or
token, `<utterance-id> 1 <start> <duration> <text> <confidence>`, seconds from the start of the
utterance's audio.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

from asr.align import Alignment, Span
from asr.fileio import atomic_path, atomic_write


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
