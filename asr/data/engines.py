"""Text-to-speech engines as TEST sources: the same sentences spoken by synthesizers the model
never heard, to measure how far a model trained on eSpeak NG carries (scripts/bench_voices.py).
They never make training data.

    Engine             what each engine gives: `name`, `voices()` (what is installed), `speak(text, voice)`
                       (float32 (samples,) at SAMPLE_RATE), `available()`
    ESpeakNG           the built-in corpus' engine (asr.data.synth): its stock English accents and variants
    ESpeak             eSpeak 1.48, NG's predecessor (Debian `espeak`): its English accents
    Flite              CMU Flite (Debian `flite`): kal (diphone, 8 kHz), kal16, awb, rms, slt (clustergen,
                       from CMU ARCTIC recordings)
    Festival           Festival's `text2wave` (Debian `festival` + festvox-* voices): its English voices
    ENGINES            name -> engine class
    find_engines       the installed engines among some names, and a line for each one that is not
    EngineError        an engine failed: names the engine, the voice and the text
    UnknownVoiceError  an EngineError for a voice the engine does not have

Looked for on Debian bookworm (main), 2026-12-06: rhvoice / rhvoice-english, libttspico-utils
(SVOX Pico) and mbrola voices are not there (contrib / non-free or not packaged); nothing on
PyPI speaks English offline without fetching a model at run time.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np

from asr.audio import SAMPLE_RATE, AudioError, load_audio
from asr.data.voices import ACCENTS as DRAWN_ACCENTS

TIMEOUT_S = 120  # s, one sentence through one engine's process


class EngineError(RuntimeError):
    """A text-to-speech engine failed; the message names the engine, the voice and the text."""

    def __init__(self, engine: str, voice: str, text: str, reason: str):
        self.engine, self.voice, self.text = engine, voice, text
        super().__init__(f"{engine}: voice {voice!r}: {reason} (text {text!r})")


class UnknownVoiceError(EngineError):
    """A voice the engine does not have."""


class Engine:
    """One text-to-speech engine. Subclasses set `name` and `install` and give `available`,
    `_list_voices` and `_speak`."""

    name: ClassVar[str]
    install: ClassVar[str]  # what to install where it is missing

    def __init__(self) -> None:
        self._voices: list[str] | None = None

    @classmethod
    def available(cls) -> bool:
        raise NotImplementedError

    def voices(self) -> list[str]:
        """The voices installed, in the engine's order."""
        if self._voices is None:
            self._voices = self._list_voices()
        return list(self._voices)

    def speaker(self, voice: str) -> str:
        """The `speaker` a manifest row spoken by `voice` carries: the built-in corpus writes
        eSpeak NG's voice names as they are; other engines' voices are prefixed with the engine."""
        return f"{self.name}/{voice}"

    def speak(self, text: str, voice: str) -> np.ndarray:
        """`text` spoken by `voice`: float32 (samples,) at SAMPLE_RATE. Raises UnknownVoiceError or
        EngineError naming the engine, voice and text."""
        if not text.strip():
            raise EngineError(self.name, voice, text, "empty text")
        self._check_voice(voice, text)
        audio = self._speak(text, voice)
        if audio.size == 0 or not np.any(audio):
            raise EngineError(self.name, voice, text, "spoke silence")
        return audio

    def _check_voice(self, voice: str, text: str) -> None:
        # The command-line engines fall back to a default voice (Flite) or print an error and exit 0
        # (Festival) on a voice they lack, so the name is checked here.
        if voice not in self.voices():
            raise UnknownVoiceError(self.name, voice, text, f"no such voice (installed: {', '.join(self.voices()) or 'none'})")

    def _list_voices(self) -> list[str]:
        raise NotImplementedError

    def _speak(self, text: str, voice: str) -> np.ndarray:
        raise NotImplementedError

    def _run(self, command: list[str], voice: str, text: str) -> str:
        """Run one engine command; its stdout + stderr, or EngineError."""
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise EngineError(self.name, voice, text, f"{command[0]} failed: {e}") from e
        output = done.stdout + done.stderr
        if done.returncode != 0:
            last = output.strip().splitlines()[-1:] or ["no output"]
            raise EngineError(self.name, voice, text, f"{command[0]} exited with {done.returncode}: {last[0]}")
        return output

    def _read(self, path: Path, voice: str, text: str) -> np.ndarray:
        """The engine's output file at SAMPLE_RATE (soxr resamples, e.g. Flite's 8-kHz kal)."""
        try:
            return load_audio(path, SAMPLE_RATE)
        except AudioError as e:
            raise EngineError(self.name, voice, text, f"unreadable output: {e}") from e


class ESpeakNG(Engine):
    """eSpeak NG through `asr.data.synth.synthesize` (the `espeakng-loader` wheel), at its default
    rate and pitch. Voices: each stock English accent alone, and the two the built-in corpus uses
    ("en-us", "en") with each plain male and female variant; `speak` takes any name eSpeak NG knows."""

    name = "espeak-ng"
    install = "pip install espeakng-loader"
    ACCENTS = tuple(DRAWN_ACCENTS)  # every English accent of eSpeak NG, as voices are drawn in
    VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5")  # <data>/voices/!v/

    @classmethod
    def available(cls) -> bool:
        return importlib.util.find_spec("espeakng_loader") is not None

    def speaker(self, voice: str) -> str:
        return voice  # synth.py's manifests name the speaker by its voice

    def _check_voice(self, voice: str, text: str) -> None:
        pass  # eSpeak itself says which names it lacks

    def _list_voices(self) -> list[str]:
        return [*self.ACCENTS, *(f"{accent}+{v}" for accent in ("en-us", "en") for v in self.VARIANTS)]

    def _speak(self, text: str, voice: str) -> np.ndarray:
        from asr.data.synth import SynthError, VoiceError, synthesize

        try:
            return synthesize(text, voice).audio
        except VoiceError as e:
            raise UnknownVoiceError(self.name, voice, text, str(e)) from e
        except SynthError as e:
            raise EngineError(self.name, voice, text, str(e)) from e


