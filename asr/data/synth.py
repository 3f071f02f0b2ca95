"""The built-in corpus: English sentences spoken by eSpeak NG, with held-out voices and sentences.

eSpeak NG is a formant synthesizer: it speaks any text in a few milliseconds, so a corpus of
thousands of utterances is made in seconds with no download. The `espeakng-loader` wheel carries
the library and its voice data; we drive the C API (speak_lib.h, API revision 12) with ctypes.

The corpus is built to test generalization, not memorization:
  - train uses TRAIN_VOICES; dev and test use only HELDOUT_VOICES (unseen speakers);
  - every sentence is unique across the three splits (unseen sentences);
  - the sentence generator (asr/data/sentences.py) deals its vocabulary in shuffled passes, so a
    corpus of ~3000 utterances uses every VOCABULARY word in train: test words are known, test
    sentences are not.

Each utterance records the phones eSpeak actually spoke, when each one starts and ends, and the
same for every word, all taken from the synthesizer's own phoneme events (see `synthesize`):
  - a phone starts at its event and ends where the next phone starts; before one of eSpeak's
    pauses and at the end, it ends where its sound stops (the last sample above SILENCE_LEVEL
    before the pause's event). The silence eSpeak puts before a stop's burst (its closure) or
    at a word's onset lies before that phone's event, so it falls in the phone before;
  - eSpeak folds some post-vocalic `l` into the vowel before it; that `l`'s event then has no
    length (start == end: 316 of 123,264 phones in the 3000-utterance corpus, seed 0);
  - every phoneme event names the word it belongs to (its text position), which gives each
    phone its word, except where eSpeak speaks two words as one dictionary entry ("there were",
    "in the", "for the", "from the": 688 pairs among that corpus' 32,411 words). Those phones
    are cut between the words by matching each word's own pronunciation (`_split_fused`);
    every such cut in that corpus is the only best one. Checked on that corpus: 95 % of the
    words get exactly the phones eSpeak gives the word on its own, the rest are within 2 edits
    (reductions such as "the" before a vowel, flaps, linking r);
  - a word spans its phones: from its first phone's start to its last phone's end.
"""

from __future__ import annotations

import bisect
import ctypes
import itertools
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from asr.audio import SAMPLE_RATE
from asr.data.manifest import Utterance, write_manifest
from asr.data.sentences import Deck, generate_sentences
from asr.data.voices import UTTERANCES_PER_VOICE, VOICE_SETS, VoiceOverlay, VoiceSpec, draw_voices

SPLITS = ("train", "dev", "test")

# eSpeak names: "<language voice>+<variant>". The language voice "en" is English (Great Britain);
# eSpeak does not accept "en-gb" as a name. Variants live in <data>/voices/!v/; only the plain
# male (m*) and female (f*) ones are used, not whisper, croak or the robotic ones.
TRAIN_VOICES: tuple[str, ...] = (
    "en-us+m1", "en-us+m2", "en-us+m3", "en-us+m4", "en-us+f1", "en-us+f2", "en-us+f3",
    "en+m1", "en+m2", "en+m3", "en+f1", "en+f2",
)  # fmt: skip
HELDOUT_VOICES: tuple[str, ...] = ("en-us+m7", "en-us+f4", "en+m6")  # dev and test only
# Who speaks train: VOICE_SETS (asr/data/voices.py). Dev and test always use HELDOUT_VOICES, so
# test WER means the same thing whichever trained the model.

RATE_WPM = (140, 200)  # words per minute, drawn per utterance
# eSpeak accepts 80..450 wpm, but from 450 on it speeds speech up with `sonic`, whose output no
# longer matches the phoneme events' sample positions (checked with espeak-ng 1.52).
RATE_LIMITS = (80, 449)
PITCH = (30, 70)  # eSpeak's base pitch control, 0..100 (50 = the voice's own)
PITCH_RANGE = (35, 65)  # eSpeak's intonation range control, 0..100 (50 = the voice's own)
PAD_SECONDS = (0.05, 0.15)  # s of silence added before and after the speech, drawn per side
HELDOUT_FRACTION = 0.05  # of num_utterances, for dev and again for test
MIN_HELDOUT = 3  # utterances in dev and in test, however small the corpus
SHARD_SIZE = 250  # utterances synthesized per fresh worker process (see synthesize_corpus)
SILENCE_LEVEL = 2e-3  # |sample| (full scale 1.0) below this, about -54 dBFS, is silence: where sound stops


