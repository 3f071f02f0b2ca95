"""Procedural eSpeak NG voices: a new vocal tract, voice source and accent per speaker, drawn from a seed.

eSpeak NG's stock English variants are a dozen hand-written voice files (<data>/voices/!v/m1,
f2, ...). A model trained on a dozen voices hears only those: the demo model trained on eSpeak's
stock variants came out at 96-103 % WER on CMU Flite's voices speaking the same sentences. A
voice file is a short text (eSpeak's docs/voices.md) whose keywords set what a speaker is made
of, so instead of picking among twelve we write one per speaker:

  - the vocal tract: `formant N freq height width` for eSpeak's nine formant peaks, in percent
    of the language's own. A speaker's tract length scales every formant frequency together
    (shorter tracts, higher formants: the effect VTLP imitates), and each formant also moves a
    little on its own; heights and widths set how peaked and how loud each resonance is;
  - the voice source: `pitch` (base and top, Hz), `flutter` (pitch jitter), `roughness`,
    `breath` (aspiration noise per formant), `voicing` (voiced/unvoiced balance), `tone`
    (spectral tilt, amplitude at four frequencies), and which synthesizer: eSpeak's default
    formant synthesizer or one of the Klatt synthesizer's voicing sources (`klatt 1..6`);
  - the articulation: `consonants` (loudness of the consonants), `echo` (delay, amount);
  - the rhythm: `stressAdd` (ms added to the vowels of each stress level: unstressed,
    diminished, secondary, ..., stressed, tonic), `stressAmp` (their loudness), `intonation`
    (eSpeak's intonation styles 1-3);
  - the accent: the language voice the variant is applied to (`ACCENTS`): American, British
    (received pronunciation and the default), Scottish, Caribbean, New York, Lancastrian and
    West Midlands, each with its own phonemes and vowels.

`draw_voice(rng)` draws one; `VoiceSpec.variant_text()` writes it in eSpeak's format. The engine
(asr/data/synth.py) reads variants from a private overlay of eSpeak's data folder
(`VoiceOverlay`) into which each drawn voice is written, so the installed package is never
modified. The ranges below span eSpeak's own variants (m1-m8, f1-f5 and the named ones) and go
somewhat beyond them. That they stay intelligible is measured, not listened to: the demo model
trained on 270 drawn voices and the 12 stock ones reaches the same held-out test WER as on the
stock ones alone, and hears untrained eSpeak voices and accents far better
(docs/benchmarks.md#what-each-step-gave).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# eSpeak NG English language voices (lang/gmw/*), with the weight each gets in a draw. Names are
# as espeak_SetVoiceByName takes them (it lowercases).
ACCENTS: dict[str, float] = {
    "en-us": 0.35, "en": 0.15, "en-gb-x-rp": 0.1, "en-gb-scotland": 0.1, "en-029": 0.1,
    "en-us-nyc": 0.1, "en-gb-x-gbclan": 0.05, "en-gb-x-gbcwmd": 0.05,
}  # fmt: skip
RHOTIC_ACCENTS = ("en-us", "en-us-nyc", "en-gb-scotland")  # an r after a vowel is spoken
NUM_FORMANTS = 9  # eSpeak's formant peaks 0..8
KLATT_SHARE = 0.3  # of voices use the Klatt synthesizer (one of its 6 voicing sources)
VOICE_PREFIX = "asr-"  # variant file names; a voice is "<accent>+asr-<name>"
# Who speaks the built-in corpus' train split (asr/data/synth.py): "stock" = eSpeak's stock
# TRAIN_VOICES; "drawn" = voices drawn here, one per UTTERANCES_PER_VOICE train utterances;
# "both" = the two together.
VOICE_SETS = ("stock", "drawn", "both")
UTTERANCES_PER_VOICE = 10


@dataclass(frozen=True)
class VoiceSpec:
    """One speaker: an accent (a language voice in ACCENTS) and the variant file's settings."""

    name: str  # the variant's file name, VOICE_PREFIX + something unique in the corpus
    accent: str
    gender: str  # "male" or "female": eSpeak uses it only to pick a default variant
    pitch: tuple[int, int]  # Hz, base and top of the intonation range
    formants: tuple[tuple[int, int, int], ...]  # NUM_FORMANTS x (frequency %, height %, width %)
    tone: tuple[int, ...]  # (Hz, amplitude) x 4: the spectral envelope, eSpeak default 600 170 1200 135 2000 110 3000 110
    flutter: int
    roughness: int
    breath: tuple[int, ...]  # 8 values (0 = none) of aspiration noise per formant
    voicing: int  # %
    consonants: int  # %
    echo: tuple[int, int]  # ms, %
    klatt: int  # 0 = eSpeak's own formant synthesizer, 1..6 = a Klatt voicing source
    stress_add: tuple[int, ...]  # 8 values, ms added to each stress level's vowel length (levels 4, 5 unused)
    stress_amp: tuple[int, ...]  # 8 values, each stress level's vowel amplitude (eSpeak's default 16 16 20 20 20 24 24 22)
    intonation: int  # 1 (default), 2 (less), 3 (less, and a comma does not raise the pitch)

    @property
    def voice(self) -> str:
        """The eSpeak voice name to speak with: "<accent>+<name>"."""
        return f"{self.accent}+{self.name}"

    @property
    def rhotic(self) -> bool:
        return self.accent in RHOTIC_ACCENTS

    def variant_text(self) -> str:
        """The variant file eSpeak reads (voices/!v/<name>)."""
        lines = ["language variant", f"name {self.name}", f"gender {self.gender}", f"pitch {self.pitch[0]} {self.pitch[1]}"]
        lines += [f"formant {k} {f} {h} {w}" for k, (f, h, w) in enumerate(self.formants)]
        lines += ["tone " + " ".join(map(str, self.tone)), f"flutter {self.flutter}", f"roughness {self.roughness}"]
        if any(self.breath):
            lines.append("breath " + " ".join(map(str, self.breath)))
        lines += [f"voicing {self.voicing}", f"consonants {self.consonants}"]
        if self.echo[1] > 0:
            lines.append(f"echo {self.echo[0]} {self.echo[1]}")
        if self.klatt:
            lines.append(f"klatt {self.klatt}")
        lines += ["stressAdd " + " ".join(map(str, self.stress_add)), "stressAmp " + " ".join(map(str, self.stress_amp))]
        lines.append(f"intonation {self.intonation}")
        return "\n".join(lines) + "\n"


