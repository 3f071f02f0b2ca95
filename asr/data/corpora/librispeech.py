"""LibriSpeech (Panayotov et al. 2015, openslr.org/12) to manifests.

Layout: ROOT/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt, whose lines are
`<speaker>-<chapter>-<utt> TEXT IN CAPITALS`, beside one <speaker>-<chapter>-<utt>.flac per line.
ROOT may also be the folder that holds `LibriSpeech/`. Every split folder found becomes
OUT_DIR/<split>.jsonl; durations come from the FLAC headers, so no audio is decoded.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from asr.data.corpora.prepared import CorpusError, PreparedCorpus, header_duration
from asr.data.manifest import Utterance

SPLITS = (
    "train-clean-100", "train-clean-360", "train-other-500",
    "dev-clean", "dev-other", "test-clean", "test-other",
)  # fmt: skip
TRAIN_960 = ("train-clean-100", "train-clean-360", "train-other-500")  # together: the 960 h training set
AUDIO_SUFFIX = ".flac"
# Header reads wait on the file system; threads overlap that wait on cold or network storage (cffi
# releases the GIL in libsndfile calls). On a warm page cache one thread was as fast: 3000 FLAC
# files, 7669 files/s with 1 thread vs 6419 with 8 (scripts/bench_prepare.py, 2-core machine).
NUM_THREADS = 8


def _find_root(root: Path) -> Path:
    if not root.is_dir():
        raise CorpusError(f"{root}: no such directory")
    if (root / "LibriSpeech").is_dir() and not any((root / s).is_dir() for s in SPLITS):
        root = root / "LibriSpeech"
    return root


def _is_split(folder: Path) -> bool:
    """A split folder holds <speaker>/<chapter>/*.trans.txt."""
    return folder.is_dir() and next(folder.glob("*/*/*.trans.txt"), None) is not None


def _read_chapter(transcript: Path, problems: list[str]) -> list[tuple[str, Path, str, str]]:
    """(utterance id, audio path, text, speaker) per usable line of one chapter's transcript."""
    chapter_dir = transcript.parent
    speaker, chapter = chapter_dir.parent.name, chapter_dir.name
    prefix = f"{speaker}-{chapter}-"
    rows = []
    seen = set()
    with open(transcript, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            where = f"{transcript}:{line_number}"
            if not utt_id.startswith(prefix):
                problems.append(f"{where}: utterance {utt_id!r} is not speaker {speaker}, chapter {chapter}; skipped")
                continue
            if not text.strip():
                problems.append(f"{where}: utterance {utt_id!r} has no text; skipped")
                continue
            audio = chapter_dir / f"{utt_id}{AUDIO_SUFFIX}"
            if not audio.is_file():
                problems.append(f"{where}: no audio file {audio.name} for utterance {utt_id!r}; skipped")
                continue
            seen.add(audio.name)
            rows.append((utt_id, audio, text.strip(), speaker))
    for audio in sorted(chapter_dir.glob(f"*{AUDIO_SUFFIX}")):
        if audio.name not in seen:
            problems.append(f"{audio}: audio file with no line in {transcript.name}; skipped")
    return rows


def prepare_librispeech(
    root: str | os.PathLike, out_dir: str | os.PathLike, progress: bool = True, num_threads: int = NUM_THREADS
) -> PreparedCorpus:
    """Write OUT_DIR/<split>.jsonl for every LibriSpeech split under `root` (the 7 official names
    first, then any other folder in the layout), and OUT_DIR/train-960.jsonl when all three
    training splits are there. Rows: id, audio (absolute), duration, text (as in the
    transcript, upper case), speaker, chapter."""
    root = _find_root(Path(root).resolve())
    out_dir = Path(out_dir)
    official = [root / s for s in SPLITS if (root / s).is_dir()]
    others = sorted(p for p in root.iterdir() if p.name not in SPLITS and _is_split(p))
    splits = [p for p in official if _is_split(p)] + others
    if not splits:
        raise CorpusError(f"{root}: no LibriSpeech split found (expected e.g. {root / 'dev-clean'}/<speaker>/<chapter>/*.trans.txt)")
    result = PreparedCorpus()
    by_split: dict[str, list[Utterance]] = {}
    for split_dir in splits:
        rows = []
        for transcript in sorted(split_dir.glob("*/*/*.trans.txt")):
            rows.extend(_read_chapter(transcript, result.problems))
        with ThreadPoolExecutor(max(1, num_threads)) as pool:
            durations = list(
                tqdm(
                    pool.map(lambda row: header_duration(row[1], result.problems), rows),
                    total=len(rows), desc=split_dir.name, unit="file", disable=not progress, leave=False,
                )
            )  # fmt: skip
        utterances = [
            Utterance(id=utt_id, audio=str(audio), duration=duration, text=text, speaker=speaker,
                      extra={"chapter": audio.parent.name})
            for (utt_id, audio, text, speaker), duration in zip(rows, durations)
            if duration is not None
        ]  # fmt: skip
        result.add_split(out_dir, split_dir.name, utterances)
        by_split[split_dir.name] = utterances
    if all(s in by_split for s in TRAIN_960):
        result.add_split(out_dir, "train-960", [u for s in TRAIN_960 for u in by_split[s]])
    return result
