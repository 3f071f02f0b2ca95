"""Features: log-mel filterbank and MFCC in pure torch, batched, on the model's device.

    audio (batch, samples) ──► frames ──► window ──► |rfft|² ──► mel ──► log ──► [DCT + lifter]
        ──► CMVN ──► [deltas] ──► [stack + subsample] ──► feats (batch, frames, dim)

Scale: the API takes float samples in [-1, 1] (what `asr.audio.load_audio` returns) and
multiplies them by 32768 internally, in both modes, so that energies, the log floor and the
dither amplitude are in int16 units as in Kaldi. In Kaldi mode the log-mel output therefore
equals Kaldi's `compute-fbank` on the same 16-bit file.

Two framings, chosen by `FeatureConfig.kaldi_compat`:

- Kaldi (`kaldi_compat=True`): Kaldi's "snip edges" framing: frame t covers samples
  [t * shift, t * shift + length) and only whole frames are kept, so
  num_frames = 1 + (samples - length) // shift (0 when samples < length). Each frame has its
  DC offset removed, is pre-emphasized (0.97) and multiplied by the Povey window
  (Kaldi's "povey" window: a Hann window raised to the power 0.85).
- Default: centered frames, as `torch.stft(center=True)` and Whisper: frame t is centred on
  sample t * shift, and the signal is extended by reflection at both ends of each utterance
  (within its own length, never into the batch padding), so num_frames = 1 + samples // shift.
  No DC removal or pre-emphasis; a periodic Hann window.

Both modes share Kaldi's mel filterbank (triangles equally spaced on the HTK/Kaldi mel scale
1127 ln(1 + f / 700); Young et al., The HTK Book, sec. 5.4) and log floor
(max(energy, float32 epsilon)).

CMVN "speech" is per-utterance CMVN whose statistics leave out frames of digital silence (every
mel bin at the log floor: samples that are exactly zero, as between the utterances of a joined,
synthesized or edited file). Those frames sit ~34 nats below speech, so under "utterance" CMVN
their share alone rescales every speech frame: a model trained on utterances with 0.12 s of
silence at each end lost 8 % -> 33 % greedy WER when segments of a long file kept 0.4 s
(asr/segment.py). Under "speech" the same speech gets the same features however much digital
silence surrounds it.

CMVN "global" normalizes every frame with the training set's mean and variance of the static
features (`compute_cmvn_stats`, digital silence left out as under "speech"; saved in checkpoints
and set with `FeatureExtractor.set_cmvn_stats`): x_t -> (x_t - mean) / sqrt(var + 1e-10).
CMVN "running" is Kaldi's online CMVN (src/feat/online-feature.h, OnlineCmvn): frame t is
normalized by the mean and variance of frames max(0, t - 599) .. t (CMVN_WINDOW = 600, 6 s) of
its utterance, to which the global statistics add max(0, 200 - n_t) frames' weight
(CMVN_PRIOR_FRAMES; n_t the frames in the window), so that an utterance's first frames lean on
the training set's statistics and later ones on its own last 6 s. Neither reads a frame after the
one it normalizes, so both stream; "utterance" and "speech" need the whole utterance first.

`FeatureStream` (asr/feature_stream.py) computes an utterance's features as its audio arrives, chunk by chunk, with the
same code on the same frames: whatever the chunks, it gives the offline features frame for frame
(to float32 rounding), keeping only the tail of samples and frames each stage still reads.

Dither (Gaussian, `FeatureConfig.dither` int16 units per sample) is added only in training mode,
like dropout, so evaluation and decoding are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import astuple
from typing import Iterable

import torch
from torch import Tensor

from asr.config import ConfigError, FeatureConfig
from asr.timing import FrameTiming, frame_sizes

INT16_SCALE = 32768.0  # float [-1, 1] samples -> int16 units, Kaldi's input scale
PREEMPHASIS = 0.97  # Kaldi's default pre-emphasis coefficient
POVEY_EXPONENT = 0.85  # Kaldi's Povey window = Hann ** 0.85
LOG_FLOOR = torch.finfo(torch.float32).eps  # Kaldi floors mel energies at float epsilon before the log
CEPSTRAL_LIFTER = 22.0  # Kaldi's default MFCC lifter coefficient Q
DELTA_WINDOW = 2  # frames each side in the delta regression (Kaldi add-deltas default)
# At inference (eval mode) the FFT runs in float64 on these devices. A float32 FFT's error is
# relative to the whole frame's energy, so the quiet bins of a loud frame come out up to 1e-3 off
# in log-mel (measured on the demo test set), which the BiLSTM carries to 1.6e-4 in log-probs:
# float32 FFTs from different libraries (MKL, pocketfft, cuFFT, an exported graph's DFT) disagree
# by that much. In float64 every runtime gets the same features to 1e-6, for +14 % of a CPU
# forward pass (demo model, one thread). Training keeps float32 (dither is far larger), and MPS
# has no float64.
EXACT_FFT_DEVICES = ("cpu", "cuda")
CMVN_VARIANCE_FLOOR = 1e-10  # keeps constant features (digital silence) finite under CMVN
CMVN_WINDOW = 600  # "running" CMVN: raw frames (6 s at 10 ms) of statistics, Kaldi's OnlineCmvnOptions::cmn_window
CMVN_PRIOR_FRAMES = 200  # "running" CMVN: frames' weight of the global prior while the window is short (Kaldi's global_frames)
FEATURE_KINDS = ("fbank", "mfcc")
CMVN_KINDS = ("utterance", "speech", "none", "global", "running")  # see the module docstring
STREAMING_CMVN_KINDS = ("none", "global", "running")  # those that need no frame after the one they normalize
TRAINED_CMVN_KINDS = ("global", "running")  # those that need the training set's statistics (set_cmvn_stats)


def mel_scale(hz: Tensor) -> Tensor:
    """Kaldi's (and HTK's) mel scale: 1127 ln(1 + f / 700), f in Hz."""
    return 1127.0 * torch.log1p(hz / 700.0)


VTLP_BOUNDARY = 0.6  # VTLP: the warp is linear up to this fraction of Nyquist (Jaitly & Hinton 2013: F_hi = 4800 Hz at 16 kHz)


def vtlp_warp(hz: Tensor, factors: Tensor, nyquist: float) -> Tensor:
    """Vocal tract length perturbation's frequency warp (Jaitly & Hinton 2013, eq. 1; the
    piecewise-linear warp of Kaldi's VTLN): f -> alpha f up to the boundary
    F_hi min(alpha, 1) / alpha, then the straight line that takes Nyquist to Nyquist, so the warped
    axis stays within [0, Nyquist]. hz (bins,), factors (batch,) -> (batch, bins)."""
    alpha = factors[:, None].to(hz.dtype)  # (batch, 1)
    f_hi = VTLP_BOUNDARY * nyquist
    boundary = f_hi * alpha.clamp_max(1.0) / alpha  # (batch, 1)
    top = (nyquist - f_hi * alpha.clamp_max(1.0)) / (nyquist - boundary)  # slope above the boundary
    return torch.where(hz[None, :] <= boundary, alpha * hz[None, :], nyquist - top * (nyquist - hz[None, :]))


def mel_filterbank(
    num_bins: int, n_fft: int, sample_rate: int, low_freq: float, high_freq: float, warp: Tensor | None = None
) -> Tensor:
    """Triangular filters over the rfft bins, (n_fft // 2 + 1, num_bins), float64.

    Kaldi's definition: num_bins + 2 edges equally spaced in mel between low_freq and
    high_freq (Hz; high_freq <= 0 is an offset below Nyquist); filter m rises linearly in mel
    from edge m to edge m + 1 and falls to edge m + 2, with zero weight at and outside its
    edges. Kaldi weighs only the bins below Nyquist, so the Nyquist row is zero.

    warp (batch,): VTLP factors (`vtlp_warp`) -> one filterbank per utterance, (batch,
    n_fft // 2 + 1, num_bins) on warp's device: the energy of an rfft bin at f goes to the
    filters around warp(f), so a tone at f comes out where a tone at alpha f would (below the
    boundary); factor 1 gives the plain filterbank.
    """
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq = nyquist + high_freq
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ConfigError(
            f"features: need 0 <= low_freq < high_freq <= {nyquist:g} Hz, "
            f"got low_freq={low_freq:g}, high_freq={high_freq:g}"
        )
    device = None if warp is None else warp.device
    mel_low, mel_high = mel_scale(torch.tensor([low_freq, high_freq], dtype=torch.float64)).tolist()
    mel_step = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + mel_step * torch.arange(num_bins, dtype=torch.float64, device=device)  # (num_bins,)
    center, right = left + mel_step, left + 2 * mel_step
    bin_hz = sample_rate / n_fft * torch.arange(n_fft // 2 + 1, dtype=torch.float64, device=device)  # (n_fft // 2 + 1,)
    if warp is not None:
        bin_hz = vtlp_warp(bin_hz, warp.double(), nyquist)  # (batch, n_fft // 2 + 1)
    mel = mel_scale(bin_hz)[..., None]  # ([batch,] n_fft // 2 + 1, 1)
    rising = (mel - left) / (center - left)
    falling = (right - mel) / (right - center)
    weights = torch.minimum(rising, falling).clamp_min(0.0)  # ([batch,] n_fft // 2 + 1, num_bins)
    weights[..., -1, :] = 0.0
    return weights


def dct_matrix(num_bins: int, num_ceps: int, lifter: float = CEPSTRAL_LIFTER) -> Tensor:
    """Orthonormal DCT-II times Kaldi's cepstral lifter, (num_bins, num_ceps), float64.

    c_k = w_k sqrt(2 / N) sum_n x_n cos(pi k (n + 1/2) / N), with sqrt(1 / N) for k = 0;
    lifter w_k = 1 + (Q / 2) sin(pi k / Q) (Juang et al. 1987, as Kaldi's ComputeLifterCoeffs).
    """
    n = torch.arange(num_bins, dtype=torch.float64)[:, None]  # (num_bins, 1)
    k = torch.arange(num_ceps, dtype=torch.float64)[None, :]  # (1, num_ceps)
    dct = torch.cos(math.pi / num_bins * (n + 0.5) * k) * math.sqrt(2.0 / num_bins)
    dct[:, 0] = math.sqrt(1.0 / num_bins)
    liftering = 1.0 + 0.5 * lifter * torch.sin(math.pi * k / lifter) if lifter else torch.ones_like(k)
    return dct * liftering  # (num_bins, num_ceps)


def delta_scales(order: int, window: int = DELTA_WINDOW) -> list[Tensor]:
    """Filter taps for delta orders 0..order, as Kaldi's add-deltas defines them (Furui 1986).

    Order 1 is the regression d_t = sum_{n=-W}^{W} n c_{t+n} / sum_n n², and order i is the
    order-(i-1) filter convolved with that regression filter (so order 2 has 4W + 1 taps,
    applied to the static features). Returns float64 tensors of length 2 * i * W + 1.
    """
    regression = torch.arange(-window, window + 1, dtype=torch.float64)
    regression /= regression.square().sum()
    scales = [torch.ones(1, dtype=torch.float64)]
    for _ in range(order):
        previous = scales[-1]
        taps = torch.zeros(len(previous) + 2 * window, dtype=torch.float64)
        for j, weight in enumerate(regression):
            taps[j : j + len(previous)] += weight * previous
        scales.append(taps)
    return scales


class MissingCmvnStatsError(ConfigError):
    """cmvn "global" or "running" used before the training set's statistics were set."""


def gather_frames(feats: Tensor, index: Tensor, frame_lengths: Tensor) -> Tensor:
    """feats[b, clamp(index[b, t], 0, frame_lengths[b] - 1)] -> (batch, len(t), dim).

    Clamping to each utterance's own last frame replicates its edges without reading padding.
    """
    last = (frame_lengths - 1).clamp_min(0)[:, None]  # (batch, 1)
    index = torch.minimum(index.clamp_min(0), last)  # (batch, out_frames)
    return torch.gather(feats, 1, index[:, :, None].expand(-1, -1, feats.shape[2]))


def reflect_positions(position: Tensor, last: Tensor | None) -> Tensor:
    """Centered framing's reflection: sample positions (any shape, int64; below 0 or past `last`
    where a frame overhangs the utterance) -> the samples they read. Reflected about the first
    sample and, unless `last` is None (a stream whose end has not come), about the last one
    (`last` broadcasts against `position`); clamped into [0, last], so utterances shorter than
    half a window still work."""
    position = position.abs()
    if last is None:
        return position
    return torch.minimum(position, 2 * last - position).clamp_min(0)  # p <= last: p; past it: 2 last - p


def is_sound(log_mel: Tensor) -> Tensor:
    """(batch, frames, num_mel_bins) log-mel -> (batch, frames) bool: False on frames of digital
    silence (every mel bin at the log floor), which cmvn "speech" and the global statistics leave out."""
    return log_mel.amax(dim=2) > math.log(LOG_FLOOR) + 1e-3


def running_cmvn(feats: Tensor, prior_mean: Tensor, prior_var: Tensor, first: int = 0) -> Tensor:
    """cmvn "running" (module docstring) of frames first .. of `feats` (batch, frames, dim), which
    holds each utterance from its first frame, or from at least CMVN_WINDOW - 1 frames before
    `first` -> (batch, frames - first, dim). prior_mean, prior_var (dim,): the global statistics.

    The window sums slide: the first one summed, then each next one adds the frame that enters
    and takes out the frame that leaves (a cumulative sum), in float64, so that a stream's
    sums, started afresh at each chunk, agree with an hour's offline to ~1e-12."""
    x = feats.double()  # (batch, frames, dim)
    num_frames = x.shape[1]
    if first >= num_frames:
        return feats[:, first:]
    window = x[:, max(first - CMVN_WINDOW + 1, 0) : first + 1]  # (batch, <= W, dim): frame first's window
    entering = x[:, first + 1 :]  # (batch, out - 1, dim)
    # (out - 1,): the frame each next window loses, < 0 while the window still grows
    leaving_index = torch.arange(first + 1 - CMVN_WINDOW, num_frames - CMVN_WINDOW, device=x.device)
    leaving = x[:, leaving_index.clamp_min(0)].masked_fill((leaving_index < 0)[None, :, None], 0.0)  # (batch, out - 1, dim)
    sums = torch.cat([window.sum(dim=1, keepdim=True), entering - leaving], dim=1).cumsum(dim=1)  # (batch, out, dim)
    squares = torch.cat([window.square().sum(dim=1, keepdim=True), entering.square() - leaving.square()], dim=1).cumsum(dim=1)
    count = torch.arange(first + 1, num_frames + 1, device=x.device).clamp_max(CMVN_WINDOW)  # (out,): frames in each window
    count = count.to(x.dtype)[None, :, None]  # (1, out, 1)
    prior = (CMVN_PRIOR_FRAMES - count).clamp_min(0.0)  # (1, out, 1): the global statistics' weight, in frames
    prior_mean, prior_var = prior_mean.double(), prior_var.double()
    mean = (sums + prior * prior_mean) / (count + prior)  # (batch, out, dim)
    power = (squares + prior * (prior_var + prior_mean.square())) / (count + prior)  # (batch, out, dim)
    variance = (power - mean.square()).clamp_min(0.0)
    return ((x[:, first:] - mean) * torch.rsqrt(variance + CMVN_VARIANCE_FLOOR)).to(feats.dtype)


def frame_mask(frame_lengths: Tensor, num_frames: int) -> Tensor:
    """(batch, num_frames, 1) bool, True on each utterance's valid frames."""
    return (torch.arange(num_frames, device=frame_lengths.device) < frame_lengths[:, None])[:, :, None]


class FeatureExtractor(torch.nn.Module, FrameTiming):
    """Waveforms to features, as configured by a FeatureConfig; see the module docstring.

    The window, mel and DCT matrices are non-persistent buffers: `.to(device)` and
    `.to(torch.float64)` move them, and they are rebuilt from the config (saved with every
    checkpoint) instead of being stored in state dicts.
    """

    def __init__(self, config: FeatureConfig):
        super().__init__()
        if config.kind not in FEATURE_KINDS:
            raise ConfigError(f"features.kind must be one of {FEATURE_KINDS}, got {config.kind!r}")
        if config.cmvn not in CMVN_KINDS:
            raise ConfigError(f"features.cmvn must be one of {CMVN_KINDS}, got {config.cmvn!r}")
        if config.kind == "mfcc" and not 0 < config.num_ceps <= config.num_mel_bins:
            raise ConfigError(
                f"features.num_ceps must be in 1..num_mel_bins={config.num_mel_bins}, got {config.num_ceps}"
            )
        if config.deltas < 0 or config.stack_frames < 1 or config.subsample < 1 or config.dither < 0:
            raise ConfigError("features: deltas >= 0, stack_frames >= 1, subsample >= 1 and dither >= 0 are required")
        self.config = config
        self.frame_length, self.frame_shift = frame_sizes(config)  # samples
        self.n_fft = 1 << (self.frame_length - 1).bit_length()  # next power of two >= frame_length

        if config.kaldi_compat:
            hann = 0.5 - 0.5 * torch.cos(
                2 * math.pi / (self.frame_length - 1) * torch.arange(self.frame_length, dtype=torch.float64)
            )
            window = hann.pow(POVEY_EXPONENT)  # (frame_length,)
        else:
            window = torch.hann_window(self.frame_length, periodic=True, dtype=torch.float64)  # (frame_length,)
        mel = mel_filterbank(config.num_mel_bins, self.n_fft, config.sample_rate, config.low_freq, config.high_freq)
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("mel_weights", mel.float(), persistent=False)  # (n_fft // 2 + 1, num_mel_bins)
        if config.kind == "mfcc":
            dct = dct_matrix(config.num_mel_bins, config.num_ceps)
            self.register_buffer("dct", dct.float(), persistent=False)  # (num_mel_bins, num_ceps)
        else:
            self.dct = None
        reach = config.deltas * DELTA_WINDOW
        kernel = torch.zeros(2 * reach + 1, config.deltas, dtype=torch.float64)  # (taps, deltas): each order's filter, centred
        for order, taps in enumerate(delta_scales(config.deltas)[1:], start=1):
            kernel[reach - order * DELTA_WINDOW : reach + order * DELTA_WINDOW + 1, order - 1] = taps
        self.register_buffer("delta_kernel", kernel.float(), persistent=False)
        # cmvn "global" and "running": the training set's statistics (set_cmvn_stats), saved in
        # checkpoints beside the config
        self.register_buffer("cmvn_mean", None, persistent=False)  # (static_dim,)
        self.register_buffer("cmvn_var", None, persistent=False)  # (static_dim,)

    @property
    def static_dim(self) -> int:
        """Features per frame before deltas and stacking."""
        return self.config.num_ceps if self.config.kind == "mfcc" else self.config.num_mel_bins

    @property
    def output_dim(self) -> int:
        """Features per output frame, after deltas and stacking."""
        return self.static_dim * (self.config.deltas + 1) * self.config.stack_frames

    def frame(self, audio: Tensor, lengths: Tensor) -> Tensor:
        """Cut (batch, samples) audio into (batch, frames, frame_length) analysis frames.

        Frames of an utterance that reach past its length hold padding; the caller masks them.
        """
        if self.num_raw_frames(audio.shape[1]) == 0:
            return audio.new_zeros(audio.shape[0], 0, self.frame_length)
        if self.config.kaldi_compat:
            return audio.unfold(1, self.frame_length, self.frame_shift)  # (batch, frames, frame_length)
        left = self.frame_length // 2
        position = torch.arange(-left, audio.shape[1] + self.frame_length - left, device=audio.device)  # (padded_samples,)
        last = (lengths - 1).clamp_min(0)[:, None]  # (batch, 1)
        padded = torch.gather(audio, 1, reflect_positions(position[None, :], last))  # (batch, samples + frame_length)
        return padded.unfold(1, self.frame_length, self.frame_shift)  # (batch, frames, frame_length)

    def frame_positions(self, first: int, num_frames: int, last: int | None, device: torch.device) -> Tensor:
        """The samples centered frames first .. first + num_frames - 1 read, as `frame` reads them:
        (num_frames, frame_length) int64 sample indices. `last`: the utterance's last sample, or
        None while a stream has not reached its end (no reflection there yet)."""
        start = (first + torch.arange(num_frames, device=device)) * self.frame_shift - self.frame_length // 2  # (num_frames,)
        position = start[:, None] + torch.arange(self.frame_length, device=device)  # (num_frames, frame_length)
        return reflect_positions(position, None if last is None else torch.tensor(last, device=device))

    @staticmethod
    def remove_dc_and_preemphasize(frames: Tensor) -> Tensor:
        """Kaldi's per-frame DC removal, then pre-emphasis y[n] = x[n] - 0.97 x[n - 1] with
        x[-1] := x[0], so y[0] = 0.03 x[0]. (batch, frames, frame_length) -> same shape."""
        frames = frames - frames.mean(dim=2, keepdim=True)
        first = (1.0 - PREEMPHASIS) * frames[:, :, :1]  # (batch, frames, 1)
        rest = frames[:, :, 1:] - PREEMPHASIS * frames[:, :, :-1]  # (batch, frames, frame_length - 1)
        return torch.cat([first, rest], dim=2)

    def log_mel_of_frames(self, frames: Tensor, mel_weights: Tensor | None = None) -> Tensor:
        """The spectral part, frame by frame: (batch, frames, frame_length) cut frames in int16
        units -> (batch, frames, num_mel_bins) log-mel energies: [Kaldi mode: DC removal and
        pre-emphasis,] window, |rfft|², mel, log. Offline and streaming features both run it.
        mel_weights: per-utterance filterbanks (batch, n_fft // 2 + 1, num_mel_bins) in place of
        the shared one (VTLP: `vtlp_mel_weights`)."""
        if frames.shape[1] == 0:  # MKL's FFT rejects an empty batch
            return frames.new_zeros(frames.shape[0], 0, self.config.num_mel_bins)
        if self.config.kaldi_compat:
            frames = self.remove_dc_and_preemphasize(frames)
        windowed = frames * self.window  # (batch, frames, frame_length)
        if not self.training and windowed.device.type in EXACT_FFT_DEVICES:
            windowed = windowed.double()  # see EXACT_FFT_DEVICES
        spectrum = torch.fft.rfft(windowed, n=self.n_fft)  # (batch, frames, n_fft // 2 + 1)
        power = (spectrum.real.square() + spectrum.imag.square()).to(frames.dtype)  # (batch, frames, n_fft // 2 + 1)
        weights = self.mel_weights if mel_weights is None else mel_weights  # (n_fft // 2 + 1 | batch, ..., num_mel_bins)
        return torch.matmul(power, weights).clamp_min(LOG_FLOOR).log()  # (batch, frames, num_mel_bins)

    def vtlp_mel_weights(self, warp: Tensor) -> Tensor:
        """Each utterance's VTLP-warped filterbank: warp (batch,) factors -> (batch, n_fft // 2 + 1,
        num_mel_bins) in the buffers' dtype, on their device (`mel_filterbank` with a warp)."""
        c = self.config
        weights = mel_filterbank(c.num_mel_bins, self.n_fft, c.sample_rate, c.low_freq, c.high_freq, warp.to(self.window.device))
        return weights.to(self.window.dtype)

    def compute_log_mel(self, audio: Tensor, lengths: Tensor, warp: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Raw log-mel energies: audio (batch, samples) in [-1, 1], lengths (batch,) in samples
        -> (batch, frames, num_mel_bins) with padded frames zeroed, frame lengths (batch,) int64.
        warp (batch,): VTLP factors, used in training mode only (see `forward`).

        frames = num_raw_frames(audio.shape[1]), known without a device sync; lengths beyond
        audio.shape[1] are clamped to it. Runs in the buffers' dtype, with autocast off: a bf16
        mel matmul would cost ~1e-2 in log-mel.
        """
        with torch.autocast(audio.device.type, enabled=False):
            return self._compute_log_mel(audio, lengths, warp)

    def _compute_log_mel(self, audio: Tensor, lengths: Tensor, warp: Tensor | None = None) -> tuple[Tensor, Tensor]:
        audio = audio.to(self.window.dtype) * INT16_SCALE  # (batch, samples), int16 units
        lengths = lengths.to(device=audio.device, dtype=torch.int64).clamp(0, audio.shape[1])  # (batch,)
        frame_lengths = self.num_raw_frames(lengths)  # (batch,)
        frames = self.frame(audio, lengths)  # (batch, frames, frame_length)
        if self.training and self.config.dither > 0:
            frames = frames + self.config.dither * torch.randn_like(frames)
        mel_weights = self.vtlp_mel_weights(warp) if self.training and warp is not None else None
        log_mel = self.log_mel_of_frames(frames, mel_weights)  # (batch, frames, num_mel_bins)
        log_mel = log_mel.masked_fill(~frame_mask(frame_lengths, log_mel.shape[1]), 0.0)
        return log_mel, frame_lengths

    def normalize(self, feats: Tensor, frame_lengths: Tensor, counted: Tensor | None = None) -> Tensor:
        """Per-utterance mean and variance normalization over valid frames only; padding stays 0.
        `counted` (batch, frames) bool: only those frames make the statistics (all valid frames of
        an utterance that has none)."""
        valid = frame_mask(frame_lengths, feats.shape[1])  # (batch, frames, 1)
        stats = valid
        if counted is not None:
            stats = valid & counted[:, :, None]
            stats = stats | (valid & ~stats.any(dim=1, keepdim=True))  # no torch.where: ONNX Runtime has no Where on bool
        # masks as per-frame multiplies (features are finite; x * 1 is x): a per-element Where costs more in ONNX Runtime
        weights = stats.to(feats.dtype)  # (batch, frames, 1): 1 on the frames of the statistics
        count = weights.sum(dim=1, keepdim=True).clamp_min(1)  # (batch, 1, 1)
        mean = (feats * weights).sum(dim=1, keepdim=True) / count  # (batch, 1, dim)
        centred = feats - mean  # (batch, frames, dim)
        variance = (centred * weights).square().sum(dim=1, keepdim=True) / count  # (batch, 1, dim)
        return centred * valid.to(feats.dtype) * torch.rsqrt(variance + CMVN_VARIANCE_FLOOR)

    def set_cmvn_stats(self, mean: Tensor, var: Tensor) -> None:
        """Set the training set's statistics that cmvn "global" and "running" normalize with:
        mean and variance of the static features, each (static_dim,) (`compute_cmvn_stats`)."""
        for name, value in (("mean", mean), ("var", var)):
            if tuple(value.shape) != (self.static_dim,) or not torch.isfinite(value).all():
                raise ValueError(f"CMVN {name}: need {self.static_dim} finite values, got shape {tuple(value.shape)}")
        if (var < 0).any():
            raise ValueError("CMVN var: negative variance")
        self.cmvn_mean = mean.to(self.window)
        self.cmvn_var = var.to(self.window)

    def trained_cmvn_stats(self) -> tuple[Tensor, Tensor]:
        """(mean, var), each (static_dim,): what `set_cmvn_stats` set; MissingCmvnStatsError if nothing."""
        if self.cmvn_mean is None or self.cmvn_var is None:
            raise MissingCmvnStatsError(
                f"features.cmvn={self.config.cmvn!r} normalizes with the training set's mean and variance, and none "
                "are set: checkpoints trained with it carry them; otherwise compute them with "
                "asr.features.compute_cmvn_stats and give them to FeatureExtractor.set_cmvn_stats"
            )
        return self.cmvn_mean, self.cmvn_var

    def normalize_global(self, feats: Tensor) -> Tensor:
        """cmvn "global": (x - mean) / sqrt(var + floor) with the training set's statistics,
        (..., static_dim) -> same shape."""
        mean, var = self.trained_cmvn_stats()
        return (feats - mean) * torch.rsqrt(var + CMVN_VARIANCE_FLOOR)

    def apply_cmvn(self, feats: Tensor, frame_lengths: Tensor, sound: Tensor) -> Tensor:
        """config.cmvn's normalization of static features (batch, frames, static_dim) -> same
        shape, padding 0. sound (batch, frames) bool: the frames that are not digital silence."""
        kind = self.config.cmvn
        if kind in ("utterance", "speech"):
            return self.normalize(feats, frame_lengths, sound if kind == "speech" else None)
        if kind == "global":
            feats = self.normalize_global(feats)
        elif kind == "running":
            feats = running_cmvn(feats, *self.trained_cmvn_stats())
        return feats * frame_mask(frame_lengths, feats.shape[1]).to(feats.dtype)

    def add_deltas(self, feats: Tensor, frame_lengths: Tensor) -> Tensor:
        """Append deltas up to config.deltas: (batch, frames, dim) -> (batch, frames, dim * (order + 1)).

        Each order is its Kaldi filter (see `delta_scales`) over the static features, with frame
        indices clamped to the utterance's own [0, length - 1] (edges replicated); all orders in
        one matmul (not conv1d, which cuDNN would run in TF32).
        """
        order = self.config.deltas
        reach = order * DELTA_WINDOW  # frames each side the widest filter reads
        batch, num_frames, dim = feats.shape
        if num_frames == 0:
            return feats.new_zeros(batch, 0, dim * (order + 1))
        time = torch.arange(-reach, num_frames + reach, device=feats.device).expand(batch, -1)  # (batch, frames + 2 reach)
        windows = gather_frames(feats, time, frame_lengths).unfold(1, 2 * reach + 1, 1)  # (batch, frames, dim, taps)
        deltas = torch.matmul(windows, self.delta_kernel).transpose(2, 3)  # (batch, frames, order, dim)
        return torch.cat([feats, deltas.reshape(batch, num_frames, order * dim)], dim=2)

    def stack_and_subsample(self, feats: Tensor, frame_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Output frame t = concat(feats[t * s], ..., feats[t * s + k - 1]), k = stack_frames,
        s = subsample; frames past an utterance's end repeat its last frame.
        (batch, frames, dim) -> (batch, ceil(frames / s), dim * k)."""
        stack, step = self.config.stack_frames, self.config.subsample
        num_out = (feats.shape[1] + step - 1) // step
        start = step * torch.arange(num_out, device=feats.device)[None, :].expand(feats.shape[0], -1)  # (batch, out)
        stacked = torch.cat([gather_frames(feats, start + j, frame_lengths) for j in range(stack)], dim=2)
        return stacked, (frame_lengths + step - 1) // step  # (batch, out, dim * k), (batch,)

    def forward(self, audio: Tensor, lengths: Tensor, warp: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """audio (batch, samples) float in [-1, 1], lengths (batch,) in samples
        -> feats (batch, frames, output_dim), frame_lengths (batch,) int64.

        frames = num_frames(audio.shape[1]); frames past an utterance's length are zero, and each
        utterance's features are those it would get alone. warp (batch,): VTLP factors
        (augment.vtlp; the training set draws them per utterance and epoch), applied in training
        mode only: in eval mode the features are those without.
        """
        with torch.autocast(audio.device.type, enabled=False):
            return self._forward(audio, lengths, warp)

    def _forward(self, audio: Tensor, lengths: Tensor, warp: Tensor | None = None) -> tuple[Tensor, Tensor]:
        feats, frame_lengths, sound = self.static_features(audio, lengths, warp)  # (batch, frames, static_dim)
        feats = self.apply_cmvn(feats, frame_lengths, sound)
        if self.config.deltas:
            feats = self.add_deltas(feats, frame_lengths)  # (batch, frames, static_dim * (deltas + 1))
        if self.config.stack_frames > 1 or self.config.subsample > 1:
            feats, frame_lengths = self.stack_and_subsample(feats, frame_lengths)  # (batch, out, output_dim)
        feats = feats.masked_fill(~frame_mask(frame_lengths, feats.shape[1]), 0.0)
        return feats, frame_lengths

    def static_features(self, audio: Tensor, lengths: Tensor, warp: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Features before CMVN: audio (batch, samples), lengths (batch,) [, VTLP factors (batch,)]
        -> log-mel or MFCC (batch, frames, static_dim) with padding 0, frame lengths (batch,), and
        which frames are sound, not digital silence (batch, frames) bool. Autocast must be off (as
        in `forward`)."""
        log_mel, frame_lengths = self.compute_log_mel(audio, lengths, warp)  # (batch, frames, num_mel_bins)
        return self.cepstra(log_mel), frame_lengths, is_sound(log_mel)

    def cepstra(self, log_mel: Tensor) -> Tensor:
        """Static features from log-mel: the DCT for mfcc (batch, frames, num_ceps), else log-mel itself."""
        return log_mel if self.dct is None else torch.matmul(log_mel, self.dct)


_extractors: dict[tuple, FeatureExtractor] = {}


def compute_fbank(audio: Tensor, config: FeatureConfig | None = None) -> Tensor:
    """Raw log-mel filterbank of one utterance: (samples,) in [-1, 1] -> (frames, num_mel_bins).

    No CMVN, deltas or stacking; `config.kind` is ignored. With `kaldi_compat=True` this is
    Kaldi's fbank (use_energy=false) of the same samples as int16.
    """
    if audio.dim() != 1:
        raise ValueError(f"compute_fbank takes one utterance of shape (samples,), got {tuple(audio.shape)}")
    config = config or FeatureConfig()
    key = astuple(config)
    if key not in _extractors:
        _extractors[key] = FeatureExtractor(config).eval()
    extractor = _extractors[key].to(audio.device)
    lengths = torch.tensor([audio.shape[0]], device=audio.device)
    log_mel, _ = extractor.compute_log_mel(audio[None, :], lengths)  # (1, frames, num_mel_bins)
    return log_mel[0]


def compute_cmvn_stats(extractor: FeatureExtractor, audios: Iterable[Tensor]) -> tuple[Tensor, Tensor, int]:
    """The statistics cmvn "global" and "running" normalize with: each audio (samples,) float in
    [-1, 1] at the extractor's rate -> mean (static_dim,), var (static_dim,) float32 on the CPU
    of its static features (after the DCT for mfcc, before deltas and stacking) over all the
    audios' frames, and how many frames that is. Frames of digital silence are left out, as
    cmvn "speech" leaves them out; sums in float64; no dither (the extractor runs in eval mode)."""
    device = extractor.window.device
    total = torch.zeros(extractor.static_dim, dtype=torch.float64, device=device)
    squares = torch.zeros_like(total)
    frames = torch.zeros((), dtype=torch.int64, device=device)
    was_training = extractor.training
    extractor.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for audio in audios:
                audio = audio.to(device)
                lengths = torch.tensor([audio.shape[0]], device=device)
                feats, _, sound = extractor.static_features(audio[None, :], lengths)  # (1, frames, static_dim), (1, frames)
                kept = feats[0][sound[0]].double()  # (sound frames, static_dim)
                total += kept.sum(dim=0)
                squares += kept.square().sum(dim=0)
                frames += kept.shape[0]
    finally:
        extractor.train(was_training)
    num_frames = int(frames)
    if num_frames == 0:
        raise ValueError("compute_cmvn_stats: the audio holds no frame that is not digital silence")
    mean = total / num_frames
    var = (squares / num_frames - mean.square()).clamp_min(0.0)
    return mean.float().cpu(), var.float().cpu(), num_frames
