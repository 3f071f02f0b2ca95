"""The built-in corpus written in real corpus layouts, so the corpus readers run on real files.

    write_timit_layout        ROOT/{TRAIN,TEST}/DR1..DR8/<speaker>/SX<n>.{WAV,PHN,WRD,TXT}
    write_librispeech_layout  ROOT/LibriSpeech/{train-clean-100,dev-clean,test-clean}/<spk>/<chapter>/...

Both synthesize the corpus of asr/data/synth.py (same seed, same sentences and voices), then file
each utterance under the layout's names.

TIMIT layout. `.WAV` is NIST SPHERE, 16 kHz PCM16, as on the LDC disc. `.PHN` comes from eSpeak's
own phoneme events mapped onto the 61 TIMIT phones by `ESPEAK_TO_TIMIT` (below): each phone
spans the manifest's `phone_times` to `phone_ends` (see asr/data/synth.py), `h#` covers the
leading and trailing silence and `pau` the pauses eSpeak makes inside a sentence. What that
mapping can and cannot say:
  - a stop or affricate becomes closure + release (`p` -> `pcl p`, `tS` -> `tcl ch`). eSpeak gives
    a stop one event; for p, t, k it mostly comes at the burst, after the closure's silence,
    which so lies in the phone before. The stop's own span is split at its middle: the
    closure/release boundary is an estimate, not measured. Likewise an eSpeak phoneme that
    maps to two TIMIT phones (`A@` -> `aa r`) is split evenly;
  - mnemonics are shared by eSpeak's British (`en`) and American (`en-us`) voices but sound
    different: `aa` is /ae/ in en-us and /aa/ in en, and the r-coloured vowels (`A@`, `O@`, `3`)
    carry an `r` only for the rhotic en-us voices. The mapping takes the voice's language;
  - eSpeak's `;` (the y-like glide it inserts between a front vowel and the next vowel, as in
    "the_attic") has no TIMIT phone and is merged into the phone before it; a phone whose
    event has no length (eSpeak folds some post-vocalic `l` into the vowel before) is left out;
  - TIMIT's finer labels (`ax-h`, `hv`, `nx`, `eng`, `epi`, `ux`) are never produced: eSpeak
    does not make those distinctions, so the 61-set is not fully used (the 39-set nearly is).
`.WRD` holds the manifest's `word_starts` and `word_ends`: each word from its first phone's start
to its last phone's end, as measured (words eSpeak speaks as one, like "there were", are cut
by pronunciation; see asr/data/synth.py). `.TXT` holds the sentence.

Speakers: the training voices are cut into pseudo-speakers of UTTERANCES_PER_SPEAKER sentences
each (named like TIMIT speakers, sex letter first, all under TRAIN); the held-out voices speak
as the 50 standard dev speakers (dev) and the 24 core-test speakers (test), matched by sex,
under TEST, so `asr prepare timit` finds the standard split.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from asr.audio import SAMPLE_RATE
from asr.data.manifest import Utterance, read_manifest

UTTERANCES_PER_SPEAKER = 10  # TIMIT has 10 sentences per speaker

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


def _sample_indices(utterance: Utterance, key: str, num_samples: int) -> list[int]:
    """The utterance's `key` times (s) as sample indices at SAMPLE_RATE, clipped to the audio."""
    return [min(round(t * SAMPLE_RATE), num_samples) for t in utterance.extra.get(key, [])]


def timit_segments(utterance: Utterance, audio: np.ndarray) -> list[tuple[int, int, str]]:
    """(start, end, phone) in samples at 16 kHz covering the whole of `audio` (samples,), from the
    utterance's eSpeak `phones`, `phone_times` and `phone_ends`, as described in the module docstring."""
    symbols = (utterance.phones or "").split()
    num_samples = audio.size
    starts = _sample_indices(utterance, "phone_times", num_samples)
    ends = _sample_indices(utterance, "phone_ends", num_samples)
    if not symbols or not len(symbols) == len(starts) == len(ends):
        raise PhoneMappingError(f"{utterance.id}: needs eSpeak `phones` and as many `phone_times` and `phone_ends`")
    rhotic = (utterance.speaker or "").startswith("en-us")
    segments: list[tuple[int, int, str]] = []
    for symbol, start, end in zip(symbols, starts, ends):
        timit = espeak_to_timit(symbol, rhotic, where=utterance.id)
        if end <= start:  # an event with no length
            continue
        silence_start = segments[-1][1] if segments else 0
        if start > silence_start:
            segments.append((silence_start, start, "pau" if segments else "h#"))
        if not timit:  # a glide with no TIMIT phone
            if segments:
                s, _, p = segments[-1]
                segments[-1] = (s, end, p)
            continue
        edges = np.linspace(start, end, len(timit) + 1).round().astype(int)
        segments.extend((int(a), int(b), p) for a, b, p in zip(edges[:-1], edges[1:], timit) if b > a)
    if segments[-1][1] < num_samples:
        segments.append((segments[-1][1], num_samples, "h#"))
    return segments


def word_segments(utterance: Utterance, num_samples: int) -> list[tuple[int, int, str]]:
    """(start, end, word) in samples at 16 kHz from the utterance's `words`, `word_starts` and `word_ends`."""
    words = utterance.extra.get("words", [])
    starts = _sample_indices(utterance, "word_starts", num_samples)
    ends = _sample_indices(utterance, "word_ends", num_samples)
    if not words or not len(words) == len(starts) == len(ends):
        raise PhoneMappingError(f"{utterance.id}: needs `words` and as many `word_starts` and `word_ends`")
    return list(zip(starts, ends, words))


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
            words = word_segments(u, audio.size)
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
