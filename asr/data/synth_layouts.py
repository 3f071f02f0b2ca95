"""The built-in corpus written in real corpus layouts, so the corpus readers run on real files.

    write_timit_layout        ROOT/{TRAIN,TEST}/DR1..DR8/<speaker>/SX<n>.{WAV,PHN,WRD,TXT}
    write_librispeech_layout  ROOT/LibriSpeech/{train-clean-100,dev-clean,test-clean}/<spk>/<chapter>/...

Both synthesize the corpus of asr/data/synth.py (same seed, same sentences and voices), then file
each utterance under the layout's names.

TIMIT layout. `.WAV` is NIST SPHERE, 16 kHz PCM16, as on the LDC disc. `.PHN` comes from eSpeak's
own phoneme events mapped onto the 61 TIMIT phones by `ESPEAK_TO_TIMIT` (below), with `h#` for
the leading and trailing silence. What that mapping can and cannot say:
  - a stop or affricate becomes closure + release (`p` -> `pcl p`, `tS` -> `tcl ch`); eSpeak marks
    only where the whole stop starts, so the boundary inside it is placed at the middle, not
    measured. Likewise an eSpeak phoneme that maps to two TIMIT phones (`A@` -> `aa r`) is
    split evenly;
  - mnemonics are shared by eSpeak's British (`en`) and American (`en-us`) voices but sound
    different: `aa` is /ae/ in en-us and /aa/ in en, and the r-coloured vowels (`A@`, `O@`, `3`)
    carry an `r` only for the rhotic en-us voices. The mapping takes the voice's language;
  - eSpeak's `;` (the y-like glide it inserts between a front vowel and the next vowel, as in
    "the_attic") has no TIMIT phone and is merged into the phone before it;
  - TIMIT's finer labels (`ax-h`, `hv`, `nx`, `eng`, `epi`, `pau`, `ux`) are never produced: eSpeak
    does not make those distinctions, so the 61-set is not fully used (the 39-set nearly is);
  - the end of the last phone (where the trailing `h#` starts) is where the audio last rises
    above SILENCE_LEVEL.
`.WRD` word times are NOT aligned: eSpeak's word events merge function words ("there were"
comes as one event), so each word gets a share of the speech proportional to its letters.
`.TXT` holds the sentence. Speakers: the training voices are cut into pseudo-speakers of
UTTERANCES_PER_SPEAKER sentences each (named like TIMIT speakers, sex letter first, all under
TRAIN); the held-out voices speak as the 50 standard dev speakers (dev) and the 24 core-test
speakers (test), matched by sex, under TEST, so `asr prepare timit` finds the standard split.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from asr.audio import SAMPLE_RATE
from asr.data.manifest import Utterance, read_manifest

UTTERANCES_PER_SPEAKER = 10  # TIMIT has 10 sentences per speaker
SILENCE_LEVEL = 2e-3  # |sample| below this (about -54 dBFS) counts as silence at the utterance's end

_STOPS = {"p": "pcl", "b": "bcl", "t": "tcl", "d": "dcl", "k": "kcl", "g": "gcl"}
# eSpeak NG English phoneme mnemonic -> TIMIT phones. Entries that differ by accent are in
# _RHOTIC (en-us) and _NON_RHOTIC (en); both extend this table.
ESPEAK_TO_TIMIT: dict[str, tuple[str, ...]] = {
    **{stop: (closure, stop) for stop, closure in _STOPS.items()},
    "tS": ("tcl", "ch"), "dZ": ("dcl", "jh"), "t#": ("dx",), "?": ("q",),
    "f": ("f",), "v": ("v",), "T": ("th",), "D": ("dh",), "s": ("s",), "z": ("z",), "S": ("sh",),
    "Z": ("zh",), "h": ("hh",), "x": ("hh",), "m": ("m",), "n": ("n",), "N": ("ng",), "n-": ("en",),
    "m-": ("em",), "l": ("l",), "@L": ("el",), "r": ("r",), "r-": ("r",), "w": ("w",), "j": ("y",),
    "I": ("ih",), "I2": ("ix",), "I#": ("ix",), "i": ("iy",), "i:": ("iy",), "E": ("eh",),
    "e": ("eh",), "a": ("ae",), "a#": ("ax",), "A:": ("aa",), "0": ("aa",), "O:": ("ao",),
    "O": ("ao",), "O2": ("ao",), "V": ("ah",), "U": ("uh",), "u:": ("uw",), "u": ("uw",),
    "3:": ("er",), "@": ("ax",), "@2": ("ax",), "@-": ("ax",), "@5": ("ax",), "eI": ("ey",),
    "aI": ("ay",), "aU": ("aw",), "oU": ("ow",), "o": ("ow",), "OI": ("oy",),
    ";": (),
}  # fmt: skip
_RHOTIC = {
    "aa": ("ae",), "A@": ("aa", "r"), "O@": ("ao", "r"), "o@": ("ao", "r"), "e@": ("eh", "r"),
    "i@": ("ih", "r"), "i@3": ("ih", "r"), "U@": ("uh", "r"), "3": ("axr",), "aI@": ("ay", "er"),
    "aU@": ("aw", "er"),
}  # fmt: skip
_NON_RHOTIC = {
    "aa": ("aa",), "A@": ("aa",), "O@": ("ao",), "o@": ("ao",), "e@": ("eh", "ax"),
    "i@": ("ih", "ax"), "i@3": ("ih", "ax"), "U@": ("uh", "ax"), "3": ("ax",), "aI@": ("ay", "ax"),
    "aU@": ("aw", "ax"),
}  # fmt: skip


class PhoneMappingError(ValueError):
    """An eSpeak phoneme with no TIMIT mapping; the message names it and the utterance."""


def espeak_to_timit(symbol: str, rhotic: bool, where: str = "<phones>") -> tuple[str, ...]:
    table = _RHOTIC if rhotic else _NON_RHOTIC
    if symbol in table:
        return table[symbol]
    if symbol in ESPEAK_TO_TIMIT:
        return ESPEAK_TO_TIMIT[symbol]
    raise PhoneMappingError(f"{where}: eSpeak phoneme {symbol!r} has no TIMIT mapping (add it to ESPEAK_TO_TIMIT)")


def speech_end(audio: np.ndarray) -> int:
    """Index one past the last sample louder than SILENCE_LEVEL (0 for a silent signal)."""
    loud = np.flatnonzero(np.abs(audio) > SILENCE_LEVEL)
    return int(loud[-1]) + 1 if loud.size else 0


def timit_segments(utterance: Utterance, audio: np.ndarray) -> list[tuple[int, int, str]]:
    """(start, end, phone) in samples at 16 kHz covering the whole of `audio` (samples,), from the
    utterance's eSpeak `phones` and `phone_times`, as described in the module docstring."""
    symbols = (utterance.phones or "").split()
    times = utterance.extra.get("phone_times", [])
    if not symbols or len(symbols) != len(times):
        raise PhoneMappingError(f"{utterance.id}: needs eSpeak `phones` and as many `phone_times`")
    rhotic = (utterance.speaker or "").startswith("en-us")
    num_samples = audio.size
    starts = [min(round(t * SAMPLE_RATE), num_samples) for t in times]
    last_end = min(max(speech_end(audio), starts[-1] + 1), num_samples)
    segments: list[tuple[int, int, str]] = []
    if starts[0] > 0:
        segments.append((0, starts[0], "h#"))
    for k, symbol in enumerate(symbols):
        start, end = starts[k], starts[k + 1] if k + 1 < len(symbols) else last_end
        timit = espeak_to_timit(symbol, rhotic, where=utterance.id)
        if not timit or end <= start:  # a glide with no TIMIT phone, or a zero-length event
            if segments and end > start:
                s, _, p = segments[-1]
                segments[-1] = (s, end, p)
            continue
        edges = np.linspace(start, end, len(timit) + 1).round().astype(int)
        segments.extend((int(a), int(b), p) for a, b, p in zip(edges[:-1], edges[1:], timit) if b > a)
    if segments[-1][1] < num_samples:
        segments.append((segments[-1][1], num_samples, "h#"))
    return segments


