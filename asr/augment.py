"""Training-time augmentation: speed perturbation of the waveform and SpecAugment of the features.

- Speed perturbation (Ko et al. 2015, "Audio augmentation for speech recognition"): each
  training utterance is resampled by a factor drawn from e.g. (0.9, 1.0, 1.1), changing tempo
  and pitch together as sox's `speed` effect does. It runs in the DataLoader workers, beside
  decoding and resampling. The factor is a pure function of (seed, epoch, utterance index), so
  it does not depend on worker scheduling and a resumed run draws the same factors.
- Silence padding: each training utterance gets up to `pad_silence` seconds of digital silence
  (zeros) at each end, drawn uniformly per (seed, epoch, utterance) like the speed factor. A
  corpus whose files all start after the same silence (eSpeak's) otherwise teaches the model one
  phase of the frame grid: the demo's dev WER went from 5.9 % to 8.2 % with its utterances
  shifted by 10 ms, as segments cut from a long recording are (docs/transcribe.md).
- Concatenation: a `concat` share of the training utterances are joined in pairs, back to back
  (drawn per (seed, epoch)), each trimmed to its words where the manifest has word times,
  keeping a random 0-`CONCAT_GAP` s of its own silence at the join; an epoch holds the same
  speech as without, in fewer, longer items. A model trained only
  on sentences framed by silence runs the last word of one into the first of the next
  ("tuesdaywe") where a long recording has no pause between them.
- SpecAugment (Park et al. 2019, "SpecAugment: a simple data augmentation method for ASR"):
  time warping, frequency masks and time masks on the batched features, on the training
  device, within each utterance's own length. Random numbers come from the device's global
  generator, whose state every checkpoint saves, so resume stays exact.

Both are training-only: the trainer applies them; evaluation and decoding never do.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from asr.config import AugmentConfig, ConfigError


def speed_factor(factors: Sequence[float], seed: int, epoch: int, index: int) -> float:
    """The speed factor of utterance `index` in `epoch`: uniform over `factors`, reproducible."""
    if len(factors) == 1:
        return float(factors[0])
    rng = np.random.default_rng([seed, epoch, index])
    return float(factors[int(rng.integers(len(factors)))])


def silence_pads(max_seconds: float, seed: int, epoch: int, index: int) -> tuple[float, float]:
    """Seconds of silence before and after utterance `index` in `epoch`: each uniform in
    [0, max_seconds], reproducible (a stream apart from `speed_factor`'s)."""
    if max_seconds <= 0:
        return 0.0, 0.0
    rng = np.random.default_rng([seed, epoch, index, 1])
    lead, trail = rng.uniform(0.0, max_seconds, size=2)
    return float(lead), float(trail)


CONCAT_GAP = 0.15  # s: most of its own silence each utterance keeps at a concatenation's join


def concat_pairs(share: float, seed: int, epoch: int, size: int) -> dict[int, tuple[int, float, float]]:
    """Epoch `epoch`'s joined items: {first: (second, s of silence the first keeps after its last
    word, s the second keeps before its first)}. A `share` of the `size` utterances are paired,
    each at most once, so an epoch holds the same speech with or without concatenation (the
    second of a pair is not an item of its own that epoch). Reproducible, like `speed_factor`."""
    if share <= 0 or size < 2:
        return {}
    rng = np.random.default_rng([seed, epoch, 2])
    order = rng.permutation(size).tolist()
    num_pairs = int(min(share, 1.0) * size) // 2
    keep = rng.uniform(0, CONCAT_GAP, size=(num_pairs, 2))
    return {order[2 * k]: (order[2 * k + 1], float(keep[k, 0]), float(keep[k, 1])) for k in range(num_pairs)}


def perturb_speed(samples: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Play `samples` `factor` times faster: (samples,) -> (about samples / factor,) float32.

    Resampling from sample_rate * factor to sample_rate and reading the result at sample_rate is
    exactly sox's `speed factor` (tempo and pitch both scale by `factor`)."""
    if factor == 1.0:
        return samples
    import soxr

    return soxr.resample(samples, sample_rate * factor, sample_rate).astype(np.float32, copy=False)


def _uniform(shape: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.rand(shape, device=device)


class SpecAugment(torch.nn.Module):
    """Time warp, frequency masks and time masks on a padded batch of features.

    Works on the model's input features: after CMVN (masked values are 0, the mean), deltas and
    frame stacking. A feature vector holds `blocks` copies (stacked frames x delta orders) of
    `num_bins` static features; a frequency mask covers the same bins in every copy, which is
    what masking before deltas and stacking would give. Widths in the config count 10 ms feature
    frames before subsampling; they are divided by `subsample` here.
    """

    def __init__(self, config: AugmentConfig, num_bins: int, subsample: int = 1):
        super().__init__()
        if min(config.freq_masks, config.freq_mask_width, config.time_masks, config.time_mask_width, config.time_warp) < 0:
            raise ConfigError("augment: mask counts, mask widths and time_warp must be >= 0")
        if not 0.0 < config.time_mask_ratio <= 1.0:
            raise ConfigError(f"augment.time_mask_ratio must be in (0, 1], got {config.time_mask_ratio}")
        self.config = config
        self.num_bins = num_bins
        self.time_mask_width = -(-config.time_mask_width // subsample)  # ceil, in model input frames
        self.time_warp = config.time_warp // subsample

    @property
    def enabled(self) -> bool:
        c = self.config
        return bool((c.freq_masks and c.freq_mask_width) or (c.time_masks and self.time_mask_width) or self.time_warp)

    def forward(self, feats: Tensor, lengths: Tensor) -> Tensor:
        """feats (batch, frames, dim), lengths (batch,) -> augmented (batch, frames, dim); a
        no-op in eval mode. dim must be a multiple of num_bins."""
        if not self.training or not self.enabled or feats.shape[1] == 0:
            return feats
        if feats.shape[2] % self.num_bins:
            raise ConfigError(f"SpecAugment: feature dim {feats.shape[2]} is not a multiple of {self.num_bins} bins")
        lengths = lengths.to(feats.device)
        if self.time_warp:
            feats = self.warp_time(feats, lengths)
        if self.config.freq_masks and self.config.freq_mask_width:
            feats = self.mask_frequencies(feats)
        if self.config.time_masks and self.time_mask_width:
            feats = self.mask_times(feats, lengths)
        return feats

    def warp_time(self, feats: Tensor, lengths: Tensor) -> Tensor:
        """Move a random point c in [W, length - W) to c + w, w ~ U(-W, W), stretching the
        frames on either side linearly (Park et al.'s warp, along time only). Utterances of
        2W + 1 frames or fewer are left alone."""
        batch, frames, _ = feats.shape
        W = self.time_warp
        length = lengths.to(feats.dtype)[:, None]  # (batch, 1)
        centre = W + _uniform((batch, 1), feats.device) * (length - 2 * W)  # (batch, 1)
        shift = (2 * _uniform((batch, 1), feats.device) - 1) * W  # (batch, 1)
        target = centre + shift  # where the centre lands
        t = torch.arange(frames, device=feats.device, dtype=feats.dtype)[None, :]  # (1, frames)
        source = torch.where(
            t < target,
            t * centre / target.clamp_min(1e-6),
            centre + (t - target) * (length - 1 - centre) / (length - 1 - target).clamp_min(1e-6),
        )  # (batch, frames), fractional source frame of each output frame
        source = torch.minimum(source.clamp_min(0), (length - 1).clamp_min(0))
        low = source.floor().long()  # (batch, frames)
        high = torch.minimum(low + 1, (lengths - 1).clamp_min(0)[:, None])
        frac = (source - low.to(feats.dtype))[:, :, None]  # (batch, frames, 1)
        index = lambda i: i[:, :, None].expand_as(feats)  # noqa: E731
        warped = (1 - frac) * feats.gather(1, index(low)) + frac * feats.gather(1, index(high))
        warpable = (t < length) & (length > 2 * W + 1)  # (batch, frames)
        return torch.where(warpable[:, :, None], warped, feats)

    def mask_frequencies(self, feats: Tensor) -> Tensor:
        """`freq_masks` masks per utterance, each f ~ U[0, F] bins wide starting at f0 ~ U[0, bins - f)."""
        batch, frames, dim = feats.shape
        bins = torch.arange(self.num_bins, device=feats.device)  # (bins,)
        width = (_uniform((batch, self.config.freq_masks), feats.device) * (self.config.freq_mask_width + 1)).floor()
        width = width.clamp_max(self.num_bins)  # (batch, masks)
        start = (_uniform((batch, self.config.freq_masks), feats.device) * (self.num_bins - width + 1)).floor()
        masked = ((bins >= start[:, :, None]) & (bins < (start + width)[:, :, None])).any(dim=1)  # (batch, bins)
        blocks = feats.view(batch, frames, dim // self.num_bins, self.num_bins)  # (batch, frames, blocks, bins)
        return blocks.masked_fill(masked[:, None, None, :], 0.0).view(batch, frames, dim)

    def mask_times(self, feats: Tensor, lengths: Tensor) -> Tensor:
        """`time_masks` masks per utterance, each t ~ U[0, min(T, p * length)] frames wide,
        starting at t0 ~ U[0, length - t)."""
        batch, frames, _ = feats.shape
        num = self.config.time_masks
        length = lengths.to(feats.dtype)[:, None]  # (batch, 1)
        limit = torch.minimum(torch.full_like(length, float(self.time_mask_width)), self.config.time_mask_ratio * length)
        width = (_uniform((batch, num), feats.device) * (limit.floor() + 1)).floor()  # (batch, masks)
        start = (_uniform((batch, num), feats.device) * (length - width + 1).clamp_min(1)).floor()  # (batch, masks)
        t = torch.arange(frames, device=feats.device)  # (frames,)
        masked = ((t >= start[:, :, None]) & (t < (start + width)[:, :, None])).any(dim=1)  # (batch, frames)
        return feats.masked_fill(masked[:, :, None], 0.0)
