"""Audio in: load any file soundfile reads, resample with soxr, downmix, validate.

Everything downstream sees float32 mono samples at SAMPLE_RATE.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000  # Hz, the rate every model in this toolkit consumes
MIN_DURATION = 0.025  # s, one analysis window: anything shorter yields no feature frame


class AudioError(ValueError):
    """A user-supplied audio file that cannot be used; the message names the file."""


def check_audio_path(path: str | os.PathLike) -> Path:
    """`path` as a Path; AudioError naming it when it is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file")
    return path


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from the file header alone (no decoding)."""
    import soundfile as sf

    path = check_audio_path(path)
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises RuntimeError / LibsndfileError
        raise AudioError(f"{path}: cannot read header: {e}") from e
    return info.frames / info.samplerate


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Read `path` (WAV, FLAC, NIST SPHERE, OGG, ...) as float32 mono at `sample_rate`.

    `offset` and `duration` (seconds) select a segment, as Kaldi `segments` files do.
    Returns samples of shape (samples,). Raises AudioError naming the file when it is missing,
    empty, unreadable, holds non-finite samples or is shorter than one analysis window.
    """
    import soundfile as sf

    path = check_audio_path(path)
    try:
        with sf.SoundFile(str(path)) as f:
            native_rate = f.samplerate
            start = int(round(offset * native_rate))
            if start:
                f.seek(min(start, f.frames))
            num_frames = -1 if duration is None else int(round(duration * native_rate))
            samples = f.read(frames=num_frames, dtype="float32", always_2d=True)  # (samples, channels)
    except Exception as e:
        raise AudioError(f"{path}: unreadable audio: {e}") from e
    samples = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]  # (samples,)
    if samples.size == 0:
        raise AudioError(f"{path}: no samples")
    if not np.isfinite(samples).all():
        raise AudioError(f"{path}: non-finite samples (NaN or Inf)")
    if native_rate != sample_rate:
        import soxr

        samples = soxr.resample(samples, native_rate, sample_rate).astype(np.float32, copy=False)
    if samples.size < MIN_DURATION * sample_rate:
        raise AudioError(
            f"{path}: {samples.size / sample_rate * 1000:.1f} ms of audio is shorter than one "
            f"{MIN_DURATION * 1000:.0f} ms frame"
        )
    return np.ascontiguousarray(samples, dtype=np.float32)


def write_audio(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE, **kwargs) -> None:
    """Write mono float samples atomically; format from the suffix (.wav, .flac, ...) unless
    `format=` is given (e.g. format="NIST" for SPHERE). Extra kwargs go to soundfile.write."""
    import soundfile as sf

    from asr.fileio import atomic_path

    with atomic_path(path) as tmp:
        sf.write(str(tmp), samples, sample_rate, **kwargs)
