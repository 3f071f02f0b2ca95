"""`asr transcribe`'s output writers: every format written from hand-built transcripts and read
back with a reference parser (srt, webvtt-py, json, csv)."""

from __future__ import annotations

import csv
import html
import json
import re

import pytest
import srt
import webvtt

from asr.align import Span
from asr.transcript import Transcript, TranscriptSegment
from asr.writers import OUTPUT_FORMATS, SubtitleOptions, format_timestamp, subtitle_cues, write_srt, write_transcript, write_vtt


def timed(text: str, start: float, word_s: float = 0.4, pause_after: dict[int, float] | None = None) -> TranscriptSegment:
    """A segment of `text` whose words last `word_s` each, back to back from `start` (s), with a
    pause of pause_after[i] s after word i."""
    words, t = [], start
    for i, word in enumerate(text.split()):
        words.append(Span(word, round(t, 3), round(t + word_s, 3), 0.9))
        t += word_s + (pause_after or {}).get(i, 0.0)
    return TranscriptSegment(words[0].start, words[-1].end, text, words)


def transcript(segments: list[TranscriptSegment], duration: float, path: str = "audio/talk one.wav", timed: bool = True) -> Transcript:
    words = [w for s in segments for w in s.words or []] if timed else None
    return Transcript(path, " ".join(s.text for s in segments), None, [], words, segments, duration)


def untimed(segments: list[TranscriptSegment]) -> list[TranscriptSegment]:
    return [TranscriptSegment(s.start, s.end, s.text) for s in segments]


SEGMENTS = [
    timed("the quick brown fox jumps over the lazy dog", 0.5, pause_after={3: 1.5}),  # a pause > max_gap after "fox"
    timed("an extraordinarily long word incomprehensibilities stands alone", 8.0),
    timed("pack my box with five dozen liquor jugs", 12.0, word_s=0.3),
]
ESCAPED = [timed("a <b> & c --> d", 1.0), timed("x->y ---> z > w", 4.0)]
CASES = {
    "words": transcript(SEGMENTS, 20.0),
    "no words": transcript(untimed(SEGMENTS), 20.0, timed=False),
    "escaped": transcript(ESCAPED, 8.0),
    "three hours": transcript([timed("good morning", 10_800.5), timed("and good night", 11_990.0)], 12_000.0),
    "empty": transcript([], 5.0),
}
OPTIONS = {
    "defaults": SubtitleOptions(),
    "width": SubtitleOptions(max_line_width=16),
    "width and lines": SubtitleOptions(max_line_width=20, max_line_count=2),
    "words per line": SubtitleOptions(max_words_per_line=3),
    "all": SubtitleOptions(max_line_width=24, max_line_count=2, max_words_per_line=4, max_gap=0.5),
}


def normal(text: str) -> str:
    return " ".join(text.split())


def read_srt(path) -> list[srt.Subtitle]:
    return list(srt.parse(path.read_text(encoding="utf-8")))


def check_times(spans: list[tuple[float, float]], duration: float) -> None:
    """Cue times inside [0, duration], each ending at or after its start, none before the last's end."""
    previous_end = 0.0
    for start, end in spans:
        assert previous_end <= start <= end <= duration
        previous_end = end


def seconds(timestamp: str) -> float:
    hours, minutes, secs = timestamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(secs)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("option", OPTIONS)
