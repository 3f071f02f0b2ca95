"""Streaming recognition: audio in as it comes, partial text out while the person speaks, a final
result at each endpoint. The shape sherpa-onnx and Vosk users know:

    stream = recognizer.stream()
    for samples in source:                       # any size: 1 sample to minutes, any sample rate
        stream.accept_waveform(samples, rate)
        if stream.is_endpoint():
            print(stream.result().text)          # the utterance, final
            stream.reset()                       # the next one starts where the audio is
        else:
            print(stream.partial().text, end="\r")
    print(stream.finish().text)

or `stream.feed(samples, rate)`, which does that loop's bookkeeping and returns `StreamResult`s
("partial" when the text changed, "final" at an endpoint), the events `asr stream --json` prints.

Inside, one stage per box, each incremental and equal to its offline self on the same audio:
soxr's ResampleStream (other rates) -> `FeatureStream` (asr/feature_stream.py) -> `EncoderStream`
(a unidirectional or latency-controlled model, asr/models/encoder.py) -> `GreedyStream` /
`BeamStream` (asr/decode/incremental.py: the beam and its LM state kept across chunks).

Endpoints are sherpa-onnx's three rules (sherpa-onnx/csrc/endpoint.h, defaults from its
OnlineRecognizerConfig): an endpoint when the trailing silence (frames whose best label is blank)
reaches 2.4 s with nothing decoded, or 1.2 s after something was decoded, or the utterance
reaches 20 s. At an endpoint the final result is made (its words force-aligned as `asr transcribe
--word-timestamps` times them) and `reset` drops every per-utterance state, so memory stays flat
however long the stream: the features' and the model's states are a fixed size and go on.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np
import torch

from asr.align import Span, word_index
from asr.config import ConfigError
from asr.decode.incremental import make_stream_decoder
from asr.feature_stream import FeatureStream
from asr.features import STREAMING_CMVN_KINDS
from asr.models.encoder import EncoderStream


ENDPOINT_UNIT_FRAMES = 4  # a unidirectional model's frames between two asks of the endpoint rules in `feed` (120 ms at 30 ms a frame)


class StreamError(ValueError):
    """Input a stream cannot take (NaN or inf samples, a bad rate, audio after `finish`); the
    stream's state is untouched, so it can go on (or be reset)."""


@dataclass
class EndpointRule:
    """An endpoint when the trailing silence and the utterance are at least this long (s); with
    `must_contain_nonsilence`, only once something was decoded. 0 = no condition."""

    must_contain_nonsilence: bool
    min_trailing_silence: float
    min_utterance_length: float

    def fires(self, decoded: bool, trailing_silence: float, utterance_length: float) -> bool:
        if self.must_contain_nonsilence and not decoded:
            return False
        return trailing_silence >= self.min_trailing_silence and utterance_length >= self.min_utterance_length


@dataclass
class EndpointConfig:
    """sherpa-onnx's three rules and defaults; `enabled=False`: no endpoints (one utterance until finish)."""

    rule1: EndpointRule = field(default_factory=lambda: EndpointRule(False, 2.4, 0.0))  # silence, nothing said
    rule2: EndpointRule = field(default_factory=lambda: EndpointRule(True, 1.2, 0.0))  # silence after speech
    rule3: EndpointRule = field(default_factory=lambda: EndpointRule(False, 0.0, 20.0))  # a long utterance
    enabled: bool = True


@dataclass
class StreamResult:
    """One utterance of the stream, so far (partial) or final; times in s from the stream's start."""

    text: str
    start: float
    end: float
    words: list[Span]
    final: bool = False

    def _spoken(self) -> "StreamResult":
        """start and end on the words where there are some (else the utterance's stretch of the stream)."""
        if self.words:
            self.start, self.end = self.words[0].start, self.words[-1].end
        return self

    def event(self) -> dict:
        """The JSON event `asr stream --json` and the server send (a partial's confidences are null:
        only the final's words are aligned)."""
        return {
            "type": "final" if self.final else "partial", "text": self.text, "start": round(self.start, 3), "end": round(self.end, 3),
            "words": [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3), "confidence": None if math.isnan(w.confidence) else round(w.confidence, 3)} for w in self.words],
        }