class VoiceError(ValueError):
    """An eSpeak voice name that does not exist; the message names it."""


class SynthError(RuntimeError):
    """eSpeak NG failed to load, initialize or speak."""


# ---------------------------------------------------------------------------------------------
# eSpeak NG through ctypes. Constants and structs follow speak_lib.h (espeak-ng 1.52).

_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: return audio through the callback, then return
_INITIALIZE_PHONEME_EVENTS = 0x0001  # options bit 0: report espeakEVENT_PHONEME events
_BUFFER_MS = 1000  # audio per callback; longer buffers mean fewer Python callbacks
_CHARS_UTF8 = 1  # espeak_Synth and espeak_TextToPhonemes: text is UTF-8
_PHONEME_SEPARATOR = "|"  # espeak_TextToPhonemes puts it between a word's phonemes (bits 8-23 of phonememode)
_POS_CHARACTER = 1  # espeak_POSITION_TYPE
_EE_OK = 0
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4  # espeak_PARAMETER


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),  # WORD and SENTENCE events
        ("name", ctypes.c_char_p),  # MARK and PLAY events
        ("string", ctypes.c_char * 8),  # PHONEME events: the mnemonic, NUL-terminated unless 8 long
    ]


class _Event(ctypes.Structure):
    # espeak_EVENT. On x86-64 the void* aligns to offset 24 and the union to 32: 40 bytes in all.
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # characters from the start of the text
        ("length", ctypes.c_int),  # word length in characters, WORD events
        ("audio_position", ctypes.c_int),  # ms into the output (rounded)
        ("sample", ctypes.c_int),  # samples into the output of this espeak_Synth call
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    # The leading fields of espeak_VOICE, all we read.
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p)]


# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events)
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class Phone(NamedTuple):
    symbol: str  # eSpeak phoneme mnemonic without stress marks, e.g. "aU", "dZ", "@"
    start: float  # s from the start of the returned samples
    end: float  # s; the next phone's start, or where the sound stops before a pause (module docstring)
    word: int  # index of its word in text.split()


class Word(NamedTuple):
    text: str
    start: float  # s: its first phone's start
    end: float  # s: its last phone's end
    certain: bool  # False only where eSpeak fused it with a neighbour and no cut between them is best


class Speech(NamedTuple):
    audio: np.ndarray  # float32, (samples,)
    phones: list[Phone]  # pauses left out
    words: list[Word]  # one per word of text.split()


