"""Waveform augmentation and VTLP: each does what it says, reproducibly, and only in training."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.augment_wave import (
    WaveAugment,
    active_mask,
    colored_noise,
    mix_at_snr,
    mulaw_quantize,
    reverberate,
    telephone,
)
from asr.config import AugmentConfig, ConfigError, FeatureConfig
from asr.data.loader import UtteranceDataset, collate
from asr.data.manifest import Utterance
from asr.features import FeatureExtractor, mel_filterbank
from asr.text import CharTokenizer

RATE = 16000


def burst(seconds=1.0, lead=0.25, trail=0.25, seed=0) -> np.ndarray:
    """Speech-like noise bursts (two, 20 dB apart) between digital silence, on 10 ms blocks."""
    rng = np.random.default_rng(seed)
    body = rng.standard_normal(int(seconds * RATE)) * 0.1
    body[: len(body) // 2] *= 0.1  # a quieter first half: the active region is still all of it
    return np.concatenate([np.zeros(int(lead * RATE)), body, np.zeros(int(trail * RATE))]).astype(np.float32)


def band_energy(samples: np.ndarray, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    hz = np.fft.rfftfreq(len(samples), 1 / RATE)
    return float(spectrum[(hz >= low) & (hz < high)].sum())


def test_reverb_with_a_delay_line_gives_the_exact_echo():
    x = burst()
    delay, echo = 800, 0.5  # 50 ms, half as loud
    rir = np.zeros(delay + 1)
    rir[0], rir[delay] = 1.0, echo
    out = reverberate(x, rir)
    expected = x.astype(np.float64).copy()
    expected[delay:] += echo * x[:-delay]
    expected *= math.sqrt(np.mean(np.square(x, dtype=np.float64)) / np.mean(np.square(expected)))  # the input's level
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.abs(out[: int(0.25 * RATE)]).max() < 1e-9  # nothing arrives before the speech (FFT rounding aside): the direct path is lag 0


@pytest.mark.parametrize("kind", ["colored", "babble", "files"])
def test_noise_hits_the_requested_snr_over_the_speech(kind, tmp_path):
    x = burst()
    for i in range(4):
        sf.write(tmp_path / f"u{i}.wav", burst(seed=i + 1, lead=0.1), RATE)
    (tmp_path / "noise" / "music").mkdir(parents=True)
    sf.write(tmp_path / "noise" / "music" / "n.flac", 0.3 * np.random.default_rng(9).standard_normal(RATE // 2), 22050)
    config = AugmentConfig(noise_prob=1.0, noise_snr=[3.0, 17.0], noise_colored=float(kind == "colored"),
                           noise_babble=float(kind == "babble"), noise_files=float(kind == "files"),
                           noise_dir=str(tmp_path / "noise") if kind == "files" else "")
    dataset = UtteranceDataset([Utterance(f"u{i}", str(tmp_path / f"u{i}.wav"), 1.35, "a") for i in range(4)], CharTokenizer(), RATE)
    augment = WaveAugment(config, RATE, seed=1, num_utterances=4, load_utterance=dataset.load_audio)
    speech = x != 0
    snrs = []
    for index in range(6):
        out = augment(x, epoch=0, index=index)
        noise = out.astype(np.float64) - x
        snr = 10 * math.log10(np.mean(np.square(x[speech], dtype=np.float64)) / np.mean(np.square(noise[speech])))
        assert 3.0 - 1e-3 <= snr <= 17.0 + 1e-3
        assert np.std(noise[~speech]) > 0  # noise in the silence too
        snrs.append(snr)
    assert max(snrs) - min(snrs) > 1.0  # drawn, not fixed
    assert np.array_equal(active_mask(x, RATE), speech)  # what the SNR is measured over: the speech, both halves


def test_mix_at_snr_is_exact():
    x = burst()
    noise = colored_noise(len(x), 1.0, np.random.default_rng(0))
    out = mix_at_snr(x, noise, 10.0, RATE)
    speech = x != 0
    added = out.astype(np.float64) - x
    assert 10 * math.log10(np.mean(np.square(x[speech], dtype=np.float64)) / np.mean(np.square(added[speech]))) == pytest.approx(10.0, abs=1e-3)


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_colored_noise_falls_as_one_over_f_to_the_beta(beta):
    noise = colored_noise(RATE * 4, beta, np.random.default_rng(0))
    low, high = band_energy(noise, 500, 1000) / 500, band_energy(noise, 4000, 8000) / 4000  # per Hz
    slope = math.log10(low / high) / math.log10(5657 / 707)  # geometric band centres
    assert slope == pytest.approx(beta, abs=0.15)


def test_telephone_removes_energy_outside_300_to_3400_hz():
    x = (0.1 * np.random.default_rng(0).standard_normal(2 * RATE)).astype(np.float32)
    for mulaw in (False, True):
        out = telephone(x, RATE, mulaw)
        assert out.shape == x.shape
        inside = band_energy(out, 500, 3000) / 2500
        assert band_energy(out, 3600, 8000) / 4400 < 1e-3 * inside  # -30 dB per Hz
        assert band_energy(out, 20, 200) / 180 < 1e-3 * inside
        assert band_energy(out, 500, 3000) > 0.5 * band_energy(x, 500, 3000)
    assert mulaw_quantize(np.zeros(3))[0] == 0.0
    assert len(np.unique(mulaw_quantize(np.linspace(-1, 1, 400001)))) == 255


def test_gain_is_exact_and_drawn_per_utterance():
    x = burst()
    augment = WaveAugment(AugmentConfig(gain_db=[-6.0, 6.0]), RATE, seed=0)
    gains = []
    for index in range(5):
        out = augment(x, epoch=0, index=index)
        gain = out[x != 0] / x[x != 0]
        np.testing.assert_allclose(gain, gain[0], rtol=1e-6)
        gains.append(20 * math.log10(gain[0]))
    assert all(-6 <= g <= 6 for g in gains) and len(set(np.round(gains, 3))) == 5
    fixed = WaveAugment(AugmentConfig(gain_db=[-6.0, -6.0]), RATE, seed=0)(x, 0, 0)
    np.testing.assert_allclose(fixed, x * 10 ** (-6 / 20), rtol=1e-6)


def test_lowpass_cuts_above_its_cutoff():
    x = (0.1 * np.random.default_rng(0).standard_normal(2 * RATE)).astype(np.float32)
    out = WaveAugment(AugmentConfig(lowpass_prob=1.0, lowpass_hz=[3000.0, 3000.0]), RATE, seed=0)(x, 0, 0)
    assert band_energy(out, 5000, 8000) / 3000 < 1e-3 * band_energy(out, 500, 2000) / 1500


def every_augmentation(tmp_path=None) -> AugmentConfig:
    return AugmentConfig(noise_prob=0.5, telephone_prob=0.3, lowpass_prob=0.3, gain_db=[-6.0, 6.0], vtlp=[0.9, 1.1])


def test_same_seed_epoch_index_gives_the_same_audio_and_another_index_not(tmp_path):
    for i in range(3):
        sf.write(tmp_path / f"u{i}.wav", burst(seed=i), RATE)
    utts = [Utterance(f"u{i}", str(tmp_path / "u0.wav"), 1.5, "a") for i in range(3)]  # the same file three times
    config = every_augmentation()
    a = UtteranceDataset(utts, CharTokenizer(), RATE, seed=3, augment=config)
    b = UtteranceDataset(utts, CharTokenizer(), RATE, seed=3, augment=config)
    first = [a[i] for i in range(3)]
    assert all(torch.equal(first[i]["audio"], b[i]["audio"]) and first[i]["warp"] == b[i]["warp"] for i in (2, 0, 1))
    assert not torch.equal(first[0]["audio"], first[1]["audio"])
    assert first[0]["warp"] != first[1]["warp"]
    a.set_epoch(1)
    assert not torch.equal(a[0]["audio"], first[0]["audio"])
    batch = collate([first[0], first[2]])
    assert batch.warp is not None and batch.warp.tolist() == pytest.approx([first[0]["warp"], first[2]["warp"]])


def test_nothing_changes_without_augmentation_or_in_eval_mode(tmp_path):
    sf.write(tmp_path / "u.wav", burst(), RATE)
    utts = [Utterance(f"u{i}", str(tmp_path / "u.wav"), 1.5, "a") for i in range(3)]
    plain = UtteranceDataset(utts, CharTokenizer(), RATE)
    defaults = UtteranceDataset(utts, CharTokenizer(), RATE, augment=AugmentConfig())  # every default off
    for i in range(3):
        assert torch.equal(plain[i]["audio"], defaults[i]["audio"]) and "warp" not in defaults[i]
        assert torch.equal(plain[i]["audio"], torch.from_numpy(plain.load_audio(i)))
    extractor = FeatureExtractor(FeatureConfig(num_mel_bins=40))
    audio = plain[0]["audio"][None, :].repeat(2, 1)  # (2, samples)
    lengths = torch.tensor([audio.shape[1], audio.shape[1] - 3000])
    warp = torch.tensor([0.9, 1.1])
    extractor.eval()
    bare = extractor(audio, lengths)[0]
    assert torch.equal(extractor(audio, lengths, warp)[0], bare)  # byte for byte
    extractor.train()
    assert not torch.equal(extractor(audio, lengths, warp)[0].float(), extractor(audio, lengths)[0])


def test_vtlp_factor_one_is_the_plain_filterbank():
    plain = mel_filterbank(40, 512, RATE, 20.0, 0.0)
    warped = mel_filterbank(40, 512, RATE, 20.0, 0.0, warp=torch.tensor([1.0, 1.1]))
    torch.testing.assert_close(warped[0], plain, rtol=0, atol=1e-12)
    assert warped[1, -1].abs().sum() == 0 and (warped[1].sum(dim=0) > 0).all()  # every filter still sees a bin


def peak_bin(log_mel: torch.Tensor) -> float:
    """Fractional mel bin of a tone's peak: parabolic interpolation of the time-averaged log-mel."""
    spectrum = log_mel.mean(dim=0).double()
    k = int(spectrum.argmax())
    a, b, c = spectrum[k - 1], spectrum[k], spectrum[k + 1]
    return k + 0.5 * float((a - c) / (a - 2 * b + c))


