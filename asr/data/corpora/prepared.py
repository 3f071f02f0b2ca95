"""What every corpus layout reader shares: the summary it returns (`PreparedCorpus`), the error
for a root it cannot prepare at all (`CorpusError`), and audio durations read from file headers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from asr.data.manifest import Utterance, write_manifest


class CorpusError(ValueError):
    """A corpus directory or file that cannot be prepared at all; the message names it."""


@dataclass
class PreparedCorpus:
    manifests: dict[str, Path] = field(default_factory=dict)  # split -> manifest path
    utterances: dict[str, int] = field(default_factory=dict)  # split -> utterances written
    hours: dict[str, float] = field(default_factory=dict)  # split -> hours of audio
    problems: list[str] = field(default_factory=list)  # one line per skipped file or line, naming it

    def add_split(self, out_dir: Path, split: str, utterances: list[Utterance]) -> None:
        path = Path(out_dir) / f"{split}.jsonl"
        write_manifest(path, utterances, relative=False)
        self.manifests[split] = path
        self.utterances[split] = len(utterances)
        self.hours[split] = sum(u.duration for u in utterances) / 3600


def header_duration(path: Path, problems: list[str]) -> float | None:
    """Seconds from the audio file's header (no decoding), or None with a problem noted."""
    from asr.audio import AudioError, audio_duration

    try:
        duration = audio_duration(path)
    except AudioError as e:
        problems.append(str(e))
        return None
    if duration <= 0:
        problems.append(f"{path}: no samples")
        return None
    return duration
