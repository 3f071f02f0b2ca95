"""Training-time waveform augmentation for other voices, rooms and channels (issue 24).

`WaveAugment` runs in the DataLoader workers on each training item's samples (after speed
perturbation, concatenation and silence padding), in this order, each switched on by its
`augment.*` option (config.AugmentConfig; every default is off):

    voice (pitch, formants) ──► room (reverb) ──► noise at an SNR ──► channel (telephone, low-pass) ──► gain

Every random draw is a pure function of (seed, epoch, utterance index): each augmentation draws
from its own `np.random.default_rng([seed, epoch, index, K])`, K one of the `*_STREAM` constants
below, as `asr.augment.speed_factor` does; so a resumed run draws the same and the result does
not depend on which worker loads which item. Nothing moves speech in time (word and phone times
feed the frame head): impulse responses are cut so that their direct path is at lag 0, filters
run forwards and backwards (zero phase), resampling is linear phase, and every output keeps its
input's length.

Costs per second of audio, measured on this project's 2-core CPU with one thread (the
docstrings say which): see docs/recipes.md#augmentation for the table and
`scripts/bench_train.py --sweep` for what each costs a training run.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Callable

import numpy as np

from asr.audio import AudioError, load_audio
from asr.config import AugmentConfig, ConfigError

# np.random.default_rng([seed, epoch, index, K]) streams; speed_factor uses [seed, epoch, index],
# silence_pads K = 1, concat_pairs [seed, epoch, 2]
NOISE_STREAM, REVERB_STREAM, TELEPHONE_STREAM, LOWPASS_STREAM, GAIN_STREAM, VTLP_STREAM, VOICE_STREAM = 3, 4, 5, 6, 7, 8, 9
RIR_BANK_STREAM = 10  # [seed, RIR_BANK_STREAM]: the impulse-response bank, one per run

ACTIVE_BLOCK_S = 0.01  # s: blocks the active region is judged by
ACTIVE_RANGE_DB = 40.0  # a block within this many dB of the loudest block is active (speech)
BABBLE_TALKERS = (3, 7)  # other utterances summed into babble, inclusive
TELEPHONE_BAND = (300.0, 3400.0)  # Hz, ITU-T G.712's pass band
TELEPHONE_RATE = 8000  # Hz
MULAW_MU = 255.0  # G.711 mu-law
MULAW_LEVELS = 127  # quantization steps each side of zero (8 bits, zero kept exact)
FILTER_ORDER = 4  # Butterworth order; run forwards and backwards, so twice that in magnitude
ROOM_SIZE = ((3.0, 3.0, 2.5), (10.0, 8.0, 4.0))  # m: smallest and largest shoebox (x, y, z)
WALL_MARGIN = 0.5  # m: source and microphone at least this far from every wall
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".sph", ".mp3", ".opus", ".aif", ".aiff")
PITCH_FLOOR, PITCH_CEILING = 75.0, 600.0  # Hz, Praat's defaults for "Change gender"


def draw(seed: int, epoch: int, index: int, stream: int) -> np.random.Generator:
    """The generator of one augmentation's draws for utterance `index` in `epoch`."""
    return np.random.default_rng([seed, epoch, index, stream])


def active_mask(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """(samples,) -> (samples,) bool: True in the 10 ms blocks whose energy is within
    ACTIVE_RANGE_DB of the loudest block's, the speech that SNRs are measured over. Digital
    silence is never active; neither is a quiet background 40 dB under the speech."""
    block = max(int(ACTIVE_BLOCK_S * sample_rate), 1)
    num_blocks = -(-len(samples) // block)
    padded = np.zeros(num_blocks * block, dtype=np.float64)
    padded[: len(samples)] = samples
    energy = np.square(padded).reshape(num_blocks, block).sum(axis=1)  # (blocks,)
    if energy.size == 0 or energy.max() <= 0:
        return np.zeros(len(samples), dtype=bool)
    active = (energy > 0) & (energy >= energy.max() * 10 ** (-ACTIVE_RANGE_DB / 10))
    return np.repeat(active, block)[: len(samples)]


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, sample_rate: int) -> np.ndarray:
    """speech + noise scaled so that, over the speech's active region (`active_mask`), speech
    power / noise power = snr_db. Both (samples,); speech without an active region is returned
    as it is."""
    active = active_mask(speech, sample_rate)
    if not active.any():
        return speech
    speech_power = float(np.mean(np.square(speech[active], dtype=np.float64)))
    noise_power = float(np.mean(np.square(noise[active], dtype=np.float64)))
    if noise_power <= 0:
        return speech
    scale = math.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))
    return (speech + scale * noise).astype(np.float32)