class ESpeak(Engine):
    """eSpeak 1.48 (Debian `espeak`), NG's predecessor, through its command line: its English
    accents, leaving out the MBROLA ones (they need the non-free `mbrola`)."""

    name = "espeak"
    install = "apt-get install espeak"

    @classmethod
    def available(cls) -> bool:
        if shutil.which("espeak") is None:
            return False
        try:  # espeak-ng's compatibility package installs an `espeak` that is NG
            version = subprocess.run(["espeak", "--version"], capture_output=True, text=True, timeout=TIMEOUT_S).stdout
        except (OSError, subprocess.TimeoutExpired):
            return False
        return version.startswith("eSpeak text-to-speech")

    def _list_voices(self) -> list[str]:
        listing = self._run(["espeak", "--voices=en"], "", "").splitlines()[1:]
        # columns: Pty Language Age/Gender VoiceName File [Other Languages]; File names the voice for -v
        files = [line.split()[4] for line in listing if len(line.split()) >= 5]
        return list(dict.fromkeys(Path(f).name for f in files if not f.startswith("mb/") and f != "default"))

    def _speak(self, text: str, voice: str) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="espeak_") as folder:
            out = Path(folder) / "out.wav"
            self._run(["espeak", "-v", voice, "-w", str(out), "--", text], voice, text)
            return self._read(out, voice, text)


class Flite(Engine):
    """CMU Flite's command line (Debian `flite`). `awb_time` is left out: a limited-domain voice
    that speaks only the time of day."""

    name = "flite"
    install = "apt-get install flite"
    LIMITED_DOMAIN = ("awb_time",)

    @classmethod
    def available(cls) -> bool:
        return shutil.which("flite") is not None

    def _list_voices(self) -> list[str]:
        output = self._run(["flite", "-lv"], "", "")  # "Voices available: kal awb_time kal16 awb rms slt"
        return [v for v in output.split(":", 1)[-1].split() if v not in self.LIMITED_DOMAIN]

    def _speak(self, text: str, voice: str) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="flite_") as folder:
            out = Path(folder) / "out.wav"
            self._run(["flite", "-voice", voice, "-t", text, "-o", str(out)], voice, text)
            return self._read(out, voice, text)


class Festival(Engine):
    """Festival's `text2wave` (Debian `festival`; voices from festvox-kallpc16k, festvox-kdlpc16k,
    festvox-us-slt-hts): its English voices (those under voices/english/ and voices/us/)."""

    name = "festival"
    install = "apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"
    ENGLISH = ("english", "us", "british")  # folders under festival's voices/ that hold English voices
    _LIST = '(begin (voice.list) (mapcar (lambda (v) (format t "%s %s\\n" (car v) (cdr v))) voice-locations))'

    @classmethod
    def available(cls) -> bool:
        return shutil.which("text2wave") is not None and shutil.which("festival") is not None

    def _list_voices(self) -> list[str]:
        voices = []
        for line in self._run(["festival", "-b", self._LIST], "", "").splitlines():
            name, _, path = line.partition(" ")  # "kal_diphone /usr/share/festival/voices/english/kal_diphone/"
            if path and Path(path.strip()).parent.name in self.ENGLISH:
                voices.append(name)
        return voices

    def _speak(self, text: str, voice: str) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="festival_") as folder:
            source, out = Path(folder) / "text.txt", Path(folder) / "out.wav"
            source.write_text(text + "\n", encoding="utf-8")
            output = self._run(["text2wave", "-eval", f"(voice_{voice})", "-o", str(out), str(source)], voice, text)
            if "SIOD ERROR" in output or not out.is_file():  # festival exits 0 after a Scheme error
                raise EngineError(self.name, voice, text, output.strip().splitlines()[-1] if output.strip() else "no audio written")
            return self._read(out, voice, text)


ENGINES: dict[str, type[Engine]] = {e.name: e for e in (ESpeakNG, ESpeak, Flite, Festival)}


def find_engines(names: list[str] | None = None) -> tuple[list[Engine], list[str]]:
    """The installed engines among `names` (default: every one in ENGINES), in that order, and
    one line for each that is not installed (or has no English voice), saying what to install.
    ValueError for a name that is no engine."""
    names = list(ENGINES) if names is None else names
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engine(s) {', '.join(unknown)}: choose from {', '.join(ENGINES)}")
    engines, skipped = [], []
    for name in names:
        cls = ENGINES[name]
        if not cls.available():
            skipped.append(f"{name}: not installed, skipped ({cls.install})")
        elif not (engine := cls()).voices():
            skipped.append(f"{name}: installed without an English voice, skipped ({cls.install})")
        else:
            engines.append(engine)
    return engines, skipped