class _ESpeak:
    """One initialized eSpeak NG library. eSpeak keeps its state in C globals, so there is one
    per process (`_engine()`), used under `_LOCK`."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as e:
            raise SynthError("the built-in corpus needs eSpeak NG: pip install espeakng-loader") from e
        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
        except OSError as e:
            raise SynthError(f"cannot load eSpeak NG: {e}") from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_Voice)
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        # speak_lib.h asks for the folder holding espeak-ng-data; espeak-ng also takes that folder
        # itself. It gets an overlay of it, into which drawn voices are written (asr/data/voices.py).
        self.data_path = Path(espeakng_loader.get_data_path())
        self.overlay = VoiceOverlay(self.data_path)
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, str(self.overlay.path).encode(), _INITIALIZE_PHONEME_EVENTS
        )
        if rate <= 0:
            raise SynthError(f"espeak_Initialize failed with data at {self.data_path}")
        self.lib = lib
        self.sample_rate = rate  # Hz, 22050 for eSpeak's own voices
        self._chunks: list[bytes] = []  # int16 audio of the utterance being spoken
        self._phones: list[tuple[bytes, int, int]] = []  # (mnemonic, text position, sample) of its phoneme events
        self._callback = _SynthCallback(self._on_audio)  # kept alive: eSpeak holds only the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, num_samples: int, events) -> int:
        """eSpeak's SynthCallback: a chunk of int16 audio and the events in it, ended by type 0."""
        if wav and num_samples > 0:
            self._chunks.append(ctypes.string_at(wav, 2 * num_samples))
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                self._phones.append((events[i].id.string, events[i].text_position, events[i].sample))
            i += 1
        return 0  # 0 = continue synthesis

    def set_voice(self, voice: str | VoiceSpec) -> None:
        if isinstance(voice, VoiceSpec):
            self.overlay.add(voice)
            voice = voice.voice
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise VoiceError(f"eSpeak NG has no voice {voice!r} (names look like 'en-us' or 'en-us+m3')")
        # eSpeak silently ignores an unknown variant ("en-us+zz" speaks plain en-us): check it took.
        variant = voice.partition("+")[2]
        identifier = (self.lib.espeak_GetCurrentVoice().contents.identifier or b"").decode()
        if variant and not identifier.endswith("+" + variant):
            raise VoiceError(
                f"eSpeak NG has no voice variant {variant!r} in {voice!r}; "
                f"the variants are the files in {self.data_path / 'voices' / '!v'}"
            )

    def speak(
        self, text: str, rate_wpm: int, pitch: int, pitch_range: int, rand_seed: int
    ) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
        """int16 samples at self.sample_rate, shape (samples,), and per phoneme event, in order,
        (mnemonic, text position, sample). The text position is where the event's word starts,
        counting characters from 1; pauses at the end point past the text."""
        for parameter, value in ((_PARAM_RATE, rate_wpm), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range)):
            self.lib.espeak_SetParameter(parameter, value, 0)
        self.lib.espeak_ng_SetRandSeed(rand_seed)  # breathy variants (f2, f3) mix in eSpeak's noise
        self._chunks, self._phones = [], []
        data = text.encode()
        status = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != _EE_OK:
            raise SynthError(f"espeak_Synth returned {status} for {text!r}")
        samples = np.frombuffer(b"".join(self._chunks), dtype=np.int16)  # (samples,)
        return samples, [(symbol.decode(), position, sample) for symbol, position, sample in self._phones]

    def pronounce(self, word: str) -> list[str]:
        """The current voice's phonemes for `word` said on its own, stress marks stripped. Translates
        only (no audio is made), so it leaves what later utterances sound like untouched."""
        text = ctypes.create_string_buffer(word.encode())
        pointer = ctypes.c_void_p(ctypes.addressof(text))  # eSpeak advances it clause by clause, NULL at the end
        mode = ord(_PHONEME_SEPARATOR) << 8
        phonemes = []
        while pointer.value:
            result = self.lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, mode) or b""
            phonemes += result.decode().replace(" ", _PHONEME_SEPARATOR).split(_PHONEME_SEPARATOR)
        return [_strip_stress(p) for p in phonemes if p]


def _strip_stress(symbol: str) -> str:
    return symbol.lstrip("',")  # ' primary, , secondary stress


def _is_pause(symbol: str) -> bool:
    return symbol.startswith("_")  # "_" pause, "_:" long pause


def speech_end(audio: np.ndarray, start: int = 0, stop: int | None = None) -> int:
    """Index one past the last sample of audio[start:stop] louder than SILENCE_LEVEL; `start` if none is."""
    loud = np.flatnonzero(np.abs(audio[start:stop]) > SILENCE_LEVEL)
    return start + int(loud[-1]) + 1 if loud.size else start


def _phone_ends(events: list[tuple[str, int, int]], audio: np.ndarray) -> list[int]:
    """End sample of each phone event (pauses skipped), for native-rate float `audio` (samples,).
    A phone ends where the next event starts; where that is a pause, or there is none, at the
    last sample above SILENCE_LEVEL before it. The pause's event, not the level alone, bounds
    it: the echo of some voices (en+m2, en-us+f2, ...) rings on up to ~140 ms into the pause."""
    ends = []
    for k, (symbol, _, start) in enumerate(events):
        if _is_pause(symbol):
            continue
        stop = events[k + 1][2] if k + 1 < len(events) else audio.size
        if k + 1 == len(events) or _is_pause(events[k + 1][0]):
            sound_stop = speech_end(audio, start, stop)
            stop = sound_stop if sound_stop > start else stop  # a silent phone keeps its whole span
        ends.append(stop)
    return ends


_VOWEL_INITIALS = frozenset("@03aeiouAEIOUV")  # eSpeak's English vowel mnemonics start with one of these


def _phone_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Edit distance between phone sequences: insertion or deletion 1, vowel for vowel or consonant
    for consonant 1, vowel for consonant 2."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        diagonal, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            substitute = 0 if x == y else 1 if (x[0] in _VOWEL_INITIALS) == (y[0] in _VOWEL_INITIALS) else 2
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + substitute)
    return row[-1]


