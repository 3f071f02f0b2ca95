"""`GraphFeatures`: `FeatureExtractor`'s features in ops that export to one ONNX graph with
dynamic batch and length axes (asr/export.py puts them in front of the model).

The same values as `FeatureExtractor.forward` (asr/features.py), from the same window, mel, DCT
and delta matrices (its buffers) and the same CMVN code; only the steps whose torch form does
not export are written again:

- framing: `Tensor.unfold` over a dynamic length and `torch.fft.rfft` have no TorchScript-exporter
  symbolic, so frames are gathered by index (frame t, sample k reads t * shift + k, reflected
  within the utterance in centred mode) and the spectrum is a DFT: two matrix products with
  cos and sin tables;
- every length is a tensor computed from the input's shape, never a Python int or an `if` on
  one, which the tracer would freeze at the example's size (`unflatten` freezes it too:
  `reshape` with -1 does not).

The spectral part (window, DFT, power) runs in float64, cast to float32 before the mel sums
(positive terms: nothing cancels there): a float32 DFT by matrix product is as far from the exact spectrum as `rfft`'s float32 FFT
is, in a different direction, so the two would differ by twice that (measured on the demo test
set: 5e-3 vs 3e-3 in log-mel on the quietest bins); in float64 the graph is off `rfft` only by
`rfft`'s own rounding. The DFT tables are built at run time from a 2 x n_fft table of cos and
sin values (exact to float64) and an integer index (t * k mod n_fft) that hangs off the input's
shape, so the exporter does not fold 1.6 MB of float64 tables into the file.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from asr.features import DELTA_WINDOW, INT16_SCALE, LOG_FLOOR, FeatureExtractor, is_sound, reflect_positions


def shape_size(x: Tensor, dim: int) -> Tensor:
    """x.shape[dim] as a 0-dim int64 tensor the exporter keeps dynamic (a Shape op)."""
    return torch._shape_as_tensor(x)[dim]


def valid_frames(frame_lengths: Tensor, num_frames: Tensor) -> Tensor:
    """(batch,) lengths, a 0-dim frame count -> (batch, frames, 1) bool, True on valid frames."""
    return (torch.arange(num_frames, device=frame_lengths.device) < frame_lengths[:, None])[:, :, None]


def clamped_gather(feats: Tensor, index: Tensor, frame_lengths: Tensor) -> Tensor:
    """feats (batch, frames, dim)[b, clamp(index, 0, frame_lengths[b] - 1)] for index (out, taps)
    -> (batch, out, taps, dim): `asr.features.gather_frames` for a batch-free index table (taps fixed)."""
    last = (frame_lengths - 1).clamp_min(0)[:, None, None]  # (batch, 1, 1)
    index = torch.minimum(index.clamp_min(0)[None], last)  # (batch, out, taps)
    flat = index.flatten(1)[:, :, None].expand(-1, -1, feats.shape[2])  # (batch, out * taps, dim)
    return torch.gather(feats, 1, flat).reshape(feats.shape[0], -1, index.shape[2], feats.shape[2])  # (batch, out, taps, dim)


class GraphFeatures(torch.nn.Module):
    """`extractor`'s features (eval mode: no dither) in exportable ops. audio (batch, samples)
    float in [-1, 1], lengths (batch,) int64 -> feats (batch, frames, output_dim) float32, frame
    lengths (batch,) int64, as `FeatureExtractor.forward`."""

    def __init__(self, extractor: FeatureExtractor):
        super().__init__()
        self.extractor = extractor.eval()
        n = extractor.n_fft
        angle = 2 * math.pi / n * torch.arange(n, dtype=torch.float64)  # (n_fft,): one period
        self.register_buffer("trig", torch.stack([angle.cos(), angle.sin()]), persistent=False)  # (2, n_fft)

    def forward(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        fe, config = self.extractor, self.extractor.config
        log_mel, frame_lengths = self.compute_log_mel(audio, lengths)  # (batch, frames, num_mel_bins)
        feats = fe.cepstra(log_mel)  # (batch, frames, static_dim)
        feats = fe.apply_cmvn(feats, frame_lengths, is_sound(log_mel))
        if config.deltas:
            feats = self.add_deltas(feats, frame_lengths)  # (batch, frames, static_dim * (deltas + 1))
        if config.stack_frames > 1 or config.subsample > 1:
            feats, frame_lengths = self.stack_and_subsample(feats, frame_lengths)  # (batch, out, output_dim)
        return feats.masked_fill(~valid_frames(frame_lengths, shape_size(feats, 1)), 0.0), frame_lengths

    def compute_log_mel(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """`FeatureExtractor.compute_log_mel`: (batch, samples), (batch,) -> (batch, frames,
        num_mel_bins) float32 with padding 0, frame lengths (batch,)."""
        fe = self.extractor
        num_samples = shape_size(audio, 1)
        audio = audio.double() * INT16_SCALE  # (batch, samples), int16 units
        lengths = torch.minimum(lengths.long().clamp_min(0), num_samples)  # (batch,)
        frame_lengths = fe.num_raw_frames(lengths)  # (batch,)
        num_frames = fe.num_raw_frames(num_samples)  # 0-dim
        frames = self.frame(audio, lengths, num_frames)  # (batch, frames, frame_length)
        if fe.config.kaldi_compat:
            frames = fe.remove_dc_and_preemphasize(frames)
        cos, sin = self.dft_tables(num_samples)  # (frame_length, n_fft // 2 + 1) each
        windowed = frames * fe.window.double()  # (batch, frames, frame_length)
        power = torch.matmul(windowed, cos).square() + torch.matmul(windowed, sin).square()  # (batch, frames, n_fft // 2 + 1)
        # the mel sums add positive terms (nothing cancels): float32, with the extractor's float32 weights
        log_mel = torch.matmul(power.float(), fe.mel_weights).clamp_min(LOG_FLOOR).log()  # (batch, frames, num_mel_bins)
        return log_mel.masked_fill(~valid_frames(frame_lengths, num_frames), 0.0), frame_lengths

    def frame(self, audio: Tensor, lengths: Tensor, num_frames: Tensor) -> Tensor:
        """`FeatureExtractor.frame` by gathering: (batch, samples) -> (batch, frames, frame_length)."""
        fe = self.extractor
        offsets = torch.arange(fe.frame_length, device=audio.device)  # (frame_length,)
        start = torch.arange(num_frames, device=audio.device) * fe.frame_shift  # (frames,)
        if fe.config.kaldi_compat:  # snip edges: every frame inside the audio
            position = start[:, None] + offsets  # (frames, frame_length)
            return audio[:, position]  # (batch, frames, frame_length)
        position = (start - fe.frame_length // 2)[:, None] + offsets  # (frames, frame_length)
        last = (lengths - 1).clamp_min(0)[:, None, None]  # (batch, 1, 1)
        position = reflect_positions(position[None], last)  # (batch, frames, frame_length)
        frames = torch.gather(audio, 1, position.flatten(1))  # (batch, frames * frame_length)
        return frames.reshape(audio.shape[0], -1, fe.frame_length)

    def dft_tables(self, anchor: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin of 2 pi t k / n_fft for t < frame_length, k <= n_fft / 2: (frame_length,
        n_fft // 2 + 1) float64 each (the real DFT of a frame zero-padded to n_fft). `anchor`, any
        0-dim int64 tensor of the input's shape, only keeps the exporter from folding them."""
        fe = self.extractor
        t = (torch.arange(fe.frame_length) + anchor * 0)[:, None]  # (frame_length, 1)
        k = torch.arange(fe.n_fft // 2 + 1)[None, :]  # (1, n_fft // 2 + 1)
        phase = t * k % fe.n_fft  # (frame_length, n_fft // 2 + 1), exact in int64
        return self.trig[0][phase], self.trig[1][phase]

    def add_deltas(self, feats: Tensor, frame_lengths: Tensor) -> Tensor:
        """`FeatureExtractor.add_deltas`: (batch, frames, dim) -> (batch, frames, dim * (order + 1))."""
        order = self.extractor.config.deltas
        reach = order * DELTA_WINDOW
        time = torch.arange(shape_size(feats, 1))[:, None] + torch.arange(-reach, reach + 1)  # (frames, taps)
        windows = clamped_gather(feats, time, frame_lengths).transpose(2, 3)  # (batch, frames, dim, taps)
        deltas = torch.matmul(windows, self.extractor.delta_kernel).transpose(2, 3)  # (batch, frames, order, dim)
        return torch.cat([feats, deltas.flatten(2)], dim=2)

    def stack_and_subsample(self, feats: Tensor, frame_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """`FeatureExtractor.stack_and_subsample`: (batch, frames, dim) -> (batch, ceil(frames /
        subsample), dim * stack_frames), frame lengths (batch,)."""
        stack, step = self.extractor.config.stack_frames, self.extractor.config.subsample
        num_out = (shape_size(feats, 1) + step - 1) // step
        index = step * torch.arange(num_out)[:, None] + torch.arange(stack)  # (out, stack)
        stacked = clamped_gather(feats, index, frame_lengths)  # (batch, out, stack, dim)
        return stacked.flatten(2), (frame_lengths + step - 1) // step