def test_every_format_reads_back(case, option, tmp_path):
    t, options = CASES[case], OPTIONS[option]
    paths = write_transcript(t, tmp_path, ["all"], options)
    expected = {"txt", "json", "tsv", "srt", "vtt"} | ({"ctm"} if t.words is not None else set())
    assert {p.suffix[1:] for p in paths} == expected and all(p.stem == "talk one" and p.parent == tmp_path for p in paths)
    out = {p.suffix[1:]: p for p in paths}

    subtitles = read_srt(out["srt"])
    assert [s.index for s in subtitles] == list(range(1, len(subtitles) + 1))
    assert all("-->" not in s.content for s in subtitles)
    assert normal(" ".join(s.content for s in subtitles)) == re.sub(r"-{2,}>", "->", normal(t.text))
    check_times([(s.start.total_seconds(), s.end.total_seconds()) for s in subtitles], t.duration)

    captions = webvtt.read(str(out["vtt"]))
    assert all("-->" not in c.raw_text for c in captions)
    assert normal(html.unescape(" ".join(c.text for c in captions))) == normal(t.text)  # webvtt-py leaves the entities
    assert [(c.start, c.end) for c in captions] == [(srt.timedelta_to_srt_timestamp(s.start).replace(",", "."), srt.timedelta_to_srt_timestamp(s.end).replace(",", ".")) for s in subtitles]
    check_times([(seconds(c.start), seconds(c.end)) for c in captions], t.duration)

    assert out["txt"].read_text(encoding="utf-8").splitlines() == [s.text for s in t.segments]

    record = json.loads(out["json"].read_text(encoding="utf-8"))
    assert record["file"] == t.path and record["text"] == t.text and record["duration"] == t.duration and record["warnings"] == []
    assert [s["text"] for s in record["segments"]] == [s.text for s in t.segments]
    assert [s["id"] for s in record["segments"]] == list(range(len(t.segments)))
    for s, seg in zip(record["segments"], t.segments):
        assert (s["start"], s["end"]) == (round(seg.start, 3), round(seg.end, 3))
        assert ("words" in s) == (seg.words is not None)
        if seg.words is not None:
            assert [(w["text"], w["start"], w["end"]) for w in s["words"]] == [(w.text, w.start, w.end) for w in seg.words]

    with open(out["tsv"], newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert rows[0] == ["start", "end", "text"]
    assert rows[1:] == [[str(round(s.start * 1000)), str(round(s.end * 1000)), s.text] for s in t.segments]

    if "ctm" in out:
        fields = [line.split(" ") for line in out["ctm"].read_text(encoding="utf-8").splitlines()]
        assert [f[4] for f in fields] == [w.text for w in t.words]
        for f, w in zip(fields, t.words):
            assert f[:2] == ["talk_one", "1"] and len(f) == 6
            assert (f[2], f[3], f[5]) == (f"{w.start:.2f}", f"{w.end - w.start:.2f}", "0.900")


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("case", ["words", "no words"])
def test_cues_keep_to_the_limits(case, option, tmp_path):
    t, options = CASES[case], OPTIONS[option]
    write_srt(tmp_path / "t.srt", t, options)
    subtitles = read_srt(tmp_path / "t.srt")
    for s in subtitles:
        lines = s.content.splitlines()
        for line in lines:
            assert options.max_line_width is None or len(line) <= options.max_line_width or " " not in line
            assert options.max_words_per_line is None or len(line.split()) <= options.max_words_per_line
        if case == "words":
            max_lines = options.max_line_count or (1 if options.max_words_per_line else None)
            assert max_lines is None or len(lines) <= max_lines
    if case == "no words":  # a segment is a cue, at the segment's times
        assert [(s.start.total_seconds(), s.end.total_seconds()) for s in subtitles] == [(seg.start, seg.end) for seg in t.segments]
        assert [normal(s.content) for s in subtitles] == [seg.text for seg in t.segments]


def test_a_pause_longer_than_max_gap_and_a_segment_boundary_start_a_cue():
    cues = subtitle_cues(CASES["words"], SubtitleOptions())
    first = SEGMENTS[0].words
    assert [(c.start, c.end, c.lines) for c in cues[:2]] == [
        (first[0].start, first[3].end, ["the quick brown fox"]),  # 1.5 s pause after "fox"
        (first[4].start, first[-1].end, ["jumps over the lazy dog"]),
    ]
    assert [c.lines for c in cues[2:]] == [[SEGMENTS[1].text], [SEGMENTS[2].text]]
    assert len(subtitle_cues(CASES["words"], SubtitleOptions(max_gap=2.0))) == 3  # the pause is shorter than 2 s


def test_whisper_semantics_of_the_line_options():
    t = transcript([timed("one two three four five six seven", 0.0)], 10.0)
    assert [c.lines for c in subtitle_cues(t, SubtitleOptions(max_words_per_line=3))] == [["one two three"], ["four five six"], ["seven"]]
    assert [c.lines for c in subtitle_cues(t, SubtitleOptions(max_line_width=9))] == [["one two", "three", "four five", "six seven"]]
    assert [c.lines for c in subtitle_cues(t, SubtitleOptions(max_line_width=9, max_line_count=3))] == [["one two", "three", "four five"], ["six seven"]]
    cues = subtitle_cues(t, SubtitleOptions(max_words_per_line=2, max_line_count=2))
    assert [c.lines for c in cues] == [["one two", "three four"], ["five six", "seven"]]
    assert (cues[1].start, cues[1].end) == (t.words[4].start, t.words[6].end)


def test_srt_and_vtt_text_exactly(tmp_path):
    t = transcript([timed("a <b> & c", 1.0), timed("x --> y", 3_725.25)], 4_000.0)
    write_srt(tmp_path / "t.srt", t)
    write_vtt(tmp_path / "t.vtt", t)
    assert (tmp_path / "t.srt").read_text() == (
        "1\n00:00:01,000 --> 00:00:02,600\na <b> & c\n\n"
        "2\n01:02:05,250 --> 01:02:06,450\nx -> y\n\n"
    )
    assert (tmp_path / "t.vtt").read_text() == (
        "WEBVTT\n\n"
        "00:00:01.000 --> 00:00:02.600\na &lt;b&gt; &amp; c\n\n"
        "01:02:05.250 --> 01:02:06.450\nx --&gt; y\n\n"
    )


def test_timestamps_past_hours():
    assert format_timestamp(0.0) == "00:00:00.000"
    assert format_timestamp(10_800.5, ",") == "03:00:00,500"
    assert format_timestamp(59.9996) == "00:01:00.000"  # rounding carries into the minutes
    assert format_timestamp(100 * 3600 + 1.234) == "100:00:01.234"


def test_three_hour_file_reads_back_with_its_hours(tmp_path):
    write_srt(tmp_path / "t.srt", CASES["three hours"])
    subtitles = read_srt(tmp_path / "t.srt")
    assert subtitles[0].start.total_seconds() == 10_800.5 and subtitles[1].end.total_seconds() == pytest.approx(11_991.2)


def test_cues_are_clamped_and_ordered():
    overlapping = [
        TranscriptSegment(-0.2, 2.0, "early", [Span("early", -0.2, 2.0, 1.0)]),
        TranscriptSegment(1.5, 3.0, "overlap", [Span("overlap", 1.5, 3.0, 1.0)]),
        TranscriptSegment(3.0, 2.9, "backwards", [Span("backwards", 3.0, 2.9, 1.0)]),
        TranscriptSegment(4.5, 6.0, "late", [Span("late", 4.5, 6.0, 1.0)]),
        TranscriptSegment(6.0, 6.0, "   ", []),
    ]
    cues = subtitle_cues(transcript(overlapping, 5.0), SubtitleOptions())
    assert [(c.start, c.end, c.lines) for c in cues] == [
        (0.0, 2.0, ["early"]), (2.0, 3.0, ["overlap"]), (3.0, 3.0, ["backwards"]), (4.5, 5.0, ["late"]),
    ]


def test_ctm_needs_word_times(tmp_path):
    with pytest.raises(ValueError, match="ctm needs word times: --word-timestamps"):
        write_transcript(CASES["no words"], tmp_path, ["txt", "ctm"])
    assert list(tmp_path.iterdir()) == []  # refused before writing anything
    assert [p.suffix for p in write_transcript(CASES["no words"], tmp_path, ["all", "srt"])] == [".txt", ".json", ".tsv", ".srt", ".vtt"]


def test_bad_formats_options_and_unreadable_files_are_errors(tmp_path):
    with pytest.raises(ValueError, match="'doc'"):
        write_transcript(CASES["words"], tmp_path, ["srt", "doc"])
    for name in ("max_line_width", "max_line_count", "max_words_per_line"):
        for bad in (0, -1, 2.5):
            with pytest.raises(ValueError, match=name):
                SubtitleOptions(**{name: bad})
    with pytest.raises(ValueError, match="max_gap"):
        SubtitleOptions(max_gap=-1.0)
    failed = Transcript("bad.wav", None, "AudioError: bad.wav: empty file", [])
    with pytest.raises(ValueError, match="bad.wav"):
        write_transcript(failed, tmp_path, ["all"])
    assert OUTPUT_FORMATS == ("txt", "json", "tsv", "srt", "vtt", "ctm")


def test_text_without_segments_is_one_cue():
    t = Transcript("a.wav", "hello there", None, [], duration=2.5)
    assert [(c.start, c.end, c.lines) for c in subtitle_cues(t)] == [(0.0, 2.5, ["hello there"])]