def _split_fused(phones: Sequence[str], pronunciations: Sequence[Sequence[str]]) -> tuple[list[int], bool]:
    """Cut the phones eSpeak spoke for several words as one dictionary entry into one run per word:
    the cut whose runs are closest (`_phone_distance`) to each word's pronunciation on its own.
    ("f 3 D @2" for "for the" -> "f 3 | D @2", against "f O@" and "D @2".)
    Returns the number of phones per word, and whether that cut is the only best one."""
    num_phones, num_words = len(phones), len(pronunciations)
    if num_phones < num_words:
        spoken = " ".join(phones)
        raise SynthError(f"eSpeak spoke {num_words} words as {num_phones} phones {spoken!r}: cannot give each one")
    costs = []
    for cuts in itertools.combinations(range(1, num_phones), num_words - 1):
        edges = (0, *cuts, num_phones)
        cost = sum(_phone_distance(phones[a:b], p) for a, b, p in zip(edges, edges[1:], pronunciations))
        costs.append((cost, [b - a for a, b in zip(edges, edges[1:])]))
    costs.sort(key=lambda c: c[0])  # stable: among equal costs, the earliest cut
    unique = len(costs) == 1 or costs[1][0] > costs[0][0]
    return costs[0][1], unique


def _assign_words(
    text: str, events: list[tuple[str, int, int]], pronounce: Callable[[str], list[str]]
) -> tuple[list[int], list[bool]]:
    """The word (index into text.split()) of each phone event (pauses skipped), and per word
    whether that is certain. Each event's text position names its word; words eSpeak spoke
    fused with the word before carry no position of their own and are cut out by `_split_fused`."""
    words = text.split()
    word_offsets, offset = [], 0  # character offset of each word
    for word in words:
        offset = text.index(word, offset)
        word_offsets.append(offset)
        offset += len(word)
    owners = [
        max(bisect.bisect_right(word_offsets, position - 1) - 1, 0)
        for symbol, position, _ in events
        if not _is_pause(symbol)
    ]  # eSpeak counts text positions from 1
    if owners != sorted(owners):
        raise SynthError(f"eSpeak's phoneme events for {text!r} go back to an earlier word")
    phones = [_strip_stress(symbol) for symbol, _, _ in events if not _is_pause(symbol)]
    named = sorted(set(owners))  # the word each run of phones names
    bounds = [0, *named[1:], len(words)]  # run k speaks words bounds[k]:bounds[k + 1] (any before the first too)
    certain = [True] * len(words)
    for k, word_named in enumerate(named):
        first, last = bounds[k], bounds[k + 1]
        if last - first == 1:
            continue
        run = [i for i, owner in enumerate(owners) if owner == word_named]
        counts, unique = _split_fused([phones[i] for i in run], [pronounce(words[w]) for w in range(first, last)])
        done = 0
        for word, count in enumerate(counts, start=first):
            for i in run[done : done + count]:
                owners[i] = word
            certain[word] = unique
            done += count
    return owners, certain


_LOCK = threading.Lock()
_ENGINE: _ESpeak | None = None