def check_streamable(config) -> None:
    """ConfigError unless the checkpoint's model and features can stream."""
    if config.model.direction == "bidirectional":
        raise ConfigError(
            "this model is bidirectional: it reads whole utterances and cannot stream; train one with "
            "model.direction=latency_controlled or unidirectional (configs/demo_streaming.yaml), or use `asr transcribe`"
        )
    if config.features.cmvn not in STREAMING_CMVN_KINDS:
        raise ConfigError(
            f"this model normalizes features per utterance (features.cmvn={config.features.cmvn}), which needs the whole "
            "utterance: train a streaming model with features.cmvn=global or running"
        )


def algorithmic_latency(features, model_config) -> float:
    """Seconds of audio a streaming model waits for before a sample's frame is final: the chunk and
    its right context (latency-controlled) or one frame (unidirectional), in model frames, plus the
    feature window (the analysis window and the frames stacked onto it)."""
    frames = model_config.chunk_frames + model_config.right_context_frames if model_config.direction == "latency_controlled" else 1
    config = features.config
    window = (config.frame_length_ms + (config.stack_frames - 1) * config.frame_shift_ms) / 1000
    return frames * features.frame_seconds + window


class Stream:
    """One audio stream through a streaming `Recognizer` (see the module docstring)."""

    def __init__(self, recognizer, endpoint: EndpointConfig | None = None):
        check_streamable(recognizer.config)
        self.recognizer = recognizer
        self.endpoint = endpoint or EndpointConfig()
        self.features = FeatureStream(recognizer.features)
        self.encoder = EncoderStream(recognizer.model)
        self.decoder = make_stream_decoder(recognizer.config.decode, recognizer.fusion)
        self.frame_seconds = recognizer.features.frame_seconds
        self.sample_rate = recognizer.sample_rate
        self._feature_device = recognizer.features.window.device
        # frames between two asks of the endpoint rules in `feed`: the model's chunk (a latency-
        # controlled model's outputs come a chunk at a time), else ENDPOINT_UNIT_FRAMES
        self.endpoint_unit = recognizer.config.model.chunk_frames if recognizer.config.model.direction == "latency_controlled" else ENDPOINT_UNIT_FRAMES
        self._events: list[StreamResult] | None = None  # inside feed / close: the events so far
        self._start_stream()

    def _start_stream(self) -> None:
        self.features.reset()
        self.encoder.reset()
        self._resampler, self._input_rate = None, None
        self.frames = 0  # model frames decoded since the stream began
        self.finished = False
        self._last_partial = ""
        self._start_utterance()

    def _start_utterance(self) -> None:
        self.decoder.reset()
        self._best_at = -1  # the frame count `_best_cache` was asked at
        self.utterance_frame = self.frames  # the first frame of the current utterance
        self._log_probs: list[torch.Tensor] = []  # this utterance's, for the final word times
        self._frame_log_probs: list[torch.Tensor] = []

    # -- input ---------------------------------------------------------------------------------

    def accept_waveform(self, samples, sample_rate: int) -> None:
        """The next samples of the stream: float in [-1, 1] (or int16), any length, at any rate
        (resampled to the model's by soxr, in a stream of its own for that rate)."""
        self.push(samples, sample_rate)
        self.advance(*self.encoder.drain())

    def push(self, samples, sample_rate: int) -> None:
        """`accept_waveform` up to the model: the samples' feature frames wait in `encoder` for a
        caller that runs many streams' models together (`EncoderStream.run_batch`) and hands
        each stream its outputs (`events`)."""
        if self.finished:
            raise StreamError("accept_waveform after finish(): call reset() to start a new stream")
        audio = self._check(samples, sample_rate)
        if self._input_rate is None:  # the stream's first samples set its rate
            self._input_rate = sample_rate
            if sample_rate != self.sample_rate:
                import soxr

                self._resampler = soxr.ResampleStream(sample_rate, self.sample_rate, 1, dtype="float32")
        elif sample_rate != self._input_rate:
            raise StreamError(f"the sample rate changed from {self._input_rate} to {sample_rate} Hz within a stream: reset() first")
        self._push_resampled(self._resampler.resample_chunk(audio) if self._resampler is not None else audio)

    def _push_resampled(self, audio: np.ndarray) -> None:
        self.encoder.push(self.features.accept(torch.from_numpy(audio).to(self._feature_device)))

    @staticmethod
    def _check(samples, sample_rate: int) -> np.ndarray:
        if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise StreamError(f"sample_rate must be a positive integer, not {sample_rate!r}")
        audio = np.asarray(samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else samples)
        if audio.dtype == np.int16:
            audio = audio.astype(np.float32) / 32768.0
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise StreamError(f"samples must be one channel, shape (n,), not {audio.shape}")
        if not np.isfinite(audio).all():
            bad = int((~np.isfinite(audio)).sum())
            raise StreamError(f"{bad} of {len(audio)} samples are NaN or inf: the chunk was dropped, the stream goes on")
        return audio

    def advance(self, log_probs: torch.Tensor, frame_log_probs: torch.Tensor | None = None) -> None:
        """The model's next outputs (frames, vocab) into the decoder. Inside `feed` and `close`
        the endpoint rules are asked after every `endpoint_unit` frames of the stream (not after
        each call), so where the stream's endpoints fall, and so its final results, do not
        depend on how the audio was cut into chunks: `asr stream` and the server say the same."""
        if len(log_probs) == 0:
            return
        log_probs = log_probs.float().cpu()  # the decoders run on the CPU (numba), whatever the model's device
        frame_log_probs = frame_log_probs.float().cpu() if frame_log_probs is not None else None
        at = 0
        while at < len(log_probs):
            n = len(log_probs) - at
            if self._events is not None:  # up to the next unit boundary, then the endpoint rules
                n = min(n, self.endpoint_unit - self.frames % self.endpoint_unit)
            self.decoder.advance(log_probs[at : at + n])
            self._log_probs.append(log_probs[at : at + n])
            if frame_log_probs is not None:
                self._frame_log_probs.append(frame_log_probs[at : at + n])
            self.frames += n
            at += n
            if self._events is not None and self.frames % self.endpoint_unit == 0 and self.is_endpoint():
                self._end_utterance()

    def _end_utterance(self) -> None:
        """An endpoint inside `feed` / `close`: the utterance's final result is an event, a new one starts."""
        final = self.result()
        self.reset()
        if final.text:
            self._events.append(final)

    # -- output --------------------------------------------------------------------------------

    @property
    def utterance_seconds(self) -> float:
        return (self.frames - self.utterance_frame) * self.frame_seconds

    def _best(self) -> tuple[list[int], list[int]]:
        """The decoder's best so far, asked once per new frame (a backtrack over the utterance)."""
        if self._best_at != self.frames:
            self._best_cache, self._best_at = self.decoder.best(), self.frames
        return self._best_cache

    def is_endpoint(self) -> bool:
        """Whether one of the endpoint rules fires now (see `EndpointConfig`)."""
        if not self.endpoint.enabled or self.frames == self.utterance_frame:
            return False
        labels, _ = self._best()
        silence = self.decoder.trailing_blanks * self.frame_seconds
        rules = (self.endpoint.rule1, self.endpoint.rule2, self.endpoint.rule3)
        return any(rule.fires(bool(labels), silence, self.utterance_seconds) for rule in rules)

    def partial(self) -> StreamResult:
        """The best text of the current utterance so far, words timed by where their labels were emitted."""
        labels, frames = self._best()
        return self._result(labels, frames, final=False)

    def result(self) -> StreamResult:
        """The current utterance, final: the decoder's last word (with the LM's end of sentence),
        words force-aligned to the utterance's log-probs. Call `reset` after it to go on."""
        labels, frames = self.decoder.finish()
        result = self._result(labels, frames, final=True)
        if result.text and self._log_probs:
            result.words = self._aligned_words(result.text) or result.words
        return result._spoken()

    def finish(self) -> StreamResult:
        """The end of the audio: the frames still waiting for look-ahead are run, and the last
        utterance's final result returned. accept_waveform raises afterwards, until reset()."""
        if not self.finished:
            if self._resampler is not None:
                self._push_resampled(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            self.encoder.push(self.features.finish())
            self.advance(*self.encoder.finish())
            self.finished = True
        return self.result()

    def reset(self) -> None:
        """After an endpoint: a new utterance, where the audio is (the per-utterance state dropped).
        After finish() or an error you want to start over from: a new stream, its clock at 0."""
        if self.finished:
            self._start_stream()
        else:
            self._start_utterance()
            self._last_partial = ""

    def feed(self, samples, sample_rate: int) -> list[StreamResult]:
        """accept_waveform, then what happened: a "final" event (and a reset) at each endpoint the
        new frames reached, then a "partial" one when the current utterance's text changed."""
        self.push(samples, sample_rate)
        return self.events(*self.encoder.drain())

    def events(self, log_probs: torch.Tensor, frame_log_probs: torch.Tensor | None = None) -> list[StreamResult]:
        """`advance`, as `feed` does it: the events of the model's next outputs."""
        with self._collecting() as events:
            self.advance(log_probs, frame_log_probs)
        labels, frames = self._best()
        text = self.recognizer.tokenizer.decode(labels)
        if text != self._last_partial:  # the words and their times only for a text that changed
            self._last_partial = text
            events.append(self._result(labels, frames, final=False))
        return events

    def close(self) -> list[StreamResult]:
        """finish(), as events: the finals of the endpoints the last frames reached and of the last utterance."""
        with self._collecting() as events:
            final = self.finish()
        return events + ([final] if final.text else [])

    @contextmanager
    def _collecting(self):
        """Inside: `advance` asks the endpoint rules every `endpoint_unit` frames and collects
        each endpoint's final into the list it yields."""
        self._events = []
        try:
            yield self._events
        finally:
            self._events = None

    # -- times ---------------------------------------------------------------------------------

    def _result(self, labels: list[int], frames: list[int], final: bool) -> StreamResult:
        """The labels and the frames they were emitted at -> a result whose words (tokens, for a
        phone model) span from their first label's frame to their last's."""
        recognizer = self.recognizer
        symbols, span, first = recognizer.tokenizer.symbols, recognizer.features.frame_span, self.utterance_frame
        tokens = [Span(symbols[label], *span(first + t), math.nan) for label, t in zip(labels, frames)]
        separator = recognizer.word_separator
        words_of = word_index(labels, symbols.index(separator) if separator is not None else None)
        words = tokens if words_of is None else []
        for word, run in groupby(zip(words_of or [], tokens), key=lambda pair: pair[0]):
            pieces = [token for _, token in run]
            if word >= 0:  # -1: the separator between words
                words.append(Span("".join(p.text for p in pieces), pieces[0].start, pieces[-1].end, math.nan))
        start, end = span(first)[0], span(max(self.frames - 1, first))[1]
        return StreamResult(recognizer.tokenizer.decode(labels), start, end, words, final)._spoken()

    def _aligned_words(self, text: str) -> list[Span]:
        """The final text force-aligned to the utterance's log-probs (in the frame head's where the
        model has one), its times moved from the utterance's start to the stream's."""
        recognizer = self.recognizer
        log_probs = torch.cat(self._log_probs)[None]  # (1, frames, vocab)
        frame_log_probs = torch.cat(self._frame_log_probs)[None] if self._frame_log_probs and recognizer.align_with_frame_head else None
        try:
            spans = recognizer.word_times(log_probs, torch.tensor([log_probs.shape[1]]), [text], ["stream"], frame_log_probs)["stream"]
        except ValueError:  # a text the aligner cannot take (TokenizerError, AlignmentError): keep the emission times
            return []
        offset = self.recognizer.features.frame_span(self.utterance_frame)[0] if self.utterance_frame else 0.0
        return [Span(s.text, s.start + offset, s.end + offset, s.confidence) for s in spans]

