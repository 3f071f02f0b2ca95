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
from typing import Callable

from asr.data.corpora.prepared import CorpusError, PreparedCorpus


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