def draw_voice(rng: np.random.Generator, name: str) -> VoiceSpec:
    """A random speaker named `name` (VOICE_PREFIX is added): reproducible for the generator's state."""
    accents = list(ACCENTS)
    weights = np.array([ACCENTS[a] for a in accents])
    accent = accents[int(rng.choice(len(accents), p=weights / weights.sum()))]
    female = bool(rng.random() < 0.5)
    # A longer vocal tract lowers every formant together (adult men ~17 cm, women ~14.5 cm:
    # formants ~15 % apart); eSpeak's stock variants span 95-120 %.
    tract = rng.uniform(1.00, 1.24) if female else rng.uniform(0.86, 1.06)
    base = int(rng.uniform(135, 235) if female else rng.uniform(65, 135))  # Hz
    top = base + int(rng.uniform(0.25, 0.75) * base)
    formants = []
    for k in range(NUM_FORMANTS):
        frequency = 100 * tract * rng.uniform(0.95, 1.05) if k > 0 else 100 * rng.uniform(0.9, 1.25)  # F0 is the nasal/low peak
        formants.append((int(round(frequency)), int(rng.uniform(55, 130)), int(rng.uniform(60, 180))))
    tone_amps = np.array([170, 135, 110, 110]) * rng.uniform(0.7, 1.3, size=4)
    tone = tuple(int(v) for pair in zip((600, 1200, 2000, 3000), tone_amps.round()) for v in pair)
    breathy = rng.random() < 0.3
    breath = tuple(int(v) for v in rng.integers(0, 7, size=8)) if breathy else (0,) * 8
    echo = (int(rng.uniform(60, 150)), int(rng.uniform(0, 15))) if rng.random() < 0.3 else (0, 0)
    # eSpeak's variants add -20..10 ms to unstressed and -30..120 ms to stressed and tonic vowels
    unstressed, secondary, stressed, tonic = rng.uniform(-25, 15), rng.uniform(-25, 15), rng.uniform(-30, 50), rng.uniform(-30, 120)
    stress_add = tuple(int(v) for v in (unstressed, unstressed, secondary, secondary, 0, 0, stressed, tonic))
    stress_amp = tuple(int(round(v * rng.uniform(0.8, 1.25))) for v in (16, 16, 20, 20, 20, 24, 24, 22))
    return VoiceSpec(
        name=VOICE_PREFIX + name,
        accent=accent,
        gender="female" if female else "male",
        pitch=(base, top),
        formants=tuple(formants),
        tone=tone,
        flutter=int(rng.integers(0, 21)),
        roughness=int(rng.integers(0, 7)),
        breath=breath,
        voicing=int(rng.uniform(70, 160)),
        consonants=int(rng.uniform(70, 140)),
        echo=echo,
        klatt=int(rng.integers(1, 7)) if rng.random() < KLATT_SHARE else 0,
        stress_add=stress_add,
        stress_amp=stress_amp,
        intonation=int(rng.integers(1, 4)),
    )


def draw_voices(count: int, seed: int) -> list[VoiceSpec]:
    """`count` speakers named asr-<seed>-<i>, from their own stream of `seed` (the corpus plan's
    other draws do not move them)."""
    rng = np.random.default_rng([seed, 0x766F6963])  # "voic"
    return [draw_voice(rng, f"{seed}-{i:04d}") for i in range(count)]


class VoiceOverlay:
    """A private copy of eSpeak NG's data folder that drawn voices can be written into: symbolic
    links to every stock file, with a real voices/!v folder (where eSpeak looks up a "+variant")
    holding links to the stock variants beside the drawn ones. Removed at exit."""

    def __init__(self, data_path: str | os.PathLike) -> None:
        data_path = Path(data_path)
        self.path = Path(tempfile.mkdtemp(prefix="asr-espeak-"))
        atexit.register(shutil.rmtree, self.path, ignore_errors=True)
        for entry in data_path.iterdir():
            if entry.name != "voices":
                (self.path / entry.name).symlink_to(entry)
        for entry in (data_path / "voices").iterdir():
            if entry.name != "!v":
                (self.path / "voices").mkdir(exist_ok=True)
                (self.path / "voices" / entry.name).symlink_to(entry)
        self.variants = self.path / "voices" / "!v"
        self.variants.mkdir(parents=True, exist_ok=True)
        for entry in (data_path / "voices" / "!v").iterdir():
            (self.variants / entry.name).symlink_to(entry)
        self.written: dict[str, VoiceSpec] = {}  # variant files written, by name

    def add(self, spec: VoiceSpec) -> None:
        """Write `spec`'s variant file, unless it is there already (a voice speaks many utterances)."""
        if self.written.get(spec.name) != spec:
            (self.variants / spec.name).write_text(spec.variant_text())
            self.written[spec.name] = spec
