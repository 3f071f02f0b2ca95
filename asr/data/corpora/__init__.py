"""Corpora on disk to manifests: one small module per layout.

    librispeech  ROOT/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt + .flac
    timit        ROOT/{TRAIN,TEST}/DR1-8/<speaker>/<utt>.{WAV,PHN,WRD,TXT}, either letter case
    kaldi        a Kaldi data directory: wav.scp, text, optional segments and utt2spk
    nemo         a NeMo-style JSON-lines manifest: audio_filepath, duration, text

Each `prepare_*(root, out_dir)` writes OUT_DIR/<split>.jsonl (absolute audio paths) and returns a
`PreparedCorpus`. Problems with single files or lines (missing audio, a transcript line without
audio, an unreadable header) are collected in `problems`, each naming its file, and the rest goes
on; a root that is not the layout at all raises CorpusError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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


def prepare_corpus(layout: str, root: str | os.PathLike, out_dir: str | os.PathLike, **options) -> PreparedCorpus:
    """Dispatch to the reader for `layout` ("librispeech", "timit", "kaldi", "nemo")."""
    prepare: Callable[..., PreparedCorpus]
    if layout == "librispeech":
        from asr.data.corpora.librispeech import prepare_librispeech as prepare
    elif layout == "timit":
        from asr.data.corpora.timit import prepare_timit as prepare
    elif layout == "kaldi":
        from asr.data.corpora.kaldi import prepare_kaldi as prepare
    elif layout == "nemo":
        from asr.data.corpora.nemo import prepare_nemo as prepare
    else:
        raise CorpusError(f"unknown corpus layout {layout!r}: use librispeech, timit, kaldi or nemo")
    return prepare(root, out_dir, **options)


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
