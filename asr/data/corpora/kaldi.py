"""A Kaldi data directory to a manifest.

Files (https://kaldi-asr.org/doc/data_prep.html): `wav.scp` (`<recording> <path>`), `text`
(`<utterance> <words>`), optional `segments` (`<utterance> <recording> <start s> <end s>`, end -1
= to the end of the file) and `utt2spk` (`<utterance> <speaker>`). Without `segments` each
utterance is a whole recording with the same id. Only plain paths are supported in `wav.scp`: a
piped command (`... |`) is an error naming the line, since running shell commands from a data
file is not something this reader does.
"""

from __future__ import annotations

import os
from pathlib import Path

from asr.data.corpora.prepared import CorpusError, PreparedCorpus, header_duration
from asr.data.manifest import Utterance


def _read_table(path: Path, num_fields: int, min_fields: int | None = None) -> list[tuple[int, list[str]]]:
    """(line number, up to `num_fields` fields) of a whitespace-separated Kaldi table; the last
    field keeps its spaces. Fewer than `min_fields` (default all) is an error naming the line."""
    min_fields = num_fields if min_fields is None else min_fields
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.strip().split(maxsplit=num_fields - 1)
            if len(fields) < min_fields:
                raise CorpusError(f"{path}:{line_number}: expected {min_fields} fields, got {line.strip()!r}")
            rows.append((line_number, fields))
    return rows


def prepare_kaldi(root: str | os.PathLike, out_dir: str | os.PathLike, progress: bool = True) -> PreparedCorpus:
    """Write OUT_DIR/<name of root>.jsonl. Relative paths in wav.scp are taken relative to the
    current directory, as Kaldi's own scripts (run from the recipe folder) take them."""
    root = Path(root)
    wav_scp, text_file = root / "wav.scp", root / "text"
    for needed in (wav_scp, text_file):
        if not needed.is_file():
            raise CorpusError(f"{needed}: no such file (a Kaldi data directory needs wav.scp and text)")
    result = PreparedCorpus()
    problems = result.problems
    recordings: dict[str, Path] = {}
    for line_number, (rec_id, location) in _read_table(wav_scp, 2):
        location = location.strip()
        if location.endswith("|"):
            raise CorpusError(
                f"{wav_scp}:{line_number}: recording {rec_id!r} is a piped command ({location!r}); "
                "write the audio to files first (e.g. with sox or ffmpeg) and list their paths"
            )
        recordings[rec_id] = Path(location).resolve()
    texts = {fields[0]: (fields[1] if len(fields) > 1 else "") for _, fields in _read_table(text_file, 2, min_fields=1)}
    speakers = {}
    if (root / "utt2spk").is_file():
        speakers = {utt: spk for _, (utt, spk) in _read_table(root / "utt2spk", 2)}
    segments: dict[str, tuple[str, float, float]] = {}
    if (root / "segments").is_file():
        for line_number, fields in _read_table(root / "segments", 4):
            utt_id, rec_id, start, end = fields
            try:
                segments[utt_id] = (rec_id, float(start), float(end))
            except ValueError:
                raise CorpusError(f"{root / 'segments'}:{line_number}: start and end must be numbers") from None
    else:
        segments = {rec_id: (rec_id, 0.0, -1.0) for rec_id in recordings}

    durations: dict[str, float | None] = {}
    utterances = []
    for utt_id, text in texts.items():
        if utt_id not in segments:
            problems.append(f"{text_file}: utterance {utt_id!r} has no {'segment' if (root / 'segments').is_file() else 'line in wav.scp'}; skipped")
            continue
        rec_id, start, end = segments[utt_id]
        if rec_id not in recordings:
            problems.append(f"{root / 'segments'}: utterance {utt_id!r} names recording {rec_id!r}, which wav.scp lacks; skipped")
            continue
        audio = recordings[rec_id]
        if rec_id not in durations:
            durations[rec_id] = header_duration(audio, problems)
        file_duration = durations[rec_id]
        if file_duration is None:
            continue
        end = file_duration if end < 0 else end
        if not 0 <= start < end or end > file_duration + 0.01:
            problems.append(f"{root / 'segments'}: utterance {utt_id!r} spans {start}..{end} s of {audio} ({file_duration:.2f} s); skipped")
            continue
        utterances.append(
            Utterance(id=utt_id, audio=str(audio), duration=end - start, text=text, offset=start, speaker=speakers.get(utt_id))
        )
    texted = {segments[u][0] for u in texts if u in segments}
    for rec_id in recordings:
        if rec_id not in texted and not (root / "segments").is_file():
            problems.append(f"{wav_scp}: recording {rec_id!r} has no line in {text_file.name}; skipped")
    result.add_split(Path(out_dir), root.resolve().name, utterances)
    return result
