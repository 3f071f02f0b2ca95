"""A NeMo-style manifest to ours.

NeMo's ASR manifests are JSON lines `{"audio_filepath", "duration", "text"}` with optional
`offset` (s) (NeMo docs, "Preparing Custom ASR Data"). Relative audio paths are taken relative to
the manifest's folder. The id is the audio file's stem (with `-<n>` appended to repeats, as for
several segments of one file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from asr.data.corpora.prepared import CorpusError, PreparedCorpus
from asr.data.manifest import Utterance, json_lines


def _read_nemo(path: Path, problems: list[str]) -> list[Utterance]:
    utterances = []
    seen: dict[str, int] = {}
    for where, line in json_lines(path):
        try:
            record = json.loads(line)
            audio = Path(record["audio_filepath"])
            duration = float(record["duration"])
            text = str(record["text"])
            offset = float(record.get("offset", 0.0) or 0.0)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            problems.append(f"{where}: not a NeMo manifest line ({type(e).__name__}: {e}); skipped")
            continue
        if not audio.is_absolute():
            audio = path.resolve().parent / audio
        if not audio.is_file():
            problems.append(f"{where}: no audio file {audio}; skipped")
            continue
        if not duration > 0:
            problems.append(f"{where}: duration {duration} is not positive; skipped")
            continue
        utt_id = audio.stem
        seen[utt_id] = seen.get(utt_id, 0) + 1
        if seen[utt_id] > 1:
            utt_id = f"{utt_id}-{seen[utt_id] - 1}"
        utterances.append(Utterance(id=utt_id, audio=str(audio), duration=duration, text=text, offset=offset))
    return utterances


def prepare_nemo(root: str | os.PathLike, out_dir: str | os.PathLike, progress: bool = True) -> PreparedCorpus:
    """`root` is a manifest file (-> OUT_DIR/<its stem>.jsonl) or a folder of *.json / *.jsonl
    manifests (one output each)."""
    root = Path(root)
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix in (".json", ".jsonl"))
    elif root.is_file():
        files = [root]
    else:
        raise CorpusError(f"{root}: no such manifest or directory")
    if not files:
        raise CorpusError(f"{root}: no *.json or *.jsonl manifests in it")
    result = PreparedCorpus()
    for path in files:
        if (Path(out_dir) / f"{path.stem}.jsonl").resolve() == path.resolve():
            raise CorpusError(f"{path}: preparing it into {out_dir} would overwrite it; choose another OUT_DIR")
        result.add_split(Path(out_dir), path.stem, _read_nemo(path, result.problems))
    return result
