"""Speed perturbation and SpecAugment: what they change, what they must leave alone."""

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.augment import SpecAugment, perturb_speed, speed_factor
from asr.config import AugmentConfig, load_config
from asr.data.loader import UtteranceDataset
from asr.data.manifest import Utterance
from asr.text import CharTokenizer

RATE = 16000


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * RATE / len(samples))


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_scales_duration_and_pitch_like_sox_speed(factor):
    tone = np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE).astype(np.float32)  # 1 s of 440 Hz
    out = perturb_speed(tone, factor, RATE)
    assert out.dtype == np.float32
    assert abs(len(out) - RATE / factor) <= 2
    assert dominant_hz(out) == pytest.approx(440 * factor, abs=2.0)
    assert perturb_speed(tone, 1.0, RATE) is tone


def test_speed_factors_are_reproducible_and_uniform():
    factors = (0.9, 1.0, 1.1)
    draws = [speed_factor(factors, seed=3, epoch=1, index=i) for i in range(3000)]
    assert draws == [speed_factor(factors, seed=3, epoch=1, index=i) for i in range(3000)]
    assert draws != [speed_factor(factors, seed=3, epoch=2, index=i) for i in range(3000)]
    counts = np.array([draws.count(f) for f in factors])
    assert (abs(counts - 1000) < 100).all()


def test_dataset_perturbs_per_epoch_only_when_asked(tmp_path):
    sf.write(tmp_path / "a.wav", 0.1 * np.random.default_rng(0).standard_normal(RATE).astype(np.float32), RATE)
    utts = [Utterance(f"u{i}", str(tmp_path / "a.wav"), 1.0, "a") for i in range(12)]
    plain = UtteranceDataset(utts, CharTokenizer(), RATE)
    assert {len(plain[i]["audio"]) for i in range(12)} == {RATE}
    perturbed = UtteranceDataset(utts, CharTokenizer(), RATE, speed_factors=(0.9, 1.0, 1.1), seed=1)
    epoch0 = [len(perturbed[i]["audio"]) for i in range(12)]
    assert {round(RATE / n, 2) for n in epoch0} == {0.9, 1.0, 1.1}
    perturbed.set_epoch(1)
    assert [len(perturbed[i]["audio"]) for i in range(12)] != epoch0
    perturbed.set_epoch(0)
    assert [len(perturbed[i]["audio"]) for i in range(12)] == epoch0


def padded_batch(lengths, frames=60, dim=2 * 10, seed=0):
    feats = torch.randn(len(lengths), frames, dim, generator=torch.Generator().manual_seed(seed))  # (batch, frames, dim)
    lengths = torch.tensor(lengths)  # (batch,)
    feats[torch.arange(frames)[None, :] >= lengths[:, None]] = 0.0
    return feats, lengths


def test_frequency_masks_cover_the_same_bins_in_every_stacked_block():
    augment = SpecAugment(AugmentConfig(freq_masks=2, freq_mask_width=4), num_bins=10).train()
    feats, lengths = padded_batch([60, 45, 30, 12] * 8)
    torch.manual_seed(0)
    out = augment(feats, lengths)
    blocks = out.view(32, 60, 2, 10)
    zero_bins = (blocks == 0).all(dim=1)  # (batch, blocks, bins): bins masked over all frames
    assert torch.equal(zero_bins[:, 0], zero_bins[:, 1])
    masked = zero_bins[:, 0].sum(dim=1)  # (batch,)
    assert masked.max() <= 8 and masked.sum() > 0
    changed = out != feats
    assert torch.equal(changed.view(32, 60, 2, 10).any(dim=1)[:, 0], zero_bins[:, 0] & (feats.view(32, 60, 2, 10) != 0).any(dim=1)[:, 0])


