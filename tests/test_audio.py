import numpy as np
import pytest
import soundfile as sf

from asr.audio import MIN_DURATION, SAMPLE_RATE, AudioError, audio_duration, load_audio, write_audio


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


@pytest.mark.parametrize(
    "suffix,kwargs",
    [(".wav", {}), (".flac", {}), (".ogg", {}), (".sph", {"format": "NIST", "subtype": "PCM_16"})],
)
def test_formats_load_resampled_to_16k(tmp_path, suffix, kwargs):
    path = tmp_path / f"a{suffix}"
    sf.write(path, tone(0.5, 22050), 22050, **kwargs)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 0.5 * SAMPLE_RATE) <= 2
    # the tone survives: its dominant frequency is still 440 Hz
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(x) - 440) < 5


def test_stereo_is_downmixed(tmp_path):
    left = tone(0.3, 16000)
    stereo = np.stack([left, -left * 0 + 0.1], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 16000, subtype="FLOAT")
    x = load_audio(tmp_path / "s.wav")
    np.testing.assert_allclose(x, (left + 0.1) / 2, atol=1e-6)


def test_offset_and_duration_select_a_segment(tmp_path):
    ramp = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    sf.write(tmp_path / "r.wav", ramp, 16000, subtype="FLOAT")
    x = load_audio(tmp_path / "r.wav", offset=0.25, duration=0.5)
    np.testing.assert_allclose(x, ramp[4000:12000])
    assert audio_duration(tmp_path / "r.wav") == pytest.approx(1.0)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="nope.wav: no such file"):
        load_audio(tmp_path / "nope.wav")


def test_empty_file(tmp_path):
    (tmp_path / "e.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="e.wav: empty file"):
        load_audio(tmp_path / "e.wav")


def test_unreadable_file(tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="junk.wav: unreadable"):
        load_audio(tmp_path / "junk.wav")


def test_header_only_file_has_no_samples(tmp_path):
    sf.write(tmp_path / "z.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="z.wav: no samples"):
        load_audio(tmp_path / "z.wav")


def test_non_finite_samples(tmp_path):
    x = tone(0.2, 16000)
    x[100] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: non-finite"):
        load_audio(tmp_path / "nan.wav")


def test_shorter_than_one_frame(tmp_path):
    sf.write(tmp_path / "short.wav", tone(MIN_DURATION / 2, 16000), 16000)
    with pytest.raises(AudioError, match="short.wav: .* shorter than one"):
        load_audio(tmp_path / "short.wav")


def test_write_audio_is_atomic(tmp_path):
    path = tmp_path / "out.wav"
    write_audio(path, tone(0.1, 16000))
    before = path.read_bytes()
    with pytest.raises(Exception):
        write_audio(path, np.zeros((2, 2, 2)))  # soundfile refuses 3-D data mid-write
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]