def _engine() -> _ESpeak:
    """The process's eSpeak, initialized on first use. Call with _LOCK held."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _ESpeak()
    return _ENGINE


def synthesize(
    text: str,
    voice: str | VoiceSpec = "en-us",
    rate_wpm: int = 175,
    pitch: int = 50,
    *,
    pitch_range: int = 50,
    rand_seed: int = 0,
    sample_rate: int = SAMPLE_RATE,
) -> Speech:
    """Speak `text` with eSpeak NG voice `voice`: a name (e.g. "en-us+m3") or a drawn voice
    (asr/data/voices.py).

    rate_wpm: words per minute (RATE_LIMITS); pitch, pitch_range: eSpeak's 0..100 controls (50 is
    the voice's own); rand_seed seeds the noise of breathy voices.
    Returns Speech: float32 `audio` of shape (samples,) at `sample_rate`; the `phones` spoken
    (pauses left out, stress marks stripped), each with its start, end (s) and word; and the
    `words` of text.split() with their start and end (s), as the module docstring describes.
    eSpeak adds ~10 ms of silence at each end. Raises VoiceError naming an unknown voice.

    eSpeak carries a little state from one utterance to the next (its pitch-flutter position,
    `static int Flutter_ix` in wavegen.c, is never reset), so the same call can come out a few
    samples longer or shorter depending on what this process spoke before;
    `synthesize_corpus` runs each shard in a fresh process to stay byte-reproducible.
    """
    import soxr

    if not text.strip():
        raise ValueError("synthesize: empty text")
    controls = {"rate_wpm": (rate_wpm, RATE_LIMITS), "pitch": (pitch, (0, 100)), "pitch_range": (pitch_range, (0, 100))}
    for name, (value, (low, high)) in controls.items():
        if not low <= value <= high:
            raise ValueError(f"synthesize: {name}={value} is outside {low}..{high}")
    with _LOCK:
        engine = _engine()
        engine.set_voice(voice)
        samples, events = engine.speak(text, rate_wpm, pitch, pitch_range, rand_seed)
        owners, certain = _assign_words(text, events, engine.pronounce)
    native_rate = engine.sample_rate
    audio = samples.astype(np.float32) / 32768.0  # (samples,) at native_rate
    ends = _phone_ends(events, audio)
    starts = [sample for symbol, _, sample in events if not _is_pause(symbol)]
    symbols = [_strip_stress(symbol) for symbol, _, _ in events if not _is_pause(symbol)]
    phones = [
        Phone(symbol, start / native_rate, end / native_rate, owner)
        for symbol, start, end, owner in zip(symbols, starts, ends, owners)
    ]
    words = [
        Word(word, min(p.start for p in mine), max(p.end for p in mine), certain[w])
        for w, word in enumerate(text.split())
        for mine in [[p for p in phones if p.word == w]]
    ]
    if native_rate != sample_rate:
        audio = soxr.resample(audio, native_rate, sample_rate).astype(np.float32, copy=False)  # (samples,)
    return Speech(audio, phones, words)


# ---------------------------------------------------------------------------------------------
# The corpus.


@dataclass(frozen=True)
class _Job:
    """Everything needed to speak and file one utterance; the corpus plan is a list of these."""

    id: str
    wav: str  # absolute path
    text: str
    voice: str | VoiceSpec  # a stock eSpeak voice name or a drawn voice
    rate_wpm: int
    pitch: int
    pitch_range: int
    rand_seed: int
    pad_before: float  # s of silence before the speech
    pad_after: float  # s of silence after it


def _split_sizes(num_utterances: int) -> dict[str, int]:
    num_heldout = max(MIN_HELDOUT, round(num_utterances * HELDOUT_FRACTION))
    num_train = num_utterances - 2 * num_heldout
    if num_train < 1:
        raise ValueError(f"num_utterances={num_utterances} is too small: dev and test need {MIN_HELDOUT} each")
    return {"train": num_train, "dev": num_heldout, "test": num_heldout}


def train_voices(voices: str, num_train: int, seed: int) -> list[str | VoiceSpec]:
    """The train split's speakers for voice set `voices` (VOICE_SETS)."""
    if voices not in VOICE_SETS:
        raise ValueError(f"voices must be one of {', '.join(VOICE_SETS)}, got {voices!r}")
    stock: list[str | VoiceSpec] = list(TRAIN_VOICES) if voices != "drawn" else []
    count = max(1, round(num_train / UTTERANCES_PER_VOICE)) if voices != "stock" else 0
    return stock + list(draw_voices(count, seed))


def _plan_corpus(out_dir: Path, num_utterances: int, seed: int, voices: str = "stock") -> list[_Job]:
    """The whole corpus as jobs, in split order, from one seeded generator: same seed, same plan.
    Drawn voices come from a stream of their own, so the sentences are the same for any `voices`."""
    rng = np.random.default_rng(seed)
    sizes = _split_sizes(num_utterances)
    sentences = iter(generate_sentences(num_utterances, rng))  # distinct, so no split shares one
    speakers = train_voices(voices, sizes["train"], seed)
    jobs = []
    for split in SPLITS:
        voices_deck = Deck(speakers if split == "train" else HELDOUT_VOICES, rng)  # balanced voices
        for index in range(sizes[split]):
            utt_id = f"{split}-{index:05d}"
            jobs.append(
                _Job(
                    id=utt_id,
                    wav=str(out_dir / "wav" / split / f"{utt_id}.wav"),
                    text=next(sentences),
                    voice=voices_deck.deal(),
                    rate_wpm=int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)),
                    pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
                    pitch_range=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
                    rand_seed=int(rng.integers(2**31)),
                    pad_before=round(float(rng.uniform(*PAD_SECONDS)), 3),
                    pad_after=round(float(rng.uniform(*PAD_SECONDS)), 3),
                )
            )
    return jobs


