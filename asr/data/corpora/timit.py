"""TIMIT (LDC93S1) to manifests, with the standard train / dev / core-test split.

Layout: ROOT/{TRAIN,TEST}/DR1..DR8/<speaker>/<utt>.{WAV,PHN,WRD,TXT}, upper or lower case
(ROOT may also be the folder holding TIMIT/ or data/). `.WAV` is NIST SPHERE, which soundfile
reads. `.PHN` lines are `start end phone` in samples over the 61 TIMIT phones; `.WRD` lines are
`start end word`; `.TXT` is `start end The sentence.`.

Splits, as in Halberstadt (1998) and every recipe since (e.g. Kaldi egs/timit/s5):
  train  all 462 TRAIN speakers;
  dev    the 50-speaker development set, from TEST;
  test   the 24-speaker core test set, from TEST (2 male + 1 female per dialect region).
SA sentences (the two read by every speaker) are left out unless `include_sa`; the core test and
dev sets are defined over the SI and SX sentences only.
"""

from __future__ import annotations

import os
from pathlib import Path

from asr.data.corpora.prepared import CorpusError, PreparedCorpus, header_duration
from asr.data.manifest import Utterance
from asr.phones import PHONES_61
from asr.text import normalize_text

# The core test set: TIMIT's own documentation (TIMIT/DOC/TESTSET.DOC), by dialect region.
# Checked: the same 24 speakers as two independent public TIMIT preparation scripts found
# through the code search (a Python list `core_test_set_speakers` and a C++ speaker switch).
CORE_TEST_SPEAKERS: dict[str, tuple[str, ...]] = {
    "dr1": ("mdab0", "mwbt0", "felc0"),
    "dr2": ("mtas1", "mwew0", "fpas0"),
    "dr3": ("mjmp0", "mlnt0", "fpkt0"),
    "dr4": ("mlll0", "mtls0", "fjlm0"),
    "dr5": ("mbpm0", "mklt0", "fnlp0"),
    "dr6": ("mcmj0", "mjdh0", "fmgd0"),
    "dr7": ("mgrt0", "mnjm0", "fdhc0"),
    "dr8": ("mjln0", "mpam0", "fmld0"),
}
# The 50-speaker development set of A. K. Halberstadt, "Heterogeneous acoustic measurements and
# multiple classifiers for speech recognition", PhD thesis, MIT, 1998; the same list as Kaldi's
# egs/timit/s5/conf/dev_spk.list (checked). All are TEST speakers outside the core test set.
DEV_SPEAKERS: tuple[str, ...] = (
    "faks0", "fdac1", "fjem0", "mgwt0", "mjar0", "mmdb1", "mmdm2", "mpdf0", "fcmh0", "fkms0",
    "mbdg0", "mbwm0", "mcsh0", "fadg0", "fdms0", "fedw0", "mgjf0", "mglb0", "mrtk0", "mtaa0",
    "mtdt0", "mthc0", "mwjg0", "fnmr0", "frew0", "fsem0", "mbns0", "mmjr0", "mdls0", "mdlf0",
    "mdvc0", "mers0", "fmah0", "fdrw0", "mrcs0", "mrjm4", "fcal1", "mmwh0", "fjsj0", "majc0",
    "mjsw0", "mreb0", "fgjd0", "fjmg0", "mroa0", "mteb0", "mjfc0", "mrjr0", "fmml0", "mrws1",
)  # fmt: skip
CORE_TEST_SET: frozenset[str] = frozenset(s for group in CORE_TEST_SPEAKERS.values() for s in group)
DEV_SET: frozenset[str] = frozenset(DEV_SPEAKERS)
NUM_TRAIN_SPEAKERS = 462  # in the full corpus
TIMIT_SAMPLE_RATE = 16000  # Hz; .PHN and .WRD times are sample indices at this rate


def _child(folder: Path, name: str) -> Path | None:
    """The entry of `folder` called `name` in any letter case."""
    for entry in folder.iterdir():
        if entry.name.lower() == name.lower():
            return entry
    return None


def _find_root(root: Path) -> Path:
    if not root.is_dir():
        raise CorpusError(f"{root}: no such directory")
    for candidate in (root, _child(root, "timit"), _child(root, "data")):
        if candidate is not None and candidate.is_dir() and _child(candidate, "train") and _child(candidate, "test"):
            return candidate
    raise CorpusError(f"{root}: not a TIMIT tree (expected TRAIN/ and TEST/ with DR1..DR8 inside, either case)")


def read_segments(path: Path, problems: list[str]) -> list[tuple[int, int, str]] | None:
    """`start end label` lines (.PHN, .WRD) -> [(start, end, label)], or None with a problem noted."""
    segments = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
                problems.append(f"{path}:{line_number}: expected 'start end label', got {line.strip()!r}; utterance skipped")
                return None
            segments.append((int(parts[0]), int(parts[1]), parts[2]))
    return segments


