"""asr.features against kaldi-native-fbank and float64 numpy references written from the definitions."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.config import ConfigError, FeatureConfig
from asr.feature_stream import FeatureStream
from asr.features import (
    CMVN_PRIOR_FRAMES,
    CMVN_VARIANCE_FLOOR,
    CMVN_WINDOW,
    FeatureExtractor,
    MissingCmvnStatsError,
    compute_cmvn_stats,
    compute_fbank,
)

knf = pytest.importorskip("kaldi_native_fbank")

SAMPLE_RATE = 16000  # Hz
KALDI = FeatureConfig(kaldi_compat=True, num_mel_bins=80, low_freq=20.0, high_freq=0.0, cmvn="none")


def synthesize_speechlike(num_samples: int, seed: int = 0) -> np.ndarray:
    """Voiced stretches (harmonics of a gliding f0 through two formant-like resonances),
    fricative-like noise bursts, digital silence and low-level room noise; float in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / SAMPLE_RATE  # s
    f0 = 110.0 + 35.0 * np.sin(2 * np.pi * 1.3 * t) + 20.0 * np.sin(2 * np.pi * 0.4 * t)  # Hz
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = np.zeros(num_samples)
    for k in range(1, 40):
        harmonic_hz = k * f0
        formants = np.exp(-(((harmonic_hz - 700.0) / 250.0) ** 2))
        formants += 0.5 * np.exp(-(((harmonic_hz - 1800.0) / 400.0) ** 2))
        voiced += np.where(harmonic_hz < SAMPLE_RATE / 2, (0.05 + formants) / k, 0.0) * np.sin(k * phase)
    syllables = np.clip(np.sin(2 * np.pi * 3.0 * t), 0.0, None) ** 0.5  # ~3 syllables / s
    noise = np.diff(rng.standard_normal(num_samples + 1))  # high-passed: fricative-like
    bursts = (np.sin(2 * np.pi * 3.0 * t + 2.5) > 0.7).astype(float)
    signal = 0.25 * voiced * syllables + 0.08 * noise * bursts + 3e-4 * rng.standard_normal(num_samples)
    signal[int(0.30 * num_samples) : int(0.30 * num_samples) + 2000] = 0.0  # digital silence
    return np.clip(signal, -1.0, 1.0)


