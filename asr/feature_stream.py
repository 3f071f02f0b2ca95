"""`FeatureStream`: an utterance's features as its audio arrives, equal to `FeatureExtractor`'s
offline features frame for frame however the audio is cut into chunks (asr/stream.py feeds it)."""

from __future__ import annotations

import torch
from torch import Tensor

from asr.config import ConfigError
from asr.features import (
    CMVN_WINDOW,
    DELTA_WINDOW,
    INT16_SCALE,
    STREAMING_CMVN_KINDS,
    TRAINED_CMVN_KINDS,
    FeatureExtractor,
    running_cmvn,
)


class _Tail:
    """The last rows of a sequence that grows at its end: rows start .. end - 1 (absolute
    indices), (rows, *row_shape). What each stage of a FeatureStream keeps of its input."""

    def __init__(self, row_shape: tuple[int, ...], like: Tensor):
        self.rows = like.new_zeros(0, *row_shape)
        self.end = 0

    @property
    def start(self) -> int:
        return self.end - self.rows.shape[0]

    def extend(self, rows: Tensor) -> None:
        self.rows = torch.cat([self.rows, rows]) if self.rows.shape[0] else rows
        self.end += rows.shape[0]

    def drop_before(self, index: int) -> None:
        """Forget rows before `index` (all of them when index >= end)."""
        self.rows = self.rows[max(index - self.start, 0) :]