def _read_words(stems: dict[str, Path], problems: list[str]) -> str | None:
    """Words of the utterance: from .WRD if present, else the sentence in .TXT, normalized."""
    if "wrd" in stems:
        segments = read_segments(stems["wrd"], problems)
        return None if segments is None else normalize_text(" ".join(word for _, _, word in segments))
    if "txt" in stems:
        text = stems["txt"].read_text(encoding="utf-8", errors="replace").split(maxsplit=2)
        sentence = text[2] if len(text) == 3 else ""
        return normalize_text("".join(c for c in sentence if c.isalnum() or c in " '-"))
    return ""


def _read_utterance(speaker_dir: Path, stem: str, files: dict[str, Path], problems: list[str]) -> Utterance | None:
    speaker = speaker_dir.name.lower()
    if "wav" not in files:
        problems.append(f"{speaker_dir / stem}: no .WAV audio for this utterance; skipped")
        return None
    if "phn" not in files:
        problems.append(f"{files['wav']}: no .PHN phone transcription beside it; skipped")
        return None
    segments = read_segments(files["phn"], problems)
    if segments is None:
        return None
    unknown = sorted({p for _, _, p in segments} - set(PHONES_61))
    if unknown:
        problems.append(f"{files['phn']}: phone(s) {', '.join(unknown)} are not TIMIT phones; skipped")
        return None
    duration = header_duration(files["wav"], problems)
    words = _read_words(files, problems)
    if duration is None or words is None:
        return None
    return Utterance(
        id=f"{speaker}_{stem}",
        audio=str(files["wav"]),
        duration=duration,
        text=words,
        speaker=speaker,
        phones=" ".join(p for _, _, p in segments),
        extra={
            "dialect_region": speaker_dir.parent.name.lower(),
            # when each phone was spoken (s), TIMIT's hand labels: what a frame head learns from
            "phone_times": [round(start / TIMIT_SAMPLE_RATE, 5) for start, _, _ in segments],
            "phone_ends": [round(end / TIMIT_SAMPLE_RATE, 5) for _, end, _ in segments],
        },
    )


def _read_part(part_dir: Path, include_sa: bool, problems: list[str]) -> list[Utterance]:
    """Every utterance of TRAIN or TEST, in sorted order."""
    utterances = []
    for region in sorted(p for p in part_dir.iterdir() if p.is_dir()):
        for speaker_dir in sorted(p for p in region.iterdir() if p.is_dir()):
            by_stem: dict[str, dict[str, Path]] = {}
            for f in speaker_dir.iterdir():
                stem, dot, suffix = f.name.lower().partition(".")
                if dot and suffix in ("wav", "phn", "wrd", "txt"):  # SX3.WAV.wav copies etc. are ignored
                    by_stem.setdefault(stem, {})[suffix] = f
            for stem in sorted(by_stem):
                if stem.startswith("sa") and not include_sa:
                    continue
                utt = _read_utterance(speaker_dir, stem, by_stem[stem], problems)
                if utt is not None:
                    utterances.append(utt)
    return utterances


def prepare_timit(
    root: str | os.PathLike, out_dir: str | os.PathLike, include_sa: bool = False, progress: bool = True
) -> PreparedCorpus:
    """Write OUT_DIR/{train,dev,test}.jsonl: rows carry the 61-phone `phones` of .PHN, the words
    as `text`, the speaker and the dialect region. Test speakers in neither list are left out
    (counted in `problems`' summary line), as are core-test or dev speakers missing from TEST."""
    root = _find_root(Path(root).resolve())
    out_dir = Path(out_dir)
    result = PreparedCorpus()
    train = _read_part(_child(root, "train"), include_sa, result.problems)  # type: ignore[arg-type]
    test_part = _read_part(_child(root, "test"), include_sa, result.problems)  # type: ignore[arg-type]
    misplaced = sorted({u.speaker for u in train if u.speaker in CORE_TEST_SET | DEV_SET})
    if misplaced:
        result.problems.append(f"{root}: TRAIN holds test/dev speaker(s) {', '.join(misplaced)}; left in train")
    dev = [u for u in test_part if u.speaker in DEV_SET]
    test = [u for u in test_part if u.speaker in CORE_TEST_SET]
    for name, wanted, got in (("dev", DEV_SET, dev), ("core test", CORE_TEST_SET, test)):
        missing = sorted(wanted - {u.speaker for u in got})
        if missing:
            result.problems.append(f"{root}: {len(missing)} {name} speaker(s) have no utterances in TEST: {', '.join(missing)}")
    result.add_split(out_dir, "train", train)
    result.add_split(out_dir, "dev", dev)
    result.add_split(out_dir, "test", test)
    return result