def _synthesize_shard(jobs: list[_Job]) -> list[Utterance]:
    """Speak and write one shard of the plan (run in a fresh process); return its manifest rows."""
    from asr.audio import write_audio

    utterances = []
    for job in jobs:
        speech, phones, words = synthesize(
            job.text, job.voice, job.rate_wpm, job.pitch, pitch_range=job.pitch_range, rand_seed=job.rand_seed
        )
        before = np.zeros(round(job.pad_before * SAMPLE_RATE), dtype=np.float32)
        after = np.zeros(round(job.pad_after * SAMPLE_RATE), dtype=np.float32)
        audio = np.clip(np.concatenate([before, speech, after]), -1.0, 1.0)  # (samples,); soxr can overshoot
        write_audio(job.wav, audio, SAMPLE_RATE, subtype="PCM_16")
        shift = before.size / SAMPLE_RATE  # s
        uncertain = [w for w, word in enumerate(words) if not word.certain]
        utterances.append(
            Utterance(
                id=job.id,
                audio=job.wav,
                duration=audio.size / SAMPLE_RATE,
                text=job.text,
                speaker=job.voice if isinstance(job.voice, str) else job.voice.voice,
                phones=" ".join(phone.symbol for phone in phones),
                extra={
                    # a word's times are its phones' own floats, so they round to the same 0.1 ms
                    "phone_times": [round(shift + phone.start, 4) for phone in phones],  # s
                    "phone_ends": [round(shift + phone.end, 4) for phone in phones],  # s
                    "phone_words": [phone.word for phone in phones],  # index into `words` of each phone's word
                    "words": [word.text for word in words],
                    "word_starts": [round(shift + word.start, 4) for word in words],  # s
                    "word_ends": [round(shift + word.end, 4) for word in words],  # s
                    **({"uncertain_words": uncertain} if uncertain else {}),
                    "rate_wpm": job.rate_wpm,
                    "pitch": job.pitch,
                },
            )
        )
    return utterances


def synthesize_corpus(
    out_dir: str | os.PathLike,
    num_utterances: int = 3000,
    seed: int = 0,
    progress: bool = True,
    num_workers: int | None = None,
    voices: str = "stock",
) -> dict[str, Path]:
    """Write out_dir/wav/<split>/<id>.wav (16 kHz mono PCM16) and out_dir/{train,dev,test}.jsonl.

    About 90 % train (spoken by `voices`: TRAIN_VOICES, drawn voices or both, see VOICE_SETS) and
    5 % each dev and test (HELDOUT_VOICES only), every sentence distinct. Drawn voices' files are
    written to out_dir/voices/<name> (eSpeak's variant format, asr/data/voices.py). Manifest rows
    carry `speaker` (the voice), `phones` (space-separated eSpeak mnemonics), `phone_times` and
    `phone_ends` (s), `phone_words` (the index in `words` of each phone's word), `words`
    (text.split()), `word_starts` and `word_ends` (s), all measured as the module docstring says;
    `uncertain_words` (indices) appears only in a row where eSpeak fused words that
    `_split_fused` could not cut unambiguously (none in the 3000-utterance corpus).
    Same seed -> byte-identical files.

    eSpeak's state drifts with what it has spoken, so the plan is cut into fixed shards of
    SHARD_SIZE and each shard is spoken by a fresh process: the output does not depend on
    `num_workers` (default: one per CPU) or on anything spoken before. As with any `spawn`
    multiprocessing, a script calling this needs an `if __name__ == "__main__":` guard.
    Returns {split: manifest path}.
    """
    from tqdm import tqdm

    from asr.fileio import atomic_write

    out_dir = Path(out_dir).resolve()
    jobs = _plan_corpus(out_dir, num_utterances, seed, voices)
    drawn = {job.voice.name: job.voice for job in jobs if isinstance(job.voice, VoiceSpec)}
    for name, spec in sorted(drawn.items()):
        with atomic_write(out_dir / "voices" / name) as f:
            f.write(spec.variant_text())
    shards = [jobs[i : i + SHARD_SIZE] for i in range(0, len(jobs), SHARD_SIZE)]
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    num_workers = max(1, min(num_workers, len(shards)))

    utterances: list[Utterance] = []
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited eSpeak state
    with (
        context.Pool(num_workers, maxtasksperchild=1) as pool,
        tqdm(total=len(jobs), desc="synth", unit="utt", disable=not progress) as bar,
    ):
        for shard_utterances in pool.imap(_synthesize_shard, shards):
            utterances.extend(shard_utterances)
            bar.update(len(shard_utterances))

    manifests = {}
    for split in SPLITS:  # written last, so a killed run never leaves a manifest naming missing audio
        manifests[split] = out_dir / f"{split}.jsonl"
        write_manifest(manifests[split], [u for u in utterances if u.id.startswith(split + "-")])
    return manifests