@pytest.fixture(scope="module")
def wav_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s of speech-like audio stored as 16-bit PCM, so the quantization is real."""
    path = tmp_path_factory.mktemp("audio") / "speechlike.wav"
    sf.write(str(path), synthesize_speechlike(4 * SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    return path


def read_int16(path: Path, num_samples: int | None = None) -> np.ndarray:
    samples, rate = sf.read(str(path), dtype="int16", frames=-1 if num_samples is None else num_samples)
    assert rate == SAMPLE_RATE
    return samples  # (samples,) int16


def kaldi_fbank(samples_int16: np.ndarray, num_bins: int = 80) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.mel_opts.num_bins = num_bins
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    opts.use_energy = False
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(SAMPLE_RATE, samples_int16.astype(np.float32).tolist())
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])  # (frames, num_bins)


def assert_matches_kaldi(ours: np.ndarray, reference: np.ndarray) -> None:
    """Log-mel within 2e-4 wherever the float32 arithmetic of both sides can resolve it.

    A bin holding less than float32 epsilon (1.2e-7) of its frame's mel energy (the lowest
    bins of loud frames, after pre-emphasis) sits at the rounding noise of a float32 FFT;
    there the two implementations differ by up to ~1e-2 (our float64 run differs from
    kaldi-native-fbank by as much), so those bins get a loose bound only.
    """
    assert ours.shape == reference.shape
    difference = np.abs(ours - reference)
    energy_share = reference - np.logaddexp.reduce(reference.astype(np.float64), axis=1, keepdims=True)
    resolvable = energy_share > np.log(np.finfo(np.float32).eps)
    assert resolvable.mean() > 0.9
    assert difference[resolvable].max() < 2e-4
    assert difference.max() < 0.05
    assert np.median(difference) < 1e-5


def as_float(samples_int16: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(samples_int16.astype(np.float32) / 32768.0)  # (samples,) in [-1, 1]


def padded_batch(utterances: list[torch.Tensor], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad with loud noise, not zeros, so any leak of padding into features shows."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([len(u) for u in utterances])
    batch = torch.rand(len(utterances), int(lengths.max()) + 321, generator=generator) * 2 - 1  # (batch, samples)
    for i, utterance in enumerate(utterances):
        batch[i, : len(utterance)] = utterance
    return batch, lengths


@pytest.mark.parametrize("num_samples", [400, 16000 + 7, 4 * SAMPLE_RATE])
def test_kaldi_fbank_matches_kaldi_native_fbank(wav_path: Path, num_samples: int) -> None:
    samples = read_int16(wav_path, num_samples)
    reference = kaldi_fbank(samples)
    ours = compute_fbank(as_float(samples), KALDI).numpy()
    assert_matches_kaldi(ours, reference)


def test_kaldi_fbank_matches_on_40_bins_and_band_limits(wav_path: Path) -> None:
    samples = read_int16(wav_path, 2 * SAMPLE_RATE)
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = 40
    opts.mel_opts.low_freq = 64.0
    opts.mel_opts.high_freq = -400.0
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(SAMPLE_RATE, samples.astype(np.float32).tolist())
    fbank.input_finished()
    reference = np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])
    config = replace(KALDI, num_mel_bins=40, low_freq=64.0, high_freq=-400.0)
    ours = compute_fbank(as_float(samples), config).numpy()
    assert_matches_kaldi(ours, reference)


def test_mfcc_matches_kaldi_native_fbank(wav_path: Path) -> None:
    samples = read_int16(wav_path, 3 * SAMPLE_RATE)
    log_mel = kaldi_fbank(samples, num_bins=40)  # (frames, 40)
    opts = knf.MfccOptions()
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = 40
    opts.num_ceps = 13
    opts.use_energy = False
    mfcc = knf.OnlineMfcc(opts)
    mfcc.accept_waveform(SAMPLE_RATE, samples.astype(np.float32).tolist())
    mfcc.input_finished()
    reference = np.stack([mfcc.get_frame(i) for i in range(mfcc.num_frames_ready)])  # (frames, 13)

    extractor = FeatureExtractor(replace(KALDI, kind="mfcc", num_mel_bins=40, num_ceps=13)).eval()
    audio = as_float(samples)
    feats, frame_lengths = extractor(audio[None, :], torch.tensor([len(audio)]))
    assert feats.shape == (1, *reference.shape) and extractor.output_dim == 13
    assert int(frame_lengths[0]) == len(reference)
    # The DCT and lifter alone, on Kaldi's own log-mel: exact up to float32 rounding.
    np.testing.assert_allclose(log_mel @ extractor.dct.numpy(), reference, atol=2e-4, rtol=1e-5)
    # End to end: the DCT spreads the float32 noise of the weakest mel bins (see
    # assert_matches_kaldi) over all cepstra, which are of order 10-100.
    assert np.abs(feats[0].numpy() - reference).max() < 2e-2


def numpy_mel_filterbank(num_bins: int, n_fft: int, low_hz: float, high_hz: float) -> np.ndarray:
    """Kaldi's triangles, written out bin by bin in float64: (n_fft // 2 + 1, num_bins)."""

    def mel(hz: float) -> float:
        return 1127.0 * math.log(1.0 + hz / 700.0)

    step = (mel(high_hz) - mel(low_hz)) / (num_bins + 1)
    weights = np.zeros((n_fft // 2 + 1, num_bins))
    for m in range(num_bins):
        left, center, right = (mel(low_hz) + (m + i) * step for i in range(3))
        for k in range(n_fft // 2):  # Kaldi leaves the Nyquist bin out
            mel_k = mel(k * SAMPLE_RATE / n_fft)
            if left < mel_k <= center:
                weights[k, m] = (mel_k - left) / (center - left)
            elif center < mel_k < right:
                weights[k, m] = (right - mel_k) / (right - center)
    return weights


def test_default_mode_matches_float64_reference(wav_path: Path) -> None:
    """Centered frames, reflect padding, periodic Hann, no pre-emphasis: numpy from the definition."""
    samples = read_int16(wav_path, SAMPLE_RATE + 55).astype(np.float64)  # int16 units
    length, shift, n_fft = 400, 160, 512
    padded = np.pad(samples, (length // 2, length - length // 2), mode="reflect")
    num_frames = 1 + len(samples) // shift
    frames = np.stack([padded[t * shift : t * shift + length] for t in range(num_frames)])
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)
    power = np.abs(np.fft.rfft(frames * hann, n=n_fft)) ** 2
    energies = power @ numpy_mel_filterbank(80, n_fft, 20.0, SAMPLE_RATE / 2)
    reference = np.log(np.maximum(energies, np.finfo(np.float32).eps))

    ours = compute_fbank(as_float(samples.astype(np.int16)), FeatureConfig()).numpy()
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 1e-3


@pytest.mark.parametrize("kaldi_compat", [True, False])
def test_batch_equals_single_utterances_under_padding(wav_path: Path, kaldi_compat: bool) -> None:
    config = FeatureConfig(
        kind="mfcc", kaldi_compat=kaldi_compat, cmvn="utterance", deltas=2, stack_frames=3, subsample=3
    )
    extractor = FeatureExtractor(config).eval()
    audio = as_float(read_int16(wav_path))
    utterances = [audio[5000:21000], audio[:400], audio[30000:37777], audio[100:4100]]
    batch, lengths = padded_batch(utterances)
    feats, frame_lengths = extractor(batch, lengths)  # (batch, frames, dim)
    assert feats.shape == (len(utterances), extractor.num_frames(batch.shape[1]), extractor.output_dim)
    for i, utterance in enumerate(utterances):
        alone, alone_lengths = extractor(utterance[None, :], torch.tensor([len(utterance)]))
        n = int(frame_lengths[i])
        assert n == int(alone_lengths[0]) == alone.shape[1] == extractor.num_frames(len(utterance))
        torch.testing.assert_close(feats[i, :n], alone[0], atol=1e-4, rtol=1e-4)
        assert feats[i, n:].abs().max() == 0 if n < feats.shape[1] else True


@pytest.mark.parametrize("kind", ["fbank", "mfcc"])
def test_cmvn_normalizes_each_utterance_over_its_own_frames(wav_path: Path, kind: str) -> None:
    extractor = FeatureExtractor(FeatureConfig(kind=kind, cmvn="utterance")).eval()
    audio = as_float(read_int16(wav_path))
    batch, lengths = padded_batch([audio[: 2 * SAMPLE_RATE], audio[SAMPLE_RATE : SAMPLE_RATE + 8000]])
    feats, frame_lengths = extractor(batch, lengths)
    for i, n in enumerate(frame_lengths.tolist()):
        valid = feats[i, :n].double()
        assert valid.mean(dim=0).abs().max() < 1e-4
        std = valid.std(dim=0, unbiased=False)
        torch.testing.assert_close(std, torch.ones_like(std), atol=1e-3, rtol=0)
        assert torch.all(feats[i, n:] == 0)
    assert frame_lengths[1] < feats.shape[1]  # the second utterance really is padded


def numpy_deltas(feats: np.ndarray, order: int, window: int = 2) -> np.ndarray:
    """Kaldi's add-deltas from its definition: order-i filter = order-(i-1) filter convolved with
    the regression filter n / sum(n²), n = -window..window; frame indices clamped to the edges."""
    regression = np.arange(-window, window + 1) / sum(n * n for n in range(-window, window + 1))
    scales = [np.ones(1)]
    for _ in range(order):
        scales.append(np.convolve(scales[-1], regression))
    num_frames = len(feats)
    out = []
    for taps in scales:
        reach = len(taps) // 2
        delta = np.zeros_like(feats)
        for t in range(num_frames):
            for j, weight in enumerate(taps):
                delta[t] += weight * feats[min(max(t + j - reach, 0), num_frames - 1)]
        out.append(delta)
    return np.concatenate(out, axis=1)


def test_deltas_match_regression_formula(wav_path: Path) -> None:
    static = FeatureExtractor(FeatureConfig(cmvn="none", num_mel_bins=23)).eval()
    with_deltas = FeatureExtractor(FeatureConfig(cmvn="none", num_mel_bins=23, deltas=2)).eval()
    audio = as_float(read_int16(wav_path))
    batch, lengths = padded_batch([audio[:4000], audio[8000:9200]])  # 26 and 8 frames: edges matter
    base, frame_lengths = static(batch, lengths)
    feats, _ = with_deltas(batch, lengths)
    assert feats.shape[2] == with_deltas.output_dim == 3 * 23
    for i, n in enumerate(frame_lengths.tolist()):
        reference = numpy_deltas(base[i, :n].double().numpy(), order=2)
        np.testing.assert_allclose(feats[i, :n].numpy(), reference, atol=1e-4, rtol=1e-5)


def test_delta_regression_on_a_ramp_is_its_slope() -> None:
    """Away from the edges, the delta of c_t = 3 t is 3 and the delta-delta is 0."""
    extractor = FeatureExtractor(FeatureConfig(cmvn="none", deltas=2))
    ramp = 3.0 * torch.arange(20.0)[None, :, None].expand(1, 20, 4)  # (batch, frames, dim)
    feats = extractor.add_deltas(ramp, torch.tensor([20]))
    torch.testing.assert_close(feats[0, 4:-4, 4:8], torch.full((12, 4), 3.0))
    torch.testing.assert_close(feats[0, 4:-4, 8:], torch.zeros(12, 4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kaldi_compat", [True, False])
@pytest.mark.parametrize(("stack_frames", "subsample"), [(1, 1), (3, 3), (4, 2), (1, 3)])
def test_stacking_subsampling_and_num_frames(
    wav_path: Path, kaldi_compat: bool, stack_frames: int, subsample: int
) -> None:
    base_config = FeatureConfig(kaldi_compat=kaldi_compat, num_mel_bins=40, deltas=1)
    base = FeatureExtractor(base_config).eval()
    stacked = FeatureExtractor(replace(base_config, stack_frames=stack_frames, subsample=subsample)).eval()
    audio = as_float(read_int16(wav_path))
    sizes = [400, 401, 560, 12345, 16000]
    batch, lengths = padded_batch([audio[:n] for n in sizes])
    static, static_lengths = base(batch, lengths)
    feats, frame_lengths = stacked(batch, lengths)
    assert feats.shape == (len(sizes), stacked.num_frames(batch.shape[1]), stacked.output_dim)
    assert stacked.output_dim == 40 * 2 * stack_frames
    assert frame_lengths.dtype == torch.int64
    assert frame_lengths.tolist() == [stacked.num_frames(n) for n in sizes] == stacked.num_frames(lengths).tolist()
    for i in range(len(sizes)):
        n = int(static_lengths[i])
        expected = math.ceil(n / subsample)
        assert int(frame_lengths[i]) == expected
        for t in range(expected):
            rows = [static[i, min(t * subsample + j, n - 1)] for j in range(stack_frames)]
            torch.testing.assert_close(feats[i, t], torch.cat(rows))


def test_num_frames_matches_kaldi_and_centered_framing() -> None:
    kaldi = FeatureExtractor(FeatureConfig(kaldi_compat=True))
    centered = FeatureExtractor(FeatureConfig())
    assert [kaldi.num_frames(n) for n in (0, 399, 400, 559, 560, 16000)] == [0, 0, 1, 1, 2, 98]
    assert [centered.num_frames(n) for n in (0, 1, 159, 160, 16000)] == [0, 1, 1, 2, 101]


def test_buffers_follow_dtype_and_stay_out_of_state_dict(wav_path: Path) -> None:
    extractor = FeatureExtractor(FeatureConfig(kind="mfcc", deltas=1)).eval()
    assert extractor.state_dict() == {}  # rebuilt from the config, not checkpointed
    audio = as_float(read_int16(wav_path, SAMPLE_RATE))[None, :]
    lengths = torch.tensor([audio.shape[1]])
    single, _ = extractor(audio, lengths)
    extractor.to(torch.float64)
    assert all(buffer.dtype == torch.float64 for buffer in extractor.buffers())
    double, _ = extractor(audio, lengths)
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, atol=1e-3, rtol=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(wav_path: Path) -> None:
    config = FeatureConfig(kind="mfcc", deltas=2, stack_frames=3, subsample=3)
    extractor = FeatureExtractor(config).eval()
    audio = as_float(read_int16(wav_path))
    batch, lengths = padded_batch([audio, audio[:20000]])
    cpu, cpu_lengths = extractor(batch, lengths)
    extractor.to("cuda")
    assert all(buffer.is_cuda for buffer in extractor.buffers())
    gpu, gpu_lengths = extractor(batch.cuda(), lengths.cuda())
    assert gpu.is_cuda and torch.equal(gpu_lengths.cpu(), cpu_lengths)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3)
    # cuFFT and pocketfft round differently. A float32 power spectrum is exact to about eps times
    # the frame's peak power, so a mel bin far below its frame's peak (> ~20 nats; 0.2 % of them
    # here) differs by percents in the log: on an H100, up to 0.015 at 26 nats below, while the
    # bins within 15 nats of the peak agreed to 1.6e-4 and the powers to 1.9e-6 of the peak.
    gpu, cpu = compute_fbank(audio.cuda(), KALDI).cpu().double(), compute_fbank(audio, KALDI).double()
    peak = cpu.amax(dim=1, keepdim=True)
    near = cpu > peak - 15
    assert near.float().mean() > 0.9
    torch.testing.assert_close(gpu[near], cpu[near], atol=1e-3, rtol=1e-4)
    assert ((gpu.exp() - cpu.exp()).abs() <= 1e-5 * peak.exp()).all()


def test_dither_only_in_training_mode(wav_path: Path) -> None:
    extractor = FeatureExtractor(FeatureConfig(kaldi_compat=True, dither=1.0, cmvn="none"))
    audio = as_float(read_int16(wav_path, SAMPLE_RATE))[None, :]
    lengths = torch.tensor([audio.shape[1]])
    extractor.eval()
    first, _ = extractor(audio, lengths)
    second, _ = extractor(audio, lengths)
    assert torch.equal(first, second)
    extractor.train()
    dithered, _ = extractor(audio, lengths)
    assert not torch.equal(dithered, first)
    assert (dithered - first).abs().mean() < 0.1  # one int16 step of noise barely moves speech


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "plp"},
        {"cmvn": "sliding"},
        {"high_freq": 9000.0},
        {"low_freq": 8000.0},
        {"subsample": 0},
        {"kind": "mfcc", "num_ceps": 81},
    ],
)
def test_bad_options_raise_config_error(change: dict) -> None:
    with pytest.raises(ConfigError):
        FeatureExtractor(replace(FeatureConfig(), **change))


@pytest.mark.parametrize("kaldi_compat", [True, False])
def test_short_and_empty_utterances_in_a_batch(wav_path: Path, kaldi_compat: bool) -> None:
    """Kaldi gives no frame below one window; centered framing one frame per started shift."""
    extractor = FeatureExtractor(FeatureConfig(kaldi_compat=kaldi_compat, deltas=1)).eval()
    audio = as_float(read_int16(wav_path, SAMPLE_RATE))
    sizes = [0, 50, 399, 400, 800]
    batch, lengths = padded_batch([audio[2000 : 2000 + n] for n in sizes])
    feats, frame_lengths = extractor(batch, lengths)
    assert frame_lengths.tolist() == [extractor.num_frames(n) for n in sizes]
    assert frame_lengths.tolist() == ([0, 0, 0, 1, 3] if kaldi_compat else [0, 1, 3, 3, 6])
    assert torch.isfinite(feats).all()
    for i, n in enumerate(frame_lengths.tolist()):
        assert torch.all(feats[i, n:] == 0)
        if n:
            alone, _ = extractor(batch[i : i + 1, : sizes[i]], lengths[i : i + 1])
            torch.testing.assert_close(feats[i, :n], alone[0], atol=1e-4, rtol=1e-4)
    empty, empty_lengths = extractor(torch.zeros(2, 0), torch.zeros(2, dtype=torch.int64))
    assert empty.shape == (2, 0, extractor.output_dim) and empty_lengths.tolist() == [0, 0]


def test_features_ignore_autocast(wav_path: Path) -> None:
    """Under mixed precision the mel matmul must stay in float32 (bf16 would move log-mel ~1e-2)."""
    extractor = FeatureExtractor(replace(KALDI, kind="mfcc")).eval()
    audio = as_float(read_int16(wav_path, SAMPLE_RATE))[None, :]
    lengths = torch.tensor([audio.shape[1]])
    reference, _ = extractor(audio, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, _ = extractor(audio, lengths)
    assert feats.dtype == torch.float32
    torch.testing.assert_close(feats, reference)


def with_training_stats(config: FeatureConfig, audio: torch.Tensor) -> FeatureExtractor:
    """An extractor in eval mode whose global CMVN statistics come from `audio`'s two halves."""
    extractor = FeatureExtractor(config).eval()
    if config.cmvn in ("global", "running"):
        mean, var, _ = compute_cmvn_stats(extractor, [audio[: len(audio) // 2], audio[len(audio) // 2 :]])
        extractor.set_cmvn_stats(mean, var)
    return extractor


def static_numpy(audio: torch.Tensor, config: FeatureConfig) -> np.ndarray:
    """Static features (frames, static_dim) of one utterance, float64: cmvn none, no deltas or stacking."""
    plain = FeatureExtractor(replace(config, cmvn="none", deltas=0, stack_frames=1, subsample=1)).eval()
    feats, _ = plain(audio[None, :], torch.tensor([len(audio)]))
    return feats[0].double().numpy()


@pytest.mark.parametrize("kind", ["fbank", "mfcc"])
def test_global_cmvn_stats_leave_digital_silence_out_and_normalize(wav_path: Path, kind: str) -> None:
    config = FeatureConfig(kind=kind, num_mel_bins=40, cmvn="global")
    audio = as_float(read_int16(wav_path))
    utterances = [audio[:20000], audio[20000:45000], torch.zeros(8000), audio[45000:]]  # one of pure digital silence
    extractor = FeatureExtractor(config).eval()
    mean, var, frames = compute_cmvn_stats(extractor, utterances)

    statics = [static_numpy(u, config) for u in utterances]
    log_mels = [static_numpy(u, replace(config, kind="fbank")) for u in utterances]
    kept = np.concatenate([x[m.max(axis=1) > math.log(np.finfo(np.float32).eps) + 1e-3] for x, m in zip(statics, log_mels)])
    assert frames == len(kept) < sum(len(x) for x in statics) - 50  # the zeros' 51 frames and the wav's silence left out
    assert mean.shape == var.shape == (extractor.static_dim,) and mean.dtype == var.dtype == torch.float32
    np.testing.assert_allclose(mean.numpy(), kept.mean(axis=0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(var.numpy(), kept.var(axis=0), rtol=1e-4, atol=1e-4)

    extractor.set_cmvn_stats(mean, var)
    batch, lengths = padded_batch(utterances[:2])
    feats, frame_lengths = extractor(batch, lengths)
    for i, n in enumerate(frame_lengths.tolist()):
        expected = (statics[i] - mean.double().numpy()) / np.sqrt(var.double().numpy() + CMVN_VARIANCE_FLOOR)
        np.testing.assert_allclose(feats[i, :n].numpy(), expected, atol=1e-4, rtol=1e-4)
        assert torch.all(feats[i, n:] == 0)


def running_cmvn_reference(static: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """cmvn "running" frame by frame from its definition, float64: frame t is normalized by the
    statistics of frames max(0, t - W + 1) .. t plus the global ones weighted as max(0, P - n_t) frames."""
    out = np.zeros_like(static)
    for t in range(len(static)):
        window = static[max(0, t - CMVN_WINDOW + 1) : t + 1]
        prior = max(0, CMVN_PRIOR_FRAMES - len(window))
        count = len(window) + prior
        frame_mean = (window.sum(axis=0) + prior * mean) / count
        frame_power = ((window**2).sum(axis=0) + prior * (var + mean**2)) / count
        out[t] = (static[t] - frame_mean) / np.sqrt(frame_power - frame_mean**2 + CMVN_VARIANCE_FLOOR)
    return out


@pytest.mark.parametrize("kind", ["fbank", "mfcc"])
def test_running_cmvn_matches_its_definition_frame_by_frame(kind: str) -> None:
    config = FeatureConfig(kind=kind, num_mel_bins=23, cmvn="running")
    long = torch.from_numpy(synthesize_speechlike(9 * SAMPLE_RATE, seed=3).astype(np.float32))  # 901 frames: the window slides
    extractor = with_training_stats(config, torch.from_numpy(synthesize_speechlike(2 * SAMPLE_RATE, seed=4).astype(np.float32)))
    mean, var = (x.double().numpy() for x in extractor.trained_cmvn_stats())
    utterances = [long, long[:1000], long[5 * SAMPLE_RATE :]]  # 901, 7 (the prior dominates) and 401 frames
    batch, lengths = padded_batch(utterances)
    feats, frame_lengths = extractor(batch, lengths)
    for i, utterance in enumerate(utterances):
        n = int(frame_lengths[i])
        reference = running_cmvn_reference(static_numpy(utterance, config), mean, var)
        np.testing.assert_allclose(feats[i, :n].numpy(), reference, atol=1e-4, rtol=1e-4)
        assert torch.all(feats[i, n:] == 0)


@pytest.mark.parametrize("cmvn", ["global", "running"])
def test_trained_cmvn_without_statistics_is_an_error(cmvn: str) -> None:
    extractor = FeatureExtractor(FeatureConfig(cmvn=cmvn))
    with pytest.raises(MissingCmvnStatsError, match=f"cmvn='{cmvn}'.*set_cmvn_stats"):
        extractor(torch.zeros(1, 1600), torch.tensor([1600]))
    with pytest.raises(ConfigError, match="set_cmvn_stats"):
        FeatureStream(extractor)
    with pytest.raises(ValueError, match="need 80 finite values"):
        extractor.set_cmvn_stats(torch.zeros(13), torch.ones(13))


def stream_features(stream: FeatureStream, audio: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Feed `audio` cut into chunks of `sizes` (the last chunk takes the rest), then finish."""
    outputs, start = [], 0
    for size in sizes:
        outputs.append(stream.accept(audio[start : start + size]))
        start += size
    outputs.append(stream.accept(audio[start:]))
    outputs.append(stream.finish())
    assert all(o.shape[1] == stream.extractor.output_dim for o in outputs)
    return torch.cat(outputs)


@pytest.mark.parametrize("kaldi_compat", [False, True])
@pytest.mark.parametrize("kind", ["fbank", "mfcc"])
@pytest.mark.parametrize("cmvn", ["none", "global", "running"])
def test_stream_equals_offline_frame_for_frame(wav_path: Path, kaldi_compat: bool, kind: str, cmvn: str) -> None:
    config = FeatureConfig(kind=kind, kaldi_compat=kaldi_compat, num_mel_bins=40, cmvn=cmvn, deltas=2, stack_frames=3, subsample=3)
    audio = as_float(read_int16(wav_path))
    extractor = with_training_stats(config, audio)
    long = torch.cat([audio, audio.flip(0)])  # 8 s, 801 frames: running CMVN's window slides
    generator = torch.Generator().manual_seed(len(config.cmvn) + kaldi_compat)
    random_sizes = torch.randint(0, 2000, (200,), generator=generator).tolist()
    random_sizes[::7] = [0] * len(random_sizes[::7])
    splits = {
        "one chunk": [],
        "random, empty ones too": random_sizes,
        "20 ms": [320] * 400,
        "1 sample, then 100 ms": [1] * 1000 + [1600] * 100,
    }
    stream = FeatureStream(extractor)
    for length in [0, 1, 150, 399, 400, 401, 560, 5000, len(long)]:
        utterance = long[:length]
        expected, _ = extractor(utterance[None, :], torch.tensor([length]))
        for name, sizes in splits.items():
            stream.reset()
            feats = stream_features(stream, utterance, sizes)
            assert feats.shape == expected[0].shape, (length, name)
            assert stream.frames_out == expected.shape[1] == extractor.num_frames(length)
            torch.testing.assert_close(feats, expected[0], atol=1e-4, rtol=0, msg=f"{length} samples, {name}")


def test_stream_memory_stays_bounded_and_reset_starts_over(wav_path: Path) -> None:
    config = FeatureConfig(kind="mfcc", cmvn="running", deltas=2, stack_frames=3, subsample=3)
    audio = as_float(read_int16(wav_path))
    extractor = with_training_stats(config, audio)
    stream = FeatureStream(extractor)
    chunk = 1600  # 100 ms
    first = [stream.accept(audio[i : i + chunk]) for i in range(0, len(audio), chunk)]
    for _ in range(14):  # a minute of audio in all
        for i in range(0, len(audio), chunk):
            stream.accept(audio[i : i + chunk])
            assert len(stream._samples.rows) <= extractor.frame_length + chunk
            assert len(stream._static.rows) < CMVN_WINDOW
            assert len(stream._normalized.rows) <= 2 * 2 * 2 + chunk // extractor.frame_shift
            assert len(stream._dynamic.rows) <= 3 + chunk // extractor.frame_shift
    assert stream.finish().shape[0] == 3  # the last frames wait for what deltas and stacking read after them
    assert stream.frames_out == extractor.num_frames(15 * len(audio))
    with pytest.raises(RuntimeError, match="reset"):
        stream.accept(audio[:100])
    stream.reset()
    assert stream.frames_out == 0
    again = [stream.accept(audio[i : i + chunk]) for i in range(0, len(audio), chunk)]
    torch.testing.assert_close(torch.cat(again), torch.cat(first), rtol=0, atol=0)


@pytest.mark.parametrize("cmvn", ["utterance", "speech"])
def test_stream_refuses_whole_utterance_cmvn(cmvn: str) -> None:
    with pytest.raises(ConfigError, match="whole utterance"):
        FeatureStream(FeatureExtractor(FeatureConfig(cmvn=cmvn)))