def test_time_masks_stay_within_each_utterance_and_the_limits():
    subsample = 2
    config = AugmentConfig(time_masks=1, time_mask_width=20, time_mask_ratio=0.2)  # 20 raw frames = 10 model frames
    augment = SpecAugment(config, num_bins=10, subsample=subsample).train()
    lengths_list = [60, 45, 30, 12] * 8
    feats, lengths = padded_batch(lengths_list)
    torch.manual_seed(1)
    out = augment(feats, lengths)
    masked_frames = ((out == 0) & (feats != 0)).all(dim=2)  # (batch, frames)
    for i, length in enumerate(lengths_list):
        frames = masked_frames[i].nonzero().flatten().tolist()
        assert len(frames) <= min(10, int(0.2 * length))
        assert all(f < length for f in frames)
        assert frames == list(range(frames[0], frames[0] + len(frames))) if frames else True  # one contiguous run
    assert masked_frames.any()
    assert torch.equal(out[:, :, :][feats == 0], feats[feats == 0])  # padding untouched


def test_time_warp_moves_frames_within_each_utterance_only():
    augment = SpecAugment(AugmentConfig(time_warp=10), num_bins=1).train()
    lengths_list = [60, 50, 40, 21]
    ramp = torch.arange(60, dtype=torch.float32)[None, :, None].repeat(4, 1, 1)  # feature = frame index
    lengths = torch.tensor(lengths_list)
    ramp[torch.arange(60)[None, :] >= lengths[:, None]] = 0.0
    torch.manual_seed(2)
    out = augment(ramp, lengths)[:, :, 0]  # (batch, frames): the source position each frame reads
    for i, length in enumerate(lengths_list):
        warped = out[i, :length]
        assert warped[0] == 0 and warped[-1] == pytest.approx(length - 1)
        assert (warped[1:] >= warped[:-1] - 1e-5).all()  # order of frames kept
        assert (warped - torch.arange(length)).abs().max() <= 10 + 1e-4  # moved by at most W
        assert (out[i, length:] == 0).all()
    assert not torch.allclose(out[:3, :40], ramp[:3, :40, 0])
    assert torch.equal(out[3], ramp[3, :, 0])  # 21 frames <= 2W + 1: left alone


def test_spec_augment_is_off_in_eval_mode_and_reproducible_in_training():
    augment = SpecAugment(AugmentConfig(freq_masks=2, time_masks=2, time_warp=5), num_bins=10)
    feats, lengths = padded_batch([60, 40])
    assert torch.equal(augment.eval()(feats, lengths), feats)
    augment.train()
    torch.manual_seed(5)
    first = augment(feats, lengths)
    torch.manual_seed(5)
    assert torch.equal(augment(feats, lengths), first)
    assert not torch.equal(first, feats)


def test_training_with_augmentation_still_resumes_exactly(noise_corpus, tmp_path):
    from asr.checkpoint import load_checkpoint
    from asr.train import LAST, train
    from conftest import TINY_OVERRIDES

    def config(out, *extra):
        return load_config("configs/demo.yaml", [
            *TINY_OVERRIDES, f"data.train={noise_corpus['train']}", f"train.out_dir={out}", "train.num_threads=1",
            "augment.speed_factors=[0.9,1.0,1.1]", "augment.freq_masks=2", "augment.freq_mask_width=5",
            "augment.time_masks=2", "augment.time_mask_width=10", "augment.time_warp=6", "augment.noise_prob=0.5",
            "augment.noise_babble=1", "augment.gain_db=[-6,6]", "augment.lowpass_prob=0.3", "augment.vtlp=[0.9,1.1]", *extra])

    threads = torch.get_num_threads()
    try:
        straight = train(config(tmp_path / "a"), show_progress=False)
        train(config(tmp_path / "b", "train.time_limit_s=1e-9"), show_progress=False)
        train(config(tmp_path / "b"), resume=True, show_progress=False)
        unaugmented = train(config(tmp_path / "c", "augment.speed_factors=[1.0]", "augment.freq_masks=0",
                                   "augment.time_masks=0", "augment.time_warp=0", "augment.noise_prob=0", "augment.gain_db=[0,0]",
                                   "augment.lowpass_prob=0", "augment.vtlp=[1,1]"), show_progress=False)
    finally:
        torch.set_num_threads(threads)
    a, b, c = (load_checkpoint(d / LAST)["model"] for d in (straight, tmp_path / "b", unaugmented))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0)
    assert any(not torch.equal(a[name], c[name]) for name in a)  # augmentation did change training