class FeatureStream:
    """One utterance's features as its audio arrives, equal (to float32 rounding) to what the
    extractor gives the whole utterance offline, however the audio is cut into chunks:

        stream = FeatureStream(extractor)
        feats = torch.cat([stream.accept(chunk) for chunk in chunks] + [stream.finish()])  # (frames, output_dim)

    Each stage runs the extractor's own code on its new rows plus the tail of earlier ones that
    they read, and keeps only that tail: samples from one window before the next frame, the last
    CMVN_WINDOW - 1 static frames (cmvn "running"), deltas * DELTA_WINDOW frames each side of the
    next delta, and the frames of the next stacked output; memory is bounded however long the
    stream. A frame leaves `accept` once every sample and frame it reads has arrived; `finish`
    gives the rest, with the offline ends (reflection at the end of the audio, deltas' and
    stacking's last frame repeated). Always in eval mode (no dither), on the extractor's device.
    """

    def __init__(self, extractor: FeatureExtractor):
        config = extractor.config
        if config.cmvn not in STREAMING_CMVN_KINDS:
            raise ConfigError(
                f"features.cmvn={config.cmvn!r} normalizes each frame with statistics of the whole utterance, "
                f"so its features cannot stream; models that stream train with features.cmvn in {STREAMING_CMVN_KINDS}"
            )
        if config.cmvn in TRAINED_CMVN_KINDS:
            extractor.trained_cmvn_stats()  # raises now, not at the first frame
        self.extractor = extractor
        self.reset()

    def reset(self) -> None:
        """Start a new utterance: every sample and frame of the last one is dropped."""
        extractor = self.extractor
        dim = extractor.static_dim
        self._samples = _Tail((), extractor.window)  # int16 units
        self._static = _Tail((dim,), extractor.window)  # before CMVN, for cmvn "running"
        self._normalized = _Tail((dim,), extractor.window)  # after CMVN, for deltas
        self._dynamic = _Tail((dim * (extractor.config.deltas + 1),), extractor.window)  # after deltas, for stacking
        self._next_delta = 0  # the first frame whose deltas are still to come
        self._finished = False
        self.frames_out = 0  # output frames returned since the reset

    def accept(self, samples: Tensor) -> Tensor:
        """The next samples (n,) float in [-1, 1] at config.sample_rate, n >= 0 -> the output
        frames (new_frames, output_dim) they complete."""
        if self._finished:
            raise RuntimeError("FeatureStream.accept after finish: call reset() to start a new utterance")
        if samples.dim() != 1:
            raise ValueError(f"FeatureStream.accept takes samples of shape (n,), got {tuple(samples.shape)}")
        self._samples.extend(samples.to(self.extractor.window) * INT16_SCALE)
        return self._advance(self._ready_raw_frames(), last=None)

    def finish(self) -> Tensor:
        """The utterance's remaining output frames (frames, output_dim); accept() raises until reset()."""
        if self._finished:
            return self._samples.rows.new_zeros(0, self.extractor.output_dim)
        self._finished = True
        num_samples = self._samples.end
        return self._advance(self.extractor.num_raw_frames(num_samples), last=num_samples - 1)

    def _ready_raw_frames(self) -> int:
        """Analysis frames whose samples have all arrived, reflection at the end of the audio aside."""
        extractor, received = self.extractor, self._samples.end
        if extractor.config.kaldi_compat:
            return extractor.num_raw_frames(received)
        # Centered frame t reads samples up to t * shift + right - 1, and frame 0, by reflection,
        # sample left (= frame_length // 2 <= right).
        left, right = extractor.frame_length // 2, extractor.frame_length - extractor.frame_length // 2
        return 0 if received <= left else max((received - right) // extractor.frame_shift + 1, 0)

    def _advance(self, num_raw_frames: int, last: int | None) -> Tensor:
        """Compute raw frames up to `num_raw_frames` and carry them through every stage; `last`:
        the last sample when the audio has ended (then every stage flushes), else None."""
        extractor = self.extractor
        first = self._static.end
        if num_raw_frames <= first and last is None:
            return self._samples.rows.new_zeros(0, extractor.output_dim)
        with torch.no_grad(), torch.autocast(self._samples.rows.device.type, enabled=False):
            frames = self._cut(first, num_raw_frames - first, last)  # (new, frame_length)
            static = extractor.cepstra(extractor.log_mel_of_frames(frames[None]))[0]  # (new, static_dim)
            normalized = self._normalize(static)  # (new, static_dim)
            dynamic = self._add_deltas(normalized, final=last is not None)  # (ready, static_dim * (deltas + 1))
            return self._stack(dynamic, final=last is not None)  # (ready, output_dim)

    def _cut(self, first: int, num_frames: int, last: int | None) -> Tensor:
        """Analysis frames first .. first + num_frames - 1, (num_frames, frame_length), int16 units,
        cut as `FeatureExtractor.frame` cuts them."""
        extractor, samples = self.extractor, self._samples
        shift, length = extractor.frame_shift, extractor.frame_length
        if num_frames == 0:
            return samples.rows.new_zeros(0, length)
        if extractor.config.kaldi_compat:
            frames = samples.rows[first * shift - samples.start :].unfold(0, length, shift)[:num_frames]
            samples.drop_before((first + num_frames) * shift)
            return frames
        positions = extractor.frame_positions(first, num_frames, last, samples.rows.device)  # (num_frames, frame_length)
        frames = samples.rows[positions - samples.start]
        # A later centered frame t reads no sample before t * shift - frame_length, even reflected
        # about the end (which lies past t * shift - 1).
        samples.drop_before((first + num_frames) * shift - length)
        return frames

    def _normalize(self, static: Tensor) -> Tensor:
        """config.cmvn of new static frames (new, static_dim) -> same shape."""
        extractor, kind = self.extractor, self.extractor.config.cmvn
        self._static.extend(static)
        if kind == "global":
            return extractor.normalize_global(static)
        if kind == "running":
            history = self._static.rows.shape[0] - static.shape[0]
            normalized = running_cmvn(self._static.rows[None], *extractor.trained_cmvn_stats(), first=history)[0]
            self._static.drop_before(self._static.end - (CMVN_WINDOW - 1))
            return normalized
        self._static.drop_before(self._static.end)
        return static

    def _add_deltas(self, normalized: Tensor, final: bool) -> Tensor:
        """Frames with deltas now complete (ready, static_dim * (deltas + 1)): those whose
        `reach` frames after have arrived, all the rest when `final`."""
        extractor = self.extractor
        if not extractor.config.deltas:
            return normalized
        reach = extractor.config.deltas * DELTA_WINDOW  # frames each side the widest filter reads
        tail = self._normalized
        tail.extend(normalized)
        end = tail.end if final else tail.end - reach
        if end <= self._next_delta:
            return normalized.new_zeros(0, extractor.static_dim * (extractor.config.deltas + 1))
        # The tail starts at frame 0 or `reach` frames before the first delta to come, so only
        # the clamping of the utterance's own ends (or of the tail's end, unread unless final) applies.
        dynamic = extractor.add_deltas(tail.rows[None], torch.tensor([tail.rows.shape[0]], device=tail.rows.device))[0]
        ready = dynamic[self._next_delta - tail.start : end - tail.start]
        self._next_delta = end
        tail.drop_before(end - reach)
        return ready

    def _stack(self, dynamic: Tensor, final: bool) -> Tensor:
        """Output frames now complete (ready, output_dim): those whose stack_frames frames have
        all arrived, all the rest when `final`."""
        extractor = self.extractor
        stack, step = extractor.config.stack_frames, extractor.config.subsample
        if stack == 1 and step == 1:
            self.frames_out += dynamic.shape[0]
            return dynamic
        tail = self._dynamic
        tail.extend(dynamic)
        tail.drop_before(self.frames_out * step)  # frames no output reads when stack < subsample
        if final:
            total = (tail.end + step - 1) // step
        else:
            total = (tail.end - stack) // step + 1 if tail.end >= stack else 0
        if total <= self.frames_out:
            return dynamic.new_zeros(0, extractor.output_dim)
        assert tail.start == self.frames_out * step
        stacked, _ = extractor.stack_and_subsample(tail.rows[None], torch.tensor([tail.rows.shape[0]], device=tail.rows.device))
        ready = stacked[0, : total - self.frames_out]  # (ready, output_dim)
        self.frames_out = total
        tail.drop_before(total * step)
        return ready
