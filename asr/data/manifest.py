"""Manifests: one utterance per JSON line, `{"id", "audio", "duration", "text", ...}`.

Optional keys: `offset` (s, into `audio`), `speaker`, `phones` (space-separated). A relative
`audio` path is relative to the manifest's own directory, so a corpus folder can be moved whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from asr.fileio import atomic_write

REQUIRED_KEYS = ("id", "audio", "duration", "text")


class ManifestError(ValueError):
    """A malformed manifest; the message names the file and line."""


@dataclass
class Utterance:
    id: str
    audio: str  # absolute path after reading
    duration: float  # seconds
    text: str
    offset: float = 0.0  # seconds into `audio`
    speaker: str | None = None
    phones: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        audio = self.audio
        if relative_to is not None:
            try:
                audio = os.path.relpath(audio, relative_to)
            except ValueError:  # different drive on Windows
                pass
        record: dict[str, Any] = {"id": self.id, "audio": audio, "duration": round(self.duration, 4), "text": self.text}
        if self.offset:
            record["offset"] = self.offset
        if self.speaker is not None:
            record["speaker"] = self.speaker
        if self.phones is not None:
            record["phones"] = self.phones
        record.update(self.extra)
        return record


def json_lines(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """The non-blank lines of a JSON-lines file, each with its `file:line` for error messages."""
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if line.strip():
                yield f"{path}:{line_number}", line


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read and validate a JSON-lines manifest. Raises ManifestError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest")
    base = path.resolve().parent
    utterances: list[Utterance] = []
    seen: set[str] = set()
    for where, line in json_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{where}: not JSON: {e}") from e
        if not isinstance(record, dict):
            raise ManifestError(f"{where}: expected a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise ManifestError(f"{where}: missing key(s) {', '.join(missing)}")
        utt_id = str(record.pop("id"))
        if utt_id in seen:
            raise ManifestError(f"{where}: duplicate utterance id {utt_id!r}")
        seen.add(utt_id)
        try:
            duration = float(record.pop("duration"))
            offset = float(record.pop("offset", 0.0))
        except (TypeError, ValueError) as e:
            raise ManifestError(f"{where}: duration/offset must be numbers") from e
        if not duration > 0:
            raise ManifestError(f"{where}: utterance {utt_id!r} has duration {duration}")
        audio = Path(record.pop("audio"))
        if not audio.is_absolute():
            audio = base / audio
        utterances.append(
            Utterance(
                id=utt_id,
                audio=str(audio),
                duration=duration,
                text=str(record.pop("text")),
                offset=offset,
                speaker=record.pop("speaker", None),
                phones=record.pop("phones", None),
                extra=record,
            )
        )
    return utterances


def write_manifest(path: str | os.PathLike, utterances: Iterable[Utterance], relative: bool = True) -> None:
    """Write utterances atomically; audio paths relative to the manifest's folder if `relative`."""
    path = Path(path)
    base = path.resolve().parent if relative else None
    with atomic_write(path) as f:
        for utt in utterances:
            f.write(json.dumps(utt.to_json(base), ensure_ascii=False) + "\n")
