"""Frame index <-> time, from a FeatureConfig alone: no torch, so the torch-free runtime
(`asr.runtime`, an exported model in onnxruntime) places frames exactly where the features
(`asr.features.FeatureExtractor`, which inherits this) put them.

    frame_sizes      analysis window and hop in samples
    FrameTiming      num_raw_frames, num_frames, frame_step, frame_seconds, frame_centres,
                     frame_times, frame_span (see each; the framings are described in
                     asr/features.py's docstring)
"""

from __future__ import annotations

import numpy as np

from asr.config import ConfigError, FeatureConfig


def frame_sizes(config: FeatureConfig) -> tuple[int, int]:
    """(analysis window, hop) in samples; ConfigError where they are too short to frame."""
    length = int(config.sample_rate * config.frame_length_ms / 1000)
    shift = int(config.sample_rate * config.frame_shift_ms / 1000)
    if length < 2 or shift < 1:
        raise ConfigError(
            f"features: frame_length_ms={config.frame_length_ms} / frame_shift_ms={config.frame_shift_ms} "
            f"give {length} / {shift} samples at {config.sample_rate} Hz"
        )
    return length, shift


class FrameTiming:
    """Where a FeatureConfig's output frames fall. Needs `config`, `frame_length` and
    `frame_shift` (samples) on the instance: set by this __init__, or by FeatureExtractor's."""

    def __init__(self, config: FeatureConfig):
        self.config = config
        self.frame_length, self.frame_shift = frame_sizes(config)

    def num_raw_frames(self, num_samples):
        """Analysis frames for `num_samples` samples (an int, numpy array or tensor), before
        stacking and subsampling."""
        if self.config.kaldi_compat:  # 1 + (samples - length) // shift, at least 0; never a negative
            # numerator, which ONNX's integer Div (asr/export_features.py) would round toward zero
            whole = num_samples - self.frame_length + self.frame_shift
            if isinstance(whole, (int, np.integer)):
                return max(int(whole), 0) // self.frame_shift
            return (np.maximum(whole, 0) if isinstance(whole, np.ndarray) else whole.clamp_min(0)) // self.frame_shift
        frames = 1 + num_samples // self.frame_shift
        return frames * (num_samples > 0)

    def num_frames(self, num_samples):
        """Output frames (after stacking and subsampling) for `num_samples` samples.

        Stacking pads each utterance with copies of its own last frame, so no frame is lost:
        ceil(raw frames / subsample).
        """
        raw = self.num_raw_frames(num_samples)
        return (raw + self.config.subsample - 1) // self.config.subsample

    @property
    def frame_step(self) -> int:
        """The step between output frames, in samples (frame shift × subsample): audio cut on a
        multiple of it gives frames that line up with the whole's."""
        return self.frame_shift * self.config.subsample

    @property
    def frame_seconds(self) -> float:
        """The step between output frames, in seconds."""
        return self.frame_step / self.config.sample_rate

    def frame_centres(self, num_frames: int) -> list[float]:
        """Where output frames 0 .. num_frames-1 are centred, in seconds from the start of the
        audio: on the analysis frames each one stacks (an analysis frame is centred on sample
        t * shift, or, in Kaldi mode, starts there). With `frame_times`, the one owner of
        "frame index -> seconds"."""
        first, step = self._first_centre, self.frame_seconds
        return [first + i * step for i in range(num_frames)]

    @property
    def _first_centre(self) -> float:
        """Where output frame 0 is centred (s)."""
        config = self.config
        centre = ((config.stack_frames - 1) / 2 * self.frame_shift) / config.sample_rate
        return centre + (self.frame_length / 2 / config.sample_rate if config.kaldi_compat else 0.0)

    def frame_times(self, num_frames: int) -> tuple[list[float], list[float]]:
        """When output frames 0 .. num_frames-1 happened: each one's start and end in seconds
        from the start of the audio, one frame step wide around its centre (`frame_centres`),
        the first starting no earlier than 0."""
        step = self.frame_seconds
        centres = self.frame_centres(num_frames)
        return [max(c - step / 2, 0.0) for c in centres], [c + step / 2 for c in centres]

    def frame_span(self, index: int) -> tuple[float, float]:
        """`frame_times` of one output frame: its (start, end) in seconds, without listing the
        frames before it (a stream asks for frames of an hour in)."""
        step = self.frame_seconds
        centre = self._first_centre + index * step
        return max(centre - step / 2, 0.0), centre + step / 2