def colored_noise(num_samples: int, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise whose power falls as 1 / f^beta: 0 white, 1 pink, 2 brown. (samples,) float32,
    unit variance. Shaped in the frequency domain, one rfft / irfft at a fast length (scipy's
    next_fast_len: numpy's FFT of a prime length was 10x slower): 0.5 ms per second of audio."""
    import scipy.fft

    length = scipy.fft.next_fast_len(max(num_samples, 2), real=True)
    white = rng.standard_normal(length, dtype=np.float32)
    spectrum = scipy.fft.rfft(white)
    f = np.arange(len(spectrum), dtype=np.float32)
    f[0] = 1.0  # DC: removed below
    spectrum *= f ** np.float32(-beta / 2)
    spectrum[0] = 0.0
    shaped = scipy.fft.irfft(spectrum, n=length)[:num_samples]
    return shaped / max(float(np.std(shaped)), 1e-12)


def loop_to_length(samples: np.ndarray, num_samples: int, start: int) -> np.ndarray:
    """`samples` repeated end to end, read from `start`: (num_samples,)."""
    reps = -(-(start + num_samples) // max(len(samples), 1))
    return np.tile(samples, reps)[start : start + num_samples]


def list_noise_files(noise_dir: str) -> list[str]:
    """The audio files under `noise_dir`, recursively (MUSAN's noise/ music/ speech/ layout works
    as it is), sorted; ConfigError naming the folder when it is missing or holds none."""
    root = Path(noise_dir)
    if not root.is_dir():
        raise ConfigError(f"augment.noise_dir: {noise_dir}: no such folder")
    files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"augment.noise_dir: {noise_dir}: holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return files


def read_noise_file(path: str, num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """`num_samples` of the noise file `path` at `sample_rate` (resampled), from a random offset;
    a file shorter than that is looped. Reads only the part it needs from a long file."""
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as e:
        raise AudioError(f"{path}: unreadable noise file: {e}") from e
    needed = num_samples / sample_rate + 0.05  # s, a little over: resampling may round down
    if info.duration > needed:
        offset = float(rng.uniform(0, info.duration - needed))
        noise = load_audio(path, sample_rate, offset, needed)
        start = 0
    else:
        noise = load_audio(path, sample_rate)
        start = int(rng.integers(len(noise)))
    return loop_to_length(noise.astype(np.float64), num_samples, start)


def room_impulse_response(rt60: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A simulated room's impulse response (pyroomacoustics' image-source shoebox; Allen & Berkley
    1979): a random room in ROOM_SIZE whose walls' absorption gives `rt60` s by Sabine's formula,
    source and microphone at random places. Cut to start at its direct path (lag 0), unit peak.
    Costs 7 ms (RT60 0.1 s) to 600 ms (0.8 s) each: too slow per utterance, so `WaveAugment`
    draws from a bank made once per run."""
    try:
        import pyroomacoustics as pra
    except ImportError as e:
        raise ConfigError("augment.reverb_prob needs pyroomacoustics: pip install pyroomacoustics (or asr[train])") from e
    low, high = np.array(ROOM_SIZE[0]), np.array(ROOM_SIZE[1])
    for _ in range(100):
        size = rng.uniform(low, high)
        try:
            absorption, max_order = pra.inverse_sabine(rt60, size)
            break
        except ValueError:  # too large a room for so short an RT60: a smaller one
            high = np.maximum(low, 0.8 * high)
    else:
        raise ValueError(f"no room in {ROOM_SIZE} m has RT60 {rt60} s")
    room = pra.ShoeBox(size, fs=sample_rate, materials=pra.Material(absorption), max_order=max_order)
    room.add_source(rng.uniform(WALL_MARGIN, size - WALL_MARGIN))
    room.add_microphone(rng.uniform(WALL_MARGIN, size - WALL_MARGIN))
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float64)
    direct = int(np.argmax(np.abs(rir)))  # the direct path: nothing reflected arrives louder
    rir = rir[direct:]
    return rir / rir[0]


def reverberate(samples: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """`samples` (samples,) convolved with `rir` (taps,), whose lag 0 is the direct path: the same
    length, nothing moved earlier or later, the tail past the end cut; scaled to the input's RMS.
    scipy's overlap-add convolution: ~5 ms per second of audio for a 0.5 s response."""
    from scipy.signal import oaconvolve

    wet = oaconvolve(samples.astype(np.float64), rir)[: len(samples)]
    power = float(np.mean(np.square(wet)))
    if power <= 0:
        return samples
    return (wet * math.sqrt(float(np.mean(np.square(samples, dtype=np.float64))) / power)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _butter(kind: str, edges: tuple[float, ...], sample_rate: int) -> np.ndarray:
    from scipy.signal import butter

    return butter(FILTER_ORDER, edges if len(edges) > 1 else edges[0], btype=kind, fs=sample_rate, output="sos")


def band_filter(samples: np.ndarray, kind: str, edges: tuple[float, ...], sample_rate: int) -> np.ndarray:
    """A Butterworth `kind` ("bandpass", "lowpass") filter run forwards and backwards (zero phase:
    nothing moves in time). ~3 ms per second of audio."""
    from scipy.signal import sosfiltfilt

    if len(samples) < 64:  # shorter than sosfiltfilt's padding: leave alone
        return samples
    return sosfiltfilt(_butter(kind, edges, sample_rate), samples.astype(np.float64))


def mulaw_quantize(samples: np.ndarray) -> np.ndarray:
    """G.711 mu-law (mu = 255) coding and decoding at 8 bits: compress, quantize, expand.
    Samples in [-1, 1] (clipped); zero stays zero."""
    x = np.clip(samples, -1.0, 1.0)
    compressed = np.sign(x) * np.log1p(MULAW_MU * np.abs(x)) / math.log1p(MULAW_MU)
    q = np.round(compressed * MULAW_LEVELS) / MULAW_LEVELS
    return np.sign(q) * np.expm1(np.abs(q) * math.log1p(MULAW_MU)) / MULAW_MU


def telephone(samples: np.ndarray, sample_rate: int, mulaw: bool) -> np.ndarray:
    """A narrow-band telephone channel: down to 8 kHz (soxr, linear phase), the sending side's
    300-3400 Hz band-pass, [G.711 mu-law,] the receiving side's band-pass, back to `sample_rate`.
    Same length. 0.7 ms per second of audio."""
    import soxr

    narrow = soxr.resample(samples, sample_rate, TELEPHONE_RATE) if sample_rate > TELEPHONE_RATE else samples
    narrow = band_filter(narrow, "bandpass", TELEPHONE_BAND, min(sample_rate, TELEPHONE_RATE))  # the sending side's filter
    if mulaw:
        narrow = mulaw_quantize(narrow)
    narrow = band_filter(narrow, "bandpass", TELEPHONE_BAND, min(sample_rate, TELEPHONE_RATE))  # the receiving side's
    band = soxr.resample(narrow, TELEPHONE_RATE, sample_rate) if sample_rate > TELEPHONE_RATE else narrow
    out = np.zeros(len(samples), dtype=np.float32)
    out[: min(len(band), len(out))] = band[: len(out)]
    return out


def shift_voice(samples: np.ndarray, sample_rate: int, semitones: float, formant_ratio: float) -> np.ndarray:
    """Pitch up by `semitones` and formants by `formant_ratio` with Praat's "Change gender"
    (PSOLA, Moulines & Charpentier 1990; formants by resampling) through praat-parselmouth; the
    duration and timing stay. Costs ~10 ms per second of audio (+1 ms for the pitch median)."""
    try:
        import parselmouth
        from parselmouth.praat import call
    except ImportError as e:
        raise ConfigError("augment.pitch_prob needs praat-parselmouth: pip install praat-parselmouth (or asr[train])") from e
    sound = parselmouth.Sound(samples.astype(np.float64), sample_rate)
    median = call(sound.to_pitch(pitch_floor=PITCH_FLOOR, pitch_ceiling=PITCH_CEILING), "Get quantile", 0, 0, 0.5, "Hertz")
    new_median = median * 2 ** (semitones / 12) if math.isfinite(median) else 0.0  # 0: no voiced frames, pitch kept
    changed = call(sound, "Change gender", PITCH_FLOOR, PITCH_CEILING, formant_ratio, new_median, 1.0, 1.0)
    shifted = np.asarray(changed.values[0], dtype=np.float32)
    out = np.zeros(len(samples), dtype=np.float32)
    out[: min(len(shifted), len(out))] = shifted[: len(out)]
    return out


def check_augment_config(config: AugmentConfig) -> None:
    """ConfigError naming the first `augment.*` waveform or VTLP option out of range."""
    for name in ("noise_prob", "reverb_prob", "telephone_prob", "lowpass_prob", "pitch_prob"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise ConfigError(f"augment.{name} must be in [0, 1], got {getattr(config, name)}")
    for name in ("noise_snr", "reverb_rt60", "lowpass_hz", "gain_db", "vtlp", "pitch_shift", "formant_shift"):
        bounds = getattr(config, name)
        if len(bounds) != 2 or bounds[0] > bounds[1]:
            raise ConfigError(f"augment.{name} must be [low, high] with low <= high, got {list(bounds)}")
    for name in ("reverb_rt60", "lowpass_hz", "vtlp", "formant_shift"):
        if getattr(config, name)[0] <= 0:
            raise ConfigError(f"augment.{name} must be positive, got {list(getattr(config, name))}")
    weights = (config.noise_colored, config.noise_babble, config.noise_files)
    if min(weights) < 0 or (config.noise_prob > 0 and sum(weights) <= 0):
        raise ConfigError("augment.noise_colored, noise_babble, noise_files: weights >= 0, not all 0 with noise_prob > 0")
    if config.noise_files > 0 and not config.noise_dir:
        raise ConfigError("augment.noise_files > 0 needs augment.noise_dir (a folder of noise audio)")
    if config.noise_dir and config.noise_files <= 0:
        raise ConfigError(f"augment.noise_dir={config.noise_dir} is set and augment.noise_files (its weight) is 0")
    if config.reverb_prob > 0 and config.reverb_bank < 1:
        raise ConfigError(f"augment.reverb_bank must be >= 1, got {config.reverb_bank}")


def vtlp_factor(config: AugmentConfig, seed: int, epoch: int, index: int) -> float:
    """Utterance `index`'s VTLP warp factor in `epoch`: uniform in augment.vtlp (1.0: none)."""
    low, high = config.vtlp
    if low == high:
        return float(low)
    return float(draw(seed, epoch, index, VTLP_STREAM).uniform(low, high))


class WaveAugment:
    """The waveform augmentations `config` switches on, for one training set (see the module
    docstring). `load_utterance(i)` gives the set's utterance i (for babble), `num_utterances`
    how many there are. Room impulse responses come from a bank of `config.reverb_bank` made
    here, once per run (seeded by `seed` alone), and shared by every DataLoader worker."""

    def __init__(
        self,
        config: AugmentConfig,
        sample_rate: int,
        seed: int,
        *,
        num_utterances: int = 0,
        load_utterance: Callable[[int], np.ndarray] | None = None,
    ):
        check_augment_config(config)
        self.config = config
        self.sample_rate = sample_rate
        self.seed = seed
        self.num_utterances = num_utterances
        self.load_utterance = load_utterance
        self.noise_files = list_noise_files(config.noise_dir) if config.noise_files > 0 and config.noise_prob > 0 else []
        self.rirs: list[np.ndarray] = []
        if config.reverb_prob > 0:
            rng = np.random.default_rng([seed, RIR_BANK_STREAM])
            low, high = config.reverb_rt60
            self.rirs = [room_impulse_response(float(rng.uniform(low, high)), sample_rate, rng) for _ in range(config.reverb_bank)]

    @staticmethod
    def wanted(config: AugmentConfig) -> bool:
        """Whether `config` switches on any waveform augmentation."""
        c = config
        return bool(
            c.noise_prob or c.reverb_prob or c.telephone_prob or c.lowpass_prob or tuple(c.gain_db) != (0.0, 0.0)
            or (c.pitch_prob and (tuple(c.pitch_shift) != (0.0, 0.0) or tuple(c.formant_shift) != (1.0, 1.0)))
        )

    def __call__(self, samples: np.ndarray, epoch: int, index: int) -> np.ndarray:
        """Utterance `index`'s samples (samples,) in `epoch`, augmented: (samples,) float32."""
        c, rate = self.config, self.sample_rate
        rng = draw(self.seed, epoch, index, VOICE_STREAM)
        if rng.random() < c.pitch_prob:
            samples = shift_voice(samples, rate, float(rng.uniform(*c.pitch_shift)), float(rng.uniform(*c.formant_shift)))
        rng = draw(self.seed, epoch, index, REVERB_STREAM)
        if rng.random() < c.reverb_prob:
            samples = reverberate(samples, self.rirs[int(rng.integers(len(self.rirs)))])
        rng = draw(self.seed, epoch, index, NOISE_STREAM)
        if rng.random() < c.noise_prob:
            samples = mix_at_snr(samples, self.noise(len(samples), index, rng), float(rng.uniform(*c.noise_snr)), rate)
        rng = draw(self.seed, epoch, index, TELEPHONE_STREAM)
        if rng.random() < c.telephone_prob:
            samples = telephone(samples, rate, c.telephone_mulaw)
        rng = draw(self.seed, epoch, index, LOWPASS_STREAM)
        if rng.random() < c.lowpass_prob:
            cutoff = min(float(rng.uniform(*c.lowpass_hz)), 0.45 * rate)
            samples = band_filter(samples, "lowpass", (cutoff,), rate)
        if tuple(c.gain_db) != (0.0, 0.0):
            samples = samples * 10 ** (draw(self.seed, epoch, index, GAIN_STREAM).uniform(*c.gain_db) / 20)
        return np.asarray(samples, dtype=np.float32)

    def noise(self, num_samples: int, index: int, rng: np.random.Generator) -> np.ndarray:
        """(num_samples,) noise of a kind drawn by the weights noise_colored, noise_babble, noise_files."""
        c = self.config
        weights = np.array([c.noise_colored, c.noise_babble if self.num_utterances > 1 else 0.0, c.noise_files])
        kind = int(rng.choice(3, p=weights / weights.sum())) if weights.sum() > 0 else 0
        if kind == 1:
            return self.babble(num_samples, index, rng)
        if kind == 2:
            return read_noise_file(self.noise_files[int(rng.integers(len(self.noise_files)))], num_samples, self.sample_rate, rng)
        return colored_noise(num_samples, float(rng.uniform(0.0, 2.0)), rng)

    def babble(self, num_samples: int, index: int, rng: np.random.Generator) -> np.ndarray:
        """3-7 other utterances of the training set, each at unit power and a random offset
        (looped to the length), summed. Costs their loading: ~5x that of the utterance itself."""
        assert self.load_utterance is not None
        talkers = int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1))
        others = rng.integers(self.num_utterances - 1, size=talkers)
        total = np.zeros(num_samples, dtype=np.float64)
        for other in others:
            other = int(other) + (other >= index)  # anyone but the utterance itself
            try:
                voice = self.load_utterance(other).astype(np.float64)
            except AudioError:
                continue
            power = float(np.mean(np.square(voice[active_mask(voice, self.sample_rate)]))) if len(voice) else 0.0
            if power > 0:
                total += loop_to_length(voice, num_samples, int(rng.integers(len(voice)))) / math.sqrt(power)
        return total