@pytest.mark.parametrize("factor", [0.9, 1.12])
def test_vtlp_moves_a_tone_peak_by_the_warp_factor(factor):
    extractor = FeatureExtractor(FeatureConfig(num_mel_bins=80)).train()
    t = np.arange(RATE) / RATE

    def log_mel(hz, warp=None):
        tone = torch.tensor(0.3 * np.sin(2 * np.pi * hz * t), dtype=torch.float32)[None, :]
        return extractor.compute_log_mel(tone, torch.tensor([RATE]), warp)[0][0]  # (frames, bins)

    warped = peak_bin(log_mel(1000.0, torch.tensor([factor])))
    assert warped == pytest.approx(peak_bin(log_mel(1000.0 * factor)), abs=0.1)  # where a tone at alpha f peaks
    assert abs(warped - peak_bin(log_mel(1000.0))) > 1.5  # ~2 mel bins


def test_bad_noise_dir_is_a_config_error_naming_it(tmp_path):
    for folder in (tmp_path / "missing", tmp_path):  # absent; present with no audio
        (tmp_path / "notes.txt").write_text("no audio here")
        with pytest.raises(ConfigError, match=str(folder)):
            WaveAugment(AugmentConfig(noise_prob=1.0, noise_files=1.0, noise_dir=str(folder)), RATE, seed=0)
    with pytest.raises(ConfigError, match="noise_dir"):
        WaveAugment(AugmentConfig(noise_prob=1.0, noise_files=1.0), RATE, seed=0)
    with pytest.raises(ConfigError, match="noise_snr"):
        WaveAugment(AugmentConfig(noise_prob=1.0, noise_snr=[20.0, 5.0]), RATE, seed=0)
    with pytest.raises(ConfigError, match="vtlp"):
        UtteranceDataset([], CharTokenizer(), RATE, augment=AugmentConfig(vtlp=[0.0, 1.1]))


