"""Procedural eSpeak NG voices (asr/data/voices.py): real synthesis, measured spectra, no mocks."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.cli import VOICE_SETS as CLI_VOICE_SETS
from asr.config import FeatureConfig
from asr.data import synth
from asr.data.manifest import read_manifest
from asr.data.synth import HELDOUT_VOICES, TRAIN_VOICES, synthesize, synthesize_corpus
from asr.data.voices import ACCENTS, NUM_FORMANTS, VOICE_PREFIX, draw_voices
from asr.features import FeatureExtractor

SENTENCE = "the old man walked to the market on tuesday morning"


def long_term_spectrum(audio: np.ndarray) -> np.ndarray:
    """Mean log-mel (40 bins) over the frames within 6 (natural log units) of the loudest: a voice's average
    spectral envelope, which the sentence's words move far less than the vocal tract does."""
    extractor = FeatureExtractor(FeatureConfig(kind="fbank", num_mel_bins=40)).eval()
    log_mel, frames = extractor.compute_log_mel(torch.from_numpy(audio)[None], torch.tensor([audio.size]))
    log_mel = log_mel[0, : int(frames)]
    energy = log_mel.mean(dim=1)
    return log_mel[energy > energy.max() - 6].mean(dim=0).numpy()


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_drawn_voices_are_reproducible_for_a_seed_and_differ_across_seeds():
    first = draw_voices(30, seed=5)
    assert first == draw_voices(30, seed=5)
    other = draw_voices(30, seed=6)
    assert all(a.variant_text().split("\n", 2)[2] != b.variant_text().split("\n", 2)[2] for a, b in zip(first, other))
    assert len({v.name for v in first + other}) == 60
    assert all(v.name.startswith(VOICE_PREFIX) for v in first)


def test_drawn_voices_span_accents_sexes_synthesizers_and_tracts():
    voices = draw_voices(300, seed=0)
    assert {v.accent for v in voices} == set(ACCENTS)
    assert {v.gender for v in voices} == {"male", "female"}
    assert {v.klatt for v in voices} == set(range(7))  # eSpeak's synthesizer and all 6 Klatt sources
    assert all(len(v.formants) == NUM_FORMANTS for v in voices)
    tracts = [np.mean([f for f, _, _ in v.formants[1:]]) for v in voices]  # % of the accent's formant frequencies
    assert min(tracts) < 90 and max(tracts) > 115
    for v in voices:
        text = v.variant_text()
        assert text.startswith("language variant\n") and text.count("\nformant ") == NUM_FORMANTS


def test_each_drawn_voice_sounds_different_and_a_voice_stays_itself():
    """The same sentence by 8 drawn voices: each voice at another rate and noise seed is nearer
    to itself in long-term spectrum than to any other voice, and two voices are typically far
    further apart than one voice from itself."""
    voices = draw_voices(8, seed=0)
    spectra = [long_term_spectrum(synthesize(SENTENCE, v, 175, 50).audio) for v in voices]
    again = [long_term_spectrum(synthesize(SENTENCE, v, 150, 50, rand_seed=7).audio) for v in voices]
    within = [distance(a, b) for a, b in zip(spectra, again)]
    between = [distance(spectra[i], spectra[j]) for i in range(8) for j in range(i + 1, 8)]
    for i in range(8):
        nearest_other = min(distance(again[i], spectra[j]) for j in range(8) if j != i)
        assert within[i] < nearest_other, (i, within[i], nearest_other)
    assert np.median(between) > 5 * np.median(within), (between, within)
    stock = [long_term_spectrum(synthesize(SENTENCE, v, 175, 50).audio) for v in TRAIN_VOICES[:6]]
    stock_median = np.median([distance(stock[i], stock[j]) for i in range(6) for j in range(i + 1, 6)])
    drawn_median = np.median([distance(spectra[i], spectra[j]) for i in range(8) for j in range(i + 1, 8)])
    assert drawn_median > stock_median  # more varied than eSpeak's own variants


def test_a_drawn_voice_is_applied_not_silently_ignored():
    voice = draw_voices(1, seed=1)[0]
    plain = synthesize(SENTENCE, voice.accent, 175, 50).audio
    drawn = synthesize(SENTENCE, voice, 175, 50).audio
    assert distance(long_term_spectrum(plain), long_term_spectrum(drawn)) > 0.5


@pytest.mark.parametrize("accent", sorted(ACCENTS))
def test_every_accent_speaks(accent):
    speech = synthesize("seven green boats", accent, 175, 50)
    assert speech.audio.size > 0.5 * 16000 and [w.text for w in speech.words] == ["seven", "green", "boats"]


def test_voice_sets_change_who_speaks_train_and_nothing_else(tmp_path):
    plans = {voices: synth._plan_corpus(tmp_path, 300, seed=0, voices=voices) for voices in synth.VOICE_SETS}
    texts = {voices: [job.text for job in jobs] for voices, jobs in plans.items()}
    assert texts["stock"] == texts["drawn"] == texts["both"]
    train = {voices: {str(job.voice) for job in jobs if job.id.startswith("train")} for voices, jobs in plans.items()}
    assert train["stock"] == set(TRAIN_VOICES)
    assert len(train["drawn"]) == round(270 / synth.UTTERANCES_PER_VOICE) and not train["drawn"] & set(TRAIN_VOICES)
    assert train["both"] >= set(TRAIN_VOICES) and len(train["both"]) == len(train["drawn"]) + len(TRAIN_VOICES)
    for jobs in plans.values():
        assert {job.voice for job in jobs if not job.id.startswith("train")} <= set(HELDOUT_VOICES)
    with pytest.raises(ValueError, match="voices must be one of"):
        synth._plan_corpus(tmp_path, 300, seed=0, voices="flite")
    assert CLI_VOICE_SETS == synth.VOICE_SETS


def test_drawn_voice_corpus_is_byte_reproducible_and_files_its_voices(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "SHARD_SIZE", 16)
    a = synthesize_corpus(tmp_path / "a", 40, seed=2, progress=False, num_workers=1, voices="drawn")
    synthesize_corpus(tmp_path / "b", 40, seed=2, progress=False, num_workers=2, voices="drawn")
    files = {root: {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} for root in (tmp_path / "a", tmp_path / "b")}
    assert files[tmp_path / "a"] == files[tmp_path / "b"]
    train = read_manifest(a["train"])
    names = {u.speaker.partition("+")[2] for u in train}
    assert all(name.startswith(VOICE_PREFIX) for name in names)
    assert names == {p.name for p in (tmp_path / "a" / "voices").iterdir()}
    for u in read_manifest(a["test"]):
        assert u.speaker in HELDOUT_VOICES


def test_the_layouts_refuse_drawn_voices(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "asr", "synth", str(tmp_path / "t"), "--layout", "timit", "--voices", "drawn", "--num-utterances", "40"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert result.returncode != 0 and "--voices drawn needs --layout manifest" in result.stderr
    assert not (tmp_path / "t").exists()
