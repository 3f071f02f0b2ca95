"""`GraphFeatures`: `FeatureExtractor`'s features in ops that export to one ONNX graph with
dynamic batch and length axes (asr/export.py puts them in front of the model).

The same values as `FeatureExtractor.forward` (asr/features.py), from the same window, mel, DCT
and delta matrices (its buffers) and the same CMVN code; only the steps whose torch form does
not export are written again:

- framing: `Tensor.unfold` over a dynamic length has no TorchScript-exporter symbolic. The
  samples the frames span are gathered once (centred mode: reflected within each utterance,
  `reflect_positions`), then cut into frames by blocks of gcd(shift, ...) samples with one index
  for the whole batch (a gather per sample cost 8 % of the int8 graph's time);
- the spectrum: `torch.fft.rfft` has no symbolic either, and ONNX's DFT op is no faster in
  onnxruntime than a matrix product (measured, float64, 16 x 390 frames, one thread: DFT op 64 ms,
  one product with a 400 x 514 cos | sin table 40 ms; its kernel is a scalar radix-2 loop). The
  DFT is a matrix product that uses the window's symmetry about c = mirror / 2 (w[n] =
  w[mirror - n]; mirror = frame_length, or frame_length - 1 for Kaldi's window): pairing sample
  a_j = x[upper + j] with b_j = x[lower - j], both d_j = upper + j - c from the centre,

      e^{2 pi i c k / N} X[k] = sum_j w_j (a_j + b_j) cos(2 pi d_j k / N) - i sum_j w_j (a_j - b_j) sin(2 pi d_j k / N)

  (w_0 halved where d_0 = 0: the centre sample is its own pair), and the phase factor is lost
  in |X[k]|^2: two products of frame_length / 2 terms each, half the multiply-adds of the plain
  DFT (which was 40 % of the int8 graph's time);
- every length is a tensor computed from the input's shape, never a Python int or an `if` on
  one, which the tracer would freeze at the example's size (`unflatten` freezes it too:
  `reshape` with -1 does not).

The spectral part (pairing, DFT) runs in float64, cast to float32 for the power and the mel
sums (positive terms: nothing cancels there): a float32 DFT by matrix product is as far from the
exact spectrum as `rfft`'s float32 FFT is, in a different direction, so the two would differ by
twice that (measured on the demo test set: 5e-3 vs 3e-3 in log-mel on the quietest bins); in
float64 the graph is off the float64 extractor by float32 rounding (1e-6 in log-mel) and off
`rfft` by `rfft`'s own rounding. The DFT tables are built at run time from a 2 x 2 n_fft table
of cos and sin values (exact to float64) and an integer index that hangs off the input's shape,
so the exporter does not fold 0.8 MB of float64 tables into the file.
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
    """(batch,) lengths, a 0-dim frame count -> (batch, frames, 1) float32, 1 on valid frames, 0 on
    padding: a mask to multiply by (one value per frame; ONNX Runtime's Where is slower)."""
    return (torch.arange(num_frames, device=frame_lengths.device) < frame_lengths[:, None])[:, :, None].float()


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
        length, n = extractor.frame_length, extractor.n_fft
        # the window is symmetric about mirror / 2: sample upper + j pairs with lower - j
        self.mirror = length - 1 if extractor.config.kaldi_compat else length
        self.upper, self.lower = (self.mirror + 1) // 2, self.mirror // 2
        self.num_pairs = length - self.upper
        window = extractor.window.double()  # (frame_length,)
        position = torch.arange(length)
        paired = self.mirror - position  # (frame_length,)
        inside = paired < length
        # Kaldi's Povey window and the periodic Hann window are symmetric (exactly, in float32, at
        # every length from 2 to 4096 samples); the periodic one's sample 0 has no pair and weighs 0
        assert torch.equal(window[inside], window[paired[inside]]) and not window[~inside].any(), "asymmetric window"
        weights = window[self.upper :] * INT16_SCALE  # (num_pairs,): the int16 scale is exact here (2 ** 15)
        if self.upper == self.lower:
            weights[0] /= 2  # the centre sample is its own pair: upper + lower counts it twice
        self.register_buffer("pair_weights", weights[:, None], persistent=False)  # (num_pairs, 1)
        angle = math.pi / n * torch.arange(2 * n, dtype=torch.float64)  # (2 n_fft,): one period in half-steps
        self.register_buffer("trig", torch.stack([angle.cos(), angle.sin()]), persistent=False)  # (2, 2 n_fft)

    def forward(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        fe, config = self.extractor, self.extractor.config
        log_mel, frame_lengths = self.compute_log_mel(audio, lengths)  # (batch, frames, num_mel_bins)
        feats = fe.cepstra(log_mel)  # (batch, frames, static_dim)
        feats = fe.apply_cmvn(feats, frame_lengths, is_sound(log_mel))
        if config.deltas:
            feats = self.add_deltas(feats, frame_lengths)  # (batch, frames, static_dim * (deltas + 1))
        if config.stack_frames > 1 or config.subsample > 1:
            feats, frame_lengths = self.stack_and_subsample(feats, frame_lengths)  # (batch, out, output_dim)
        return feats * valid_frames(frame_lengths, shape_size(feats, 1)), frame_lengths

    def compute_log_mel(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """`FeatureExtractor.compute_log_mel`: (batch, samples), (batch,) -> (batch, frames,
        num_mel_bins) float32 with padding 0, frame lengths (batch,)."""
        fe = self.extractor
        num_samples = shape_size(audio, 1)
        lengths = torch.minimum(lengths.long().clamp_min(0), num_samples)  # (batch,)
        frame_lengths = fe.num_raw_frames(lengths)  # (batch,)
        num_frames = fe.num_raw_frames(num_samples)  # 0-dim
        upper, lower = self.frame_halves(audio.double(), lengths, num_frames)  # (batch, frames, num_pairs) each
        cos, sin = self.dft_tables(num_samples)  # (num_pairs, n_fft // 2 + 1) each
        real = torch.matmul(upper + lower, cos)  # (batch, frames, n_fft // 2 + 1)
        imag = torch.matmul(upper - lower, sin)  # (batch, frames, n_fft // 2 + 1)
        # |X|^2 and the mel sums add positive terms (nothing cancels): float32, with the extractor's float32 weights
        power = real.float().square() + imag.float().square()  # (batch, frames, n_fft // 2 + 1)
        log_mel = torch.matmul(power, fe.mel_weights).clamp_min(LOG_FLOOR).log()  # (batch, frames, num_mel_bins)
        return log_mel * valid_frames(frame_lengths, num_frames), frame_lengths

    def frame_halves(self, audio: Tensor, lengths: Tensor, num_frames: Tensor) -> tuple[Tensor, Tensor]:
        """`FeatureExtractor.frame` (and in Kaldi mode its DC removal and pre-emphasis) by
        gathering, as the halves the DFT pairs: (batch, samples) -> frame sample upper + j and
        frame sample lower - j at [:, t, j], (batch, frames, num_pairs) each. The samples the
        frames span (centred: reflected within each utterance) are gathered once, then cut into
        frames by blocks, one index for the whole batch."""
        fe, pairs, shift = self.extractor, self.num_pairs, self.extractor.frame_shift
        last_start = (num_frames - 1) * shift  # the last frame's first sample in `spanned`
        spanned_length = last_start + fe.frame_length
        if fe.config.kaldi_compat:  # snip edges: every frame inside the audio
            frames = self.cut(audio[:, :spanned_length], 0, fe.frame_length, num_frames)  # (batch, frames, frame_length)
            frames = fe.remove_dc_and_preemphasize(frames)
            return frames[:, :, self.upper :], frames[:, :, self.lower - pairs + 1 : self.lower + 1].flip(2)
        position = torch.arange(spanned_length) - fe.frame_length // 2  # (span,)
        last = (lengths - 1).clamp_min(0)[:, None]  # (batch, 1)
        spanned = torch.gather(audio, 1, reflect_positions(position[None], last))  # (batch, span)
        upper = self.cut(spanned, self.upper, pairs, num_frames)  # frame t's sample upper + j at spanned[t * shift + upper + j]
        # frame t's sample lower - j at mirrored[(frames - 1 - t) * shift + j]
        mirrored = spanned[:, self.lower - pairs + 1 : last_start + self.lower + 1].flip(1)  # (batch, (frames - 1) * shift + pairs)
        return upper, self.cut(mirrored, 0, pairs, num_frames, backward=True)

    def cut(self, signal: Tensor, offset: int, length: int, num_frames: Tensor, backward: bool = False) -> Tensor:
        """Frames of `length` samples every frame_shift from sample `offset` of signal (batch,
        (frames - 1) * shift + offset + length), the last one first when `backward` -> (batch,
        frames, length): a gather of blocks of samples by one batch-free index."""
        shift = self.extractor.frame_shift
        block = math.gcd(shift, length, offset)  # divides the signal's length
        start = torch.arange(num_frames) * (shift // block)  # (frames,), in blocks
        if backward:
            start = start.flip(0)
        blocks = signal.reshape(signal.shape[0], -1, block)  # (batch, signal / block, block)
        index = start[:, None] + torch.arange(offset // block, (offset + length) // block)  # (frames, length / block)
        return blocks[:, index].flatten(2)  # (batch, frames, length)

    def dft_tables(self, anchor: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin of 2 pi d_j k / n_fft times window[upper + j] times INT16_SCALE, for pairs j
        at d_j = j or j + 1/2 from the centre and bins k <= n_fft / 2: (num_pairs, n_fft // 2 + 1)
        float64 each (module docstring). Gathered from a table of one period by exact int64
        phases; `anchor`, any 0-dim int64 tensor of the input's shape, only keeps the exporter
        from folding them into the file."""
        n = self.extractor.n_fft
        twice_offset = 2 * self.upper - self.mirror  # 0, or 1: the pairs' distances from the centre are half-integers
        j = (torch.arange(self.num_pairs) + anchor * 0)[:, None]  # (num_pairs, 1)
        phase = (2 * j + twice_offset) * torch.arange(n // 2 + 1) % (2 * n)  # (num_pairs, n_fft // 2 + 1), in periods / (2 n_fft)
        return self.trig[0][phase] * self.pair_weights, self.trig[1][phase] * self.pair_weights

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