def test_simulated_rooms_start_at_the_direct_path():
    pytest.importorskip("pyroomacoustics")
    augment = WaveAugment(AugmentConfig(reverb_prob=1.0, reverb_rt60=[0.2, 0.4], reverb_bank=3), RATE, seed=0)
    assert len(augment.rirs) == 3
    for rir in augment.rirs:
        assert rir[0] == 1.0 and np.abs(rir).max() == 1.0
    x = burst()
    out = augment(x, 0, 0)
    assert out.shape == x.shape and np.abs(out[: int(0.25 * RATE)]).max() < 1e-9  # no speech before it starts
    assert np.array_equal(out, augment(x, 0, 0))


def test_pitch_shift_moves_the_pitch_and_keeps_the_timing():
    pytest.importorskip("parselmouth")
    t = np.arange(RATE) / RATE
    voiced = np.sign(np.sin(2 * np.pi * 120 * t)) * 0.1  # 1 s of a 120 Hz buzz ...
    x = np.concatenate([np.zeros(RATE // 4), voiced, np.zeros(RATE // 4)]).astype(np.float32)  # ... between silence
    config = AugmentConfig(pitch_prob=1.0, pitch_shift=[4.0, 4.0])
    out = WaveAugment(config, RATE, seed=0)(x, 0, 0)
    assert out.shape == x.shape
    import parselmouth

    pitch = parselmouth.Sound(out.astype(np.float64), RATE).to_pitch()
    values = pitch.selected_array["frequency"]
    voiced_at = pitch.xs()[values > 0]
    assert np.median(values[values > 0]) == pytest.approx(120 * 2 ** (4 / 12), rel=0.03)
    assert voiced_at.min() == pytest.approx(0.25, abs=0.05) and voiced_at.max() == pytest.approx(1.25, abs=0.05)