def word_segments(words: list[str], start: int, end: int) -> list[tuple[int, int, str]]:
    """Words spread over [start, end) in proportion to their letters (not aligned; see above)."""
    weights = np.array([max(len(w), 1) for w in words], dtype=np.float64)
    edges = (start + np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum() * (end - start)).round().astype(int)
    return [(int(a), int(b), w) for a, b, w in zip(edges[:-1], edges[1:], words)]


def _sex(voice: str) -> str:
    return "f" if "+f" in voice else "m"


def _speaker_names(utterances: list[Utterance], split: str) -> dict[str, tuple[str, str]]:
    """utterance id -> (dialect region, speaker) for one split of the synthetic corpus."""
    from asr.data.corpora.timit import CORE_TEST_SPEAKERS, DEV_SPEAKERS

    names: dict[str, tuple[str, str]] = {}
    if split == "train":
        voices = sorted({u.speaker or "" for u in utterances})
        counts: dict[str, int] = {}
        for u in utterances:
            v = voices.index(u.speaker or "")
            group = counts.get(u.speaker or "", 0) // UTTERANCES_PER_SPEAKER
            counts[u.speaker or ""] = counts.get(u.speaker or "", 0) + 1
            letters = chr(65 + v % 26) + chr(65 + group // 26 % 26) + chr(65 + group % 26)
            # digits from 5 up: the dev and core-test lists use 0, 1 and 4, so no name can collide
            names[u.id] = (f"dr{v % 8 + 1}", f"{_sex(u.speaker or '')}{letters.lower()}{5 + group // 676}")
        return names
    if split == "dev":
        pool = [(f"dr{k % 8 + 1}", s) for k, s in enumerate(DEV_SPEAKERS)]  # the real regions are not needed
    else:
        pool = [(dr, s) for dr, group in CORE_TEST_SPEAKERS.items() for s in group]
    by_sex = {sex: [entry for entry in pool if entry[1][0] == sex] for sex in "mf"}
    dealt = {"m": 0, "f": 0}
    for u in utterances:
        sex = _sex(u.speaker or "")
        names[u.id] = by_sex[sex][dealt[sex] % len(by_sex[sex])]
        dealt[sex] += 1
    return names


def write_timit_layout(
    out_dir: str | os.PathLike, num_utterances: int = 3000, seed: int = 0, upper_case: bool = True, progress: bool = True
) -> Path:
    """Synthesize the built-in corpus and write it as a TIMIT tree under out_dir; return out_dir."""
    import soundfile as sf

    from asr.audio import write_audio
    from asr.data.synth import synthesize_corpus
    from asr.fileio import atomic_write

    out_dir = Path(out_dir)
    staging = out_dir / ".staging"
    manifests = synthesize_corpus(staging, num_utterances=num_utterances, seed=seed, progress=progress)
    case = str.upper if upper_case else str.lower
    for split, manifest in manifests.items():
        utterances = read_manifest(manifest)
        names = _speaker_names(utterances, split)
        part = "train" if split == "train" else "test"
        for index, u in enumerate(utterances):
            region, speaker = names[u.id]
            folder = out_dir / case(part) / case(region) / case(speaker)
            stem = case(f"sx{index}")
            audio, rate = sf.read(u.audio, dtype="float32")  # (samples,)
            assert rate == SAMPLE_RATE, rate
            write_audio(folder / f"{stem}.{case('wav')}", audio, rate, format="NIST", subtype="PCM_16")
            phones = timit_segments(u, audio)
            with atomic_write(folder / f"{stem}.{case('phn')}") as f:
                f.writelines(f"{a} {b} {p}\n" for a, b, p in phones)
            words = word_segments(u.text.split(), phones[1][0] if phones[0][2] == "h#" else 0, phones[-1][0])
            with atomic_write(folder / f"{stem}.{case('wrd')}") as f:
                f.writelines(f"{a} {b} {w}\n" for a, b, w in words)
            with atomic_write(folder / f"{stem}.{case('txt')}") as f:
                f.write(f"0 {audio.size} {u.text[:1].upper()}{u.text[1:]}.\n")
    shutil.rmtree(staging)
    return out_dir


LIBRISPEECH_SPLITS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
UTTERANCES_PER_CHAPTER = 20


def write_librispeech_layout(
    out_dir: str | os.PathLike, num_utterances: int = 3000, seed: int = 0, progress: bool = True
) -> Path:
    """Synthesize the built-in corpus and write it as out_dir/LibriSpeech/<split>/<speaker>/<chapter>/
    (FLAC + <speaker>-<chapter>.trans.txt, upper-case text); speakers are numbered voices, chapters
    groups of UTTERANCES_PER_CHAPTER. Returns out_dir/LibriSpeech."""
    import soundfile as sf

    from asr.audio import write_audio
    from asr.data.synth import HELDOUT_VOICES, TRAIN_VOICES, synthesize_corpus
    from asr.fileio import atomic_write

    out_dir = Path(out_dir)
    staging = out_dir / ".staging"
    root = out_dir / "LibriSpeech"
    manifests = synthesize_corpus(staging, num_utterances=num_utterances, seed=seed, progress=progress)
    voices = list(TRAIN_VOICES + HELDOUT_VOICES)
    for split, manifest in manifests.items():
        chapters: dict[tuple[int, int], list[tuple[str, str]]] = {}
        counts: dict[int, int] = {}
        for u in read_manifest(manifest):
            speaker = 100 + voices.index(u.speaker or "")
            n = counts.get(speaker, 0)
            counts[speaker] = n + 1
            chapter = 1000 * speaker + n // UTTERANCES_PER_CHAPTER + {"train": 0, "dev": 300, "test": 600}[split]
            utt_id = f"{speaker}-{chapter}-{n % UTTERANCES_PER_CHAPTER:04d}"
            folder = root / LIBRISPEECH_SPLITS[split] / str(speaker) / str(chapter)
            audio, rate = sf.read(u.audio, dtype="float32")  # (samples,)
            write_audio(folder / f"{utt_id}.flac", audio, rate, subtype="PCM_16")
            chapters.setdefault((speaker, chapter), []).append((utt_id, u.text.upper()))
        for (speaker, chapter), lines in chapters.items():
            folder = root / LIBRISPEECH_SPLITS[split] / str(speaker) / str(chapter)
            with atomic_write(folder / f"{speaker}-{chapter}.trans.txt") as f:
                f.writelines(f"{utt_id} {text}\n" for utt_id, text in lines)
    shutil.rmtree(staging)
    return root
