"""Recognition with a checkpoint in torch: audio → features → model → log-probs on one device.
What happens around the model (segments, batches, decoding, word times, scoring) is
`asr.recognize`'s, shared with the torch-free `asr.runtime.OnnxRecognizer`; its names are
re-exported here for callers of this module."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from asr.align import Alignment, AlignmentError, Segment, ctc_viterbi_long, segment_spans, spans_of, unaligned_speech, word_index
from asr.checkpoint import load_checkpoint
from asr.config import Config
from asr.data.loader import UtteranceDataset, make_loader
from asr.data.manifest import Utterance
from asr.device import resolve_device
from asr.features import FeatureExtractor
from asr.models import build_model
from asr.recognize import (  # noqa: F401  (re-exported)
    DEFAULT_MAX_SEGMENT, EvaluationResult, LogProbSet, Recognition, RecognizerBase, collect_log_probs, decode_dataset,
    pad_log_probs, summary_table, tune_lm, write_recognitions,
)
from asr.text import CharTokenizer, label_utterances
from asr.tokens import BLANK_ID


class Recognizer(RecognizerBase):
    """A checkpoint's model with its feature extractor and tokenizer, on one device, in eval mode."""

    def __init__(self, model: torch.nn.Module, features: FeatureExtractor, tokenizer: CharTokenizer, config: Config):
        self.model, self.features = model, features
        super().__init__(tokenizer, config, timing=features)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto") -> "Recognizer":
        state = load_checkpoint(path)
        config: Config = state["config"]
        tokenizer: CharTokenizer = state["tokenizer"]
        features = FeatureExtractor(config.features)
        if state.get("cmvn_stats") is not None:
            features.set_cmvn_stats(state["cmvn_stats"]["mean"], state["cmvn_stats"]["var"])
        model = build_model(config.model, features.output_dim, tokenizer.vocab_size)
        model.load_state_dict(state["model"])
        target = resolve_device(device)
        recognizer = cls(model.to(target).eval(), features.to(target).eval(), tokenizer, config)
        if state.get("label_log_prior") is not None and config.train.label_prior_weight > 0:
            recognizer.label_log_prior = state["label_log_prior"].to(target)
        recognizer.train_max_duration = state.get("train_max_duration")
        return recognizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def outputs(
        self, audio: torch.Tensor, lengths: torch.Tensor, frames: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`log_probs`, and the frame head's log-probs (batch, frames, vocab) where the model has
        one and `frames` asks for them (else None), from one pass."""
        modules = (self.model, self.features)  # eval mode: no dropout, no dither
        was_training = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            feats, frame_lengths = self.features(audio.to(self.device), lengths.to(self.device))  # (batch, frames, dim)
            if frames and self.align_with_frame_head:
                return self.model(feats, frame_lengths, frames=True)
            log_probs, frame_lengths = self.model(feats, frame_lengths)
            return log_probs, frame_lengths, None
        finally:
            for m, mode in zip(modules, was_training):
                m.train(mode)

    @torch.inference_mode()
    def log_probs_long(self, audio: torch.Tensor, chunk_seconds: float = 20.0, overlap_seconds: float = 2.0, batch_size: int = 8) -> torch.Tensor:
        """Audio of any length (samples,) -> the model's log-probs (frames, vocab), on the model's
        device, computed in chunks of `chunk_seconds` that overlap by `overlap_seconds` on each
        side: each frame is taken from a chunk in which it has that much context (a recurrent
        model trained on utterances of seconds is not run over an hour at once), and frames
        line up across chunks (chunks start on a frame step). Memory grows with the chunk, and
        the result with the audio."""
        step = self.features.frame_step  # samples per output frame
        margin = max(round(overlap_seconds * self.sample_rate / step), 1)  # frames of context kept off each side
        width = max(round(chunk_seconds * self.sample_rate / step), 4 * margin)  # frames per chunk
        total = int(self.features.num_frames(len(audio)))
        hop = width - 2 * margin
        firsts = list(range(0, max(total - 2 * margin, 1), hop))  # each chunk's first frame
        out = torch.full((total, len(self.tokenizer.symbols)), math.nan, device=self.device)
        for i in range(0, len(firsts), batch_size):
            group = firsts[i : i + batch_size]
            pieces = [audio[f * step : (f + width) * step] for f in group]
            lengths = torch.tensor([len(p) for p in pieces])
            log_probs, frame_lengths = self.log_probs(torch.nn.utils.rnn.pad_sequence(pieces, batch_first=True), lengths)
            for f, lp, n in zip(group, log_probs, frame_lengths.tolist()):
                keep_from = 0 if f == 0 else margin  # the first chunk keeps its start, the last its end
                keep_to = n if f + n >= total else min(n, width - margin)
                out[f + keep_from : f + keep_to] = lp[keep_from:keep_to]
        return out

    def encode_batch(self, texts: Sequence[str], names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Transcripts -> their label ids padded (batch, max_labels) and counts (batch,); a text
        the tokenizer cannot read raises TokenizerError naming its `names` entry."""
        labels = [torch.tensor(self.tokenizer.encode(text, name), dtype=torch.long) for text, name in zip(texts, names)]
        targets = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True) if labels else torch.zeros(0, 0, dtype=torch.long)
        return targets, torch.tensor([len(x) for x in labels], dtype=torch.long)

    def alignment_scores(self, log_probs: torch.Tensor) -> torch.Tensor:
        """What forced alignment scores paths with: the log-probs (..., vocab), less weight * log
        prior for a model trained with label priors (the loss's own adjustment, asr.ctc.LabelPrior)."""
        if self.label_log_prior is None:
            return log_probs
        return log_probs - self.config.train.label_prior_weight * self.label_log_prior.to(log_probs.device)

    def align_long(
        self, audio: torch.Tensor, texts: Sequence[str], name: str = "recording", window: int = 2048, confidence_tokens: int = 30,
        filler: float = 0.1,
    ) -> tuple[Alignment, list[Segment], list[tuple[float, float]]]:
        """A long recording (samples,) and its transcript in segments (lines, sentences: phones
        for a phone model) -> the alignment of the whole, where each segment was found with its
        confidence (`asr.align.segment_spans`, over runs of `confidence_tokens`), and the
        stretches of speech of half a second or more that the transcript does not cover
        (`asr.align.unaligned_speech`): before, between and after the segments a filler may
        hold any frame at probability `filler`, so that speech missing from the transcript is
        not squeezed into the neighbouring words. Memory
        grows with the frames times `window`, not with frames times labels
        (`ctc_viterbi_long`); log-probs come in chunks (`log_probs_long`). Raises
        TokenizerError naming the segment it cannot read, AlignmentError when the transcript
        cannot be followed to its end."""
        ids = [torch.tensor(self.tokenizer.encode(text, f"{name} segment {i + 1}"), dtype=torch.long) for i, text in enumerate(texts)]
        space = self.word_separator
        between = [self.tokenizer.symbols.index(space)] if space is not None else []
        pieces, ranges, at = [], [], 0
        for i, labels in enumerate(ids):
            if not len(labels):
                raise AlignmentError(f"{name} segment {i + 1}: empty")
            if pieces and between:
                pieces.append(torch.tensor(between))
                at += len(between)
            pieces.append(labels)
            ranges.append((at, at + len(labels)))
            at += len(labels)
        if not pieces:
            raise AlignmentError(f"{name}: empty transcript: nothing to align")
        log_probs = self.log_probs_long(audio).cpu()  # (frames, vocab)
        gaps = torch.zeros(2 * at + 1, dtype=torch.bool)  # the states before, between (separators too) and after the segments
        gaps[: 2 * ranges[0][0] + 1] = gaps[2 * ranges[-1][1] :] = True
        for (_, end), (first, _) in zip(ranges, ranges[1:]):
            gaps[2 * end : 2 * first + 1] = True
        free = gaps.clone()
        free[1::2] = False  # of those, the blank states hold the filler
        garbage = math.log(filler)
        path, score, states = ctc_viterbi_long(self.alignment_scores(log_probs), torch.cat(pieces), window, BLANK_ID, free, garbage, return_states=True)
        if score == -math.inf:
            raise AlignmentError(f"{name}: the transcript could not be followed to its end within the audio "
                                 f"({len(log_probs)} frames, {at} labels; a larger window may help)")  # fmt: skip
        starts, ends = self.features.frame_times(len(log_probs))
        labels = torch.cat(pieces).tolist()
        separator = self.tokenizer.symbols.index(space) if space is not None else None
        tokens, words = spans_of(states, labels, log_probs, self.tokenizer.symbols, starts, ends, word_index(labels, separator))
        segments = segment_spans(path, log_probs, list(texts), ranges, starts, ends, confidence_tokens, BLANK_ID)
        in_gap = gaps[states.clamp(min=0)] & (states >= 0)  # (frames,)
        untranscribed = unaligned_speech(in_gap, log_probs, starts, ends, max(round(0.5 / self.features.frame_seconds), 1), garbage, BLANK_ID)
        return Alignment(name, tokens, words, score, len(log_probs)), segments, untranscribed

    def audio_batch(self, pieces: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (samples_i,) pieces -> (batch, samples) and (batch,) tensors."""
        return pad_log_probs([torch.from_numpy(p) for p in pieces])

    def dataset_outputs(self, utterances: Sequence[Utterance], batch_size: int, failed: list, progress: bool = False):
        """`RecognizerBase.dataset_outputs` through a DataLoader (audio read in its workers)."""
        utterances, dataset, loader = _dataset_loader(self, utterances, batch_size)
        failed.extend(dataset.rejected)
        batches = tqdm(loader, desc="decode", unit="batch", disable=not progress, leave=False)
        return utterances, _model_outputs(self, batches, failed)

    def stream(self, endpoint=None):
        """A `asr.stream.Stream` through this (streaming) model: audio in as it comes, partial and
        final results out; `endpoint`: an `asr.stream.EndpointConfig` (sherpa-onnx's rules by default)."""
        from asr.stream import Stream  # asr.stream sits above the models and decoders, beside this module

        return Stream(self, endpoint)


def _dataset_loader(recognizer: "Recognizer", utterances: Sequence[Utterance], batch_size: int):
    """Utterances labelled for the recognizer's tokenizer (phones for a phone model), their
    dataset (which lists rejected text) and an unshuffled loader over it."""
    utterances = label_utterances(utterances, recognizer.tokenizer)
    dataset = UtteranceDataset(utterances, recognizer.tokenizer, recognizer.sample_rate)
    return utterances, dataset, make_loader(dataset, sampler=None, batch_size=batch_size)


def _model_outputs(recognizer: Recognizer, batches: Iterable, failed: list) -> Iterator[tuple[list[str], list[str], list[torch.Tensor]]]:
    """Run features and model over loader batches: (ids, texts, one (frames, vocab) log-prob
    tensor per utterance) per batch; the batches' bad utterances are added to `failed`."""
    for batch in batches:
        failed.extend(batch.bad)
        if len(batch):
            log_probs, frame_lengths = recognizer.log_probs(batch.audio, batch.audio_lengths)  # (batch, frames, vocab)
            yield batch.ids, batch.texts, [lp[:n] for lp, n in zip(log_probs, frame_lengths.tolist())]


@dataclass
class AlignmentResult:
    alignments: list[Alignment]  # in manifest order, of those that could be aligned
    failed: list[tuple[str, str]]  # (utterance id, reason) that could not


def align_dataset(recognizer: Recognizer, utterances: Sequence[Utterance], batch_size: int = 32, progress: bool = False) -> AlignmentResult:
    """Align every utterance's transcript (its phones, for a phone model) to its audio. Utterances
    whose audio fails to load, whose text the tokenizer rejects, or whose transcript is empty or
    too long for the audio are listed in `failed`, not fatal."""
    _, dataset, loader = _dataset_loader(recognizer, utterances, batch_size)
    result = AlignmentResult([], list(dataset.rejected))
    for batch in tqdm(loader, desc="align", unit="batch", disable=not progress, leave=False):
        result.failed.extend(batch.bad)
        if len(batch):
            log_probs, frame_lengths, frame_log_probs = recognizer.outputs(batch.audio, batch.audio_lengths)  # (batch, frames, vocab)
            aligned, failed = recognizer.align_log_probs(log_probs, frame_lengths, batch.targets, batch.target_lengths, batch.ids, frame_log_probs)
            result.alignments.extend(aligned)
            result.failed.extend(failed)
    order = {u.id: i for i, u in enumerate(utterances)}  # both lists in manifest order
    result.alignments.sort(key=lambda a: order.get(a.id, len(order)))
    result.failed.sort(key=lambda f: order.get(f[0], len(order)))
    return result
