"""What recognition does around the model, whatever runs the model: files of any length cut into
segments, batched, decoded (greedy or beam + LM), word-timed and put back in order; a manifest
decoded and scored. No torch here: `asr.inference.Recognizer` runs a checkpoint in torch,
`asr.runtime.OnnxRecognizer` an exported model in onnxruntime, and both inherit this.

    RecognizerBase     transcribe_files, decode_log_probs, decode_nbest, word_times, align_log_probs
    decode_dataset     a manifest decoded and scored (`asr evaluate`)
    collect_log_probs, tune_lm    the model run once, the LM weights searched over its outputs

Arrays: what the subclass's `outputs` returns (torch tensors or numpy arrays) flows through
unchanged; `pad_log_probs` and the decoders and aligner take either.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass, replace
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from asr.align import Alignment, AlignmentError, Span, align_log_probs
from asr.audio import AudioError, audio_duration
from asr.config import Config, DecodeConfig
from asr.data.manifest import Utterance
from asr.decode import decode_greedy
from asr.decode.beam import LAYOUTS, decode_beam, search_options
from asr.decode.fusion import Fusion, make_fusion
from asr.fileio import atomic_write
from asr.metrics import ErrorCounts, PhoneErrors, score_cer, score_per, score_wer
from asr.segment import AudioSegment, Segmenter, SegmentOptions, read_blocks, stitch
from asr.text import CharTokenizer
from asr.timing import FrameTiming
from asr.tokens import BLANK_ID, SPACE
from asr.transcript import Alternative, Transcript, TranscriptSegment

DEFAULT_MAX_SEGMENT = 10.0  # s: max_segment for a model that does not say how long its training utterances were


def pad_log_probs(chunk: Sequence) -> tuple:
    """(frames_i, ...) arrays -> padded (batch, frames, ...) and lengths (batch,): numpy arrays
    for numpy input, tensors on the input's device for tensors."""
    if isinstance(chunk[0], np.ndarray):
        lengths = np.array([len(x) for x in chunk], dtype=np.int64)
        out = np.zeros((len(chunk), int(lengths.max()), *chunk[0].shape[1:]), dtype=chunk[0].dtype)
        for i, x in enumerate(chunk):
            out[i, : len(x)] = x
        return out, lengths
    import torch

    lengths = torch.tensor([len(x) for x in chunk], device=chunk[0].device)
    return torch.nn.utils.rnn.pad_sequence(list(chunk), batch_first=True), lengths


class _FileJob:
    """A file being transcribed: its segments arrive out of order (by batch) and are sorted by time."""

    def __init__(self, path: str):
        self.path = path
        self.error: str | None = None
        self.warnings: list[str] = []
        self.segments: list[tuple[int, TranscriptSegment, list[Alternative]]] = []  # (first sample, segment, its n best)
        self.read = False  # all its audio has been read
        self.duration = 0.0  # s read so far
        self.shown = 0.0  # s counted on the progress bar

    def count(self, blocks: Iterator[np.ndarray], rate: int) -> Iterator[np.ndarray]:
        for block in blocks:
            self.duration += len(block) / rate
            yield block

    def show(self, bar) -> None:
        """Move the progress bar to the end of the last segment decoded."""
        done = max((s.end for _, s, _ in self.segments), default=0.0)
        if done > self.shown:
            bar.update(done - self.shown)
            self.shown = done

    def transcript(self) -> Transcript:
        if self.error is not None:
            return Transcript(self.path, None, self.error, [], None, [], self.duration, self.warnings)
        ordered = sorted(self.segments, key=lambda s: s[0])
        segments = [s for _, s, _ in ordered if s.text]
        words = [w for s in segments for w in (s.words or [])] if any(s.words is not None for _, s, _ in ordered) else None
        nbest = ordered[0][2] if len(ordered) == 1 else []
        return Transcript(self.path, " ".join(s.text for s in segments), None, nbest, words, segments, self.duration, self.warnings)


class RecognizerBase:
    """A model's outputs turned into transcripts. A subclass gives `outputs` (audio -> log-probs),
    `audio_batch` (numpy pieces -> the batch `outputs` takes), `dataset_outputs` (a manifest's
    utterances through the model) and `device`; this class does the rest."""

    def __init__(self, tokenizer: CharTokenizer, config: Config, timing: FrameTiming):
        self.tokenizer, self.config, self.timing = tokenizer, config, timing
        self.fusion: Fusion | None = None
        self.label_log_prior = None  # (vocab,) of a model trained with label priors (an array of the subclass's kind)
        self.train_max_duration: float | None = None  # s, the longest training utterance (where the model says)
        # alignment reads the frame head where the model has one; False: CTC's spikes
        self.align_with_frame_head = bool(config.model.frame_head)
        self.set_decoder(config.decode)

    # -- what a subclass gives --------------------------------------------------------------

    @property
    def device(self):
        return "cpu"

    def outputs(self, audio, lengths, frames: bool = True) -> tuple:
        """audio (batch, samples) at `sample_rate`, lengths (batch,) -> the model's log-probs
        (batch, frames, vocab), frame lengths (batch,), and the frame head's log-probs where the
        model has one and `frames` asks for them (else None)."""
        raise NotImplementedError

    def audio_batch(self, pieces: Sequence[np.ndarray]) -> tuple:
        """float32 (samples_i,) pieces -> (batch, samples) audio and (batch,) lengths for `outputs`."""
        return pad_log_probs(list(pieces))

    def dataset_outputs(self, utterances: Sequence[Utterance], batch_size: int, failed: list, progress: bool = False):
        """(utterances labelled for the tokenizer, an iterator of (ids, texts, one (frames, vocab)
        log-prob array per utterance) per batch); what cannot be read or tokenized goes to `failed`."""
        raise NotImplementedError

    # -- decoding ---------------------------------------------------------------------------

    def set_decoder(self, decode: DecodeConfig) -> None:
        """Choose greedy or beam decoding (and load the LM it names) for later calls."""
        if decode.decoder not in ("greedy", "beam"):
            raise ValueError(f"decoder must be 'greedy' or 'beam', not {decode.decoder!r}")
        if decode.beam_layout not in LAYOUTS:
            raise ValueError(f"decode.beam_layout must be one of {', '.join(LAYOUTS)}, not {decode.beam_layout!r}")
        self.config.decode = decode
        self.fusion = None
        if decode.decoder == "beam" and decode.lm:
            self.fusion = make_fusion(decode.lm, self.tokenizer, decode.lm_unit, self.device, decode.oov_penalty, decode.lm_lookahead)

    @property
    def sample_rate(self) -> int:
        return self.config.features.sample_rate

    def log_probs(self, audio, lengths) -> tuple:
        """audio (batch, samples) float32 at `sample_rate`, lengths (batch,) -> the model's
        log-probs (batch, frames, vocab) and frame lengths (batch,)."""
        log_probs, frame_lengths, _ = self.outputs(audio, lengths, frames=False)
        return log_probs, frame_lengths

    def transcribe_batch(self, audio, lengths) -> list[str]:
        """audio (batch, samples) float32 at `sample_rate`, lengths (batch,) -> one text each."""
        return self.decode_log_probs(*self.log_probs(audio, lengths))

    @property
    def decode_pool(self) -> int:
        """How many utterances' log-probs to decode at once: beam search amortizes its fixed
        per-frame cost over a larger batch than the model's."""
        decode = self.config.decode
        return max(decode.batch_size, decode.beam_batch_size) if decode.decoder == "beam" else decode.batch_size

    def decode_log_probs(self, log_probs, lengths) -> list[str]:
        """log_probs (batch, frames, vocab), lengths (batch,) -> one text each, with the chosen decoder."""
        if self.config.decode.decoder == "greedy":
            return [self.tokenizer.decode(ids) for ids in decode_greedy(log_probs, lengths)]
        return [alternatives[0].text if alternatives else "" for alternatives in self.decode_nbest(log_probs, lengths, 1)]

    def decode_each(self, log_probs: Sequence) -> list[str]:
        """One text per utterance's (frames, vocab) log-probs (numpy or torch), in order: padded
        and decoded `decode_pool` at a time."""
        pool = self.decode_pool
        return [h for start in range(0, len(log_probs), pool) for h in self.decode_log_probs(*pad_log_probs(log_probs[start : start + pool]))]

    def decode_nbest(self, log_probs, lengths, n: int) -> list[list[Alternative]]:
        """log_probs (batch, frames, vocab), lengths (batch,) -> each utterance's `n` best
        transcripts, best first, by beam search with the decode config's options and LM."""
        decode = self.config.decode
        if decode.decoder != "beam":
            raise ValueError("n-best lists come from beam search: set the decoder to 'beam'")
        nbest = decode_beam(
            log_probs, lengths, blank_skip=decode.blank_skip, layout=decode.beam_layout, fusion=self.fusion, nbest=n, **search_options(decode),
        )
        return [[Alternative(self.tokenizer.decode(h.ids), h.score, h.acoustic, h.lm, h.num_words) for h in hyps] for hyps in nbest]

    # -- alignment --------------------------------------------------------------------------

    def align(self, audio, lengths, texts: Sequence[str], ids: Sequence[str] | None = None) -> list[Alignment]:
        """audio (batch, samples) float32 at `sample_rate`, lengths (batch,), one transcript each
        (phones for a phone model) -> each one's alignment: when each token and word was spoken.
        A transcript the tokenizer cannot read raises TokenizerError, one that cannot be aligned
        (empty, or too long for its audio) AlignmentError, each naming the utterance (`ids`)."""
        ids = list(ids) if ids is not None else [f"utterance {i}" for i in range(len(texts))]
        log_probs, frame_lengths, frame_log_probs = self.outputs(audio, lengths)
        alignments, failed = self.align_log_probs(log_probs, frame_lengths, *self.encode_batch(texts, ids), ids, frame_log_probs)
        if failed:
            raise AlignmentError("; ".join(reason for _, reason in failed))
        return alignments

    def encode_batch(self, texts: Sequence[str], names: Sequence[str]) -> tuple:
        """Transcripts -> their label ids padded (batch, max_labels) and counts (batch,), int64
        numpy arrays; a text the tokenizer cannot read raises TokenizerError naming its `names` entry."""
        labels = [self.tokenizer.encode(text, name) for text, name in zip(texts, names)]
        targets = np.zeros((len(labels), max((len(x) for x in labels), default=0)), dtype=np.int64)
        for i, x in enumerate(labels):
            targets[i, : len(x)] = x
        return targets, np.array([len(x) for x in labels], dtype=np.int64)

    @property
    def word_separator(self) -> str | None:
        """The label that ends a word (a character model's space); None where labels are not
        spelled into words (phones)."""
        return SPACE if self.tokenizer.kind == "char" else None

    def alignment_scores(self, log_probs):
        """What forced alignment scores paths with: the log-probs (..., vocab), less weight * log
        prior for a model trained with label priors (the loss's own adjustment, asr.ctc.LabelPrior)."""
        if self.label_log_prior is None:
            return log_probs
        return log_probs - self.config.train.label_prior_weight * self.label_log_prior

    def align_log_probs(self, log_probs, lengths, targets, target_lengths, ids: Sequence[str], frame_log_probs=None) -> tuple[list[Alignment], list[tuple[str, str]]]:
        """`asr.align.align_log_probs` with this model's symbols, frame times and word separator:
        in the frame head's log-probs where they are given (`outputs`), else in CTC's."""
        return align_log_probs(
            log_probs, lengths, targets, target_lengths, list(ids), self.tokenizer.symbols, self.timing.frame_times,
            self.word_separator, BLANK_ID, self.alignment_scores(log_probs), frame_log_probs,
        )

    def word_times(self, log_probs, lengths, texts: list[str], names: list[str], frame_log_probs=None) -> dict[str, list[Span]]:
        """log_probs (batch, frames, vocab), lengths (batch,), one transcript and name each -> each
        name's words (tokens, for a phone model) with their times: the transcript aligned to the
        log-probs it was decoded from, or to the frame head's (an empty transcript has no words)."""
        aligned, _ = self.align_log_probs(log_probs, lengths, *self.encode_batch(texts, names), names, frame_log_probs)
        return {a.id: (a.words or a.tokens) for a in aligned}

    # -- files of any length ----------------------------------------------------------------

    def segment_options(self, options: SegmentOptions | None = None) -> SegmentOptions:
        """`options` (default SegmentOptions()) with max_segment filled in where unset: the longest
        utterance the model was trained on, so no window is longer than what it learned from (a
        model that does not say: DEFAULT_MAX_SEGMENT). On the demo's dev set joined with a
        third of the joins without a pause, max_segment 6.1 s (the demo's) and 7 s gave 5.4 %
        greedy WER, 8.1 s 5.6 %, 10 s 6.0 % (the utterances alone: 5.9 %)."""
        options = replace(options) if options is not None else SegmentOptions()
        if options.max_segment is None:
            longest = self.train_max_duration
            options.max_segment = DEFAULT_MAX_SEGMENT if longest is None else max(longest, 4 * options.overlap + 1)
        options.check()
        return options

    def transcribe_files(
        self, paths: Sequence[str | os.PathLike], batch_size: int = 16, nbest: int = 1, word_timestamps: bool = False,
        segmenting: SegmentOptions | None = None, progress: bool = False,
    ) -> Iterator[Transcript]:
        """One Transcript per file, in order; a bad file gets its error and the rest go on.

        A file no longer than `max_segment` is decoded whole; a longer one is read in blocks and
        cut at pauses (`asr.segment.Segmenter`), a run of speech longer than max_segment cut
        into overlapping windows joined at a word boundary; segments are decoded in batches,
        several files' at once. nbest > 1: the n best of each segment (beam search only), also
        the file's where it is one segment; word_timestamps: when each word was spoken (the
        transcript force-aligned to the log-probs it was decoded from, or to the frame head's).
        progress: a bar in seconds of audio."""
        options = self.segment_options(segmenting)
        segmenter: Segmenter | None = None
        rate = self.sample_rate
        jobs: deque[_FileJob] = deque()
        pending: list[tuple[_FileJob, AudioSegment]] = []
        bar = tqdm(total=0, unit="s", desc="transcribe", disable=not progress, leave=False, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]")

        def flush(at_least: int = 1) -> None:
            """Decode the pending segments once they hold `at_least` windows."""
            if sum(len(s.windows) for _, s in pending) >= at_least:
                self._decode_segments(pending, nbest, word_timestamps, batch_size)
                pending.clear()

        def finished() -> Iterator[Transcript]:
            while jobs and jobs[0].read and not any(job is jobs[0] for job, _ in pending):
                job = jobs.popleft()
                bar.update(job.duration - job.shown)
                yield job.transcript()

        for path in paths:
            job = _FileJob(str(path))
            jobs.append(job)
            try:
                header = audio_duration(path)
                bar.total += header
                blocks = read_blocks(path, rate, options.block, job.warnings)
                if header <= options.max_segment:
                    audio = np.concatenate(list(blocks))
                    job.duration = len(audio) / rate
                    pending.append((job, AudioSegment(0, audio, [(0, len(audio))])))
                else:
                    segmenter = segmenter or Segmenter(options, rate, self.timing.frame_step)
                    for segment in segmenter.segments(job.count(blocks, rate)):
                        pending.append((job, segment))
                        flush(4 * batch_size)
                        job.show(bar)
            except AudioError as e:
                job.error = str(e)
            job.read = True
            flush(4 * batch_size)
            yield from finished()
        flush()
        yield from finished()
        bar.close()

    def _decode_segments(self, pending: list[tuple[_FileJob, AudioSegment]], nbest: int, word_timestamps: bool, batch_size: int) -> None:
        """Run the model over the segments' windows (in batches of similar length), join each
        segment's windows, decode, align, and add each segment's TranscriptSegment to its file.
        A segment that cannot be decoded is reported in its file's warnings with its time range."""
        if not pending:
            return
        rate = self.sample_rate
        step = self.timing.frame_step
        windows = [(i, k) for i, (_, segment) in enumerate(pending) for k in range(len(segment.windows))]
        outputs: dict[tuple[int, int], tuple] = {}
        failed: dict[int, str] = {}
        windows.sort(key=lambda w: -(pending[w[0]][1].windows[w[1]][1] - pending[w[0]][1].windows[w[1]][0]))
        for b in range(0, len(windows), batch_size):
            group = windows[b : b + batch_size]
            try:
                outputs.update(self._window_outputs(pending, group, word_timestamps))
            except (RuntimeError, ValueError):
                for w in group:  # one at a time, to find the one that fails
                    try:
                        outputs.update(self._window_outputs(pending, [w], word_timestamps))
                    except (RuntimeError, ValueError) as e:
                        failed[w[0]] = f"{type(e).__name__}: {e}"
        quiet = [BLANK_ID] + ([self.tokenizer.symbols.index(self.word_separator)] if self.word_separator else [])  # where stitch may hand over
        done: list[tuple] = []  # (segment index, log-probs (frames, vocab), frame head's or None)
        for i, (job, segment) in enumerate(pending):
            if i in failed:
                start = segment.start / rate
                job.warnings.append(f"{job.path}: {start:.2f}-{start + len(segment.audio) / rate:.2f} s not decoded: {failed[i]}")
                continue
            pieces = [(first // step, outputs[(i, k)][0]) for k, (first, _) in enumerate(segment.windows)]
            extra = [outputs[(i, k)][1] for k in range(len(segment.windows))] if word_timestamps and self.align_with_frame_head else None
            if len(pieces) == 1:
                done.append((i, pieces[0][1], extra[0] if extra else None))
                continue
            num_frames = int(self.timing.num_frames(len(segment.audio)))
            log_probs, frame_log_probs, _ = stitch(pieces, [c // step for c in segment.cuts], num_frames, quiet, extra)
            done.append((i, log_probs, frame_log_probs))
        pool = self.decode_pool
        for b in range(0, len(done), pool):
            group = done[b : b + pool]
            log_probs, lengths = pad_log_probs([lp for _, lp, _ in group])
            if nbest > 1:
                alternatives = self.decode_nbest(log_probs, lengths, nbest)
                texts = [a[0].text if a else "" for a in alternatives]
            else:
                alternatives = [[] for _ in group]
                texts = self.decode_log_probs(log_probs, lengths)
            words: dict[str, list[Span]] = {}
            if word_timestamps:
                names = [str(i) for i, _, _ in group]
                frame_log_probs = pad_log_probs([f for _, _, f in group])[0] if group[0][2] is not None else None
                words = self.word_times(log_probs, lengths, texts, names, frame_log_probs)
            for (i, _, _), text, alts in zip(group, texts, alternatives):
                job, segment = pending[i]
                start = segment.start / rate
                spans = [Span(s.text, s.start + start, s.end + start, s.confidence) for s in words.get(str(i), [])] if word_timestamps else None
                job.segments.append((segment.start, TranscriptSegment(start, start + len(segment.audio) / rate, text, spans), alts))

    def _window_outputs(self, pending: list[tuple[_FileJob, AudioSegment]], group: list[tuple[int, int]], frames: bool) -> dict[tuple[int, int], tuple]:
        """The model's log-probs (frames, vocab) of each (segment, window) in `group`, and the
        frame head's where `frames` asks for them and the model has one."""
        audio, lengths = self.audio_batch([pending[i][1].audio[slice(*pending[i][1].windows[k])] for i, k in group])
        log_probs, frame_lengths, frame_log_probs = self.outputs(audio, lengths, frames=frames)
        return {
            w: (log_probs[j, :n], frame_log_probs[j, :n] if frame_log_probs is not None else None)
            for j, (w, n) in enumerate(zip(group, frame_lengths.tolist()))
        }


@dataclass
class Recognition:
    id: str
    reference: str  # normalized as the tokenizer normalizes, so it compares with the hypothesis
    hypothesis: str


@dataclass
class EvaluationResult:
    recognitions: list[Recognition]
    failed: list[tuple[str, str]]  # (utterance id, reason) that could not be decoded
    words: ErrorCounts
    chars: ErrorCounts
    hours: float
    phones: PhoneErrors | None = None  # phone models: PER on the 39 scoring phones, per-phone S/D/I

    @property
    def wer(self) -> float:
        return self.words.rate

    @property
    def cer(self) -> float:
        return self.chars.rate


def decode_dataset(recognizer: RecognizerBase, utterances: Sequence[Utterance], batch_size: int = 32, progress: bool = False) -> EvaluationResult:
    """Decode every utterance and score it against its text. Utterances that fail to load or
    tokenize are listed in `failed`, not fatal."""
    recognitions: list[Recognition] = []
    failed: list[tuple[str, str]] = []
    utterances, outputs = recognizer.dataset_outputs(utterances, batch_size, failed, progress)
    pending: list[tuple] = []  # (id, text, log-probs) waiting for the decoder
    normalize = recognizer.tokenizer.normalize

    def decode_pending() -> None:
        hyps = recognizer.decode_log_probs(*pad_log_probs([lp for _, _, lp in pending]))
        recognitions.extend(Recognition(i, normalize(t), h) for (i, t, _), h in zip(pending, hyps))
        pending.clear()

    for ids, texts, log_probs in outputs:
        pending.extend(zip(ids, texts, log_probs))
        if len(pending) >= recognizer.decode_pool:
            decode_pending()
    if pending:
        decode_pending()
    refs = [r.reference for r in recognitions]
    hyps = [r.hypothesis for r in recognitions]
    decoded = {r.id for r in recognitions}
    hours = sum(u.duration for u in utterances if u.id in decoded) / 3600
    phones = score_per(refs, hyps) if recognizer.tokenizer.kind == "phone" else None
    return EvaluationResult(recognitions, failed, score_wer(refs, hyps), score_cer(refs, hyps), hours, phones)


@dataclass
class LogProbSet:
    """Model outputs for a dataset, kept so several decoders (or LM weights) can share them."""

    ids: list[str]
    references: list[str]  # normalized
    log_probs: list  # one (frames, vocab) array per utterance (on the recognizer's device)
    failed: list[tuple[str, str]]


def collect_log_probs(recognizer: RecognizerBase, utterances: Sequence[Utterance], batch_size: int = 32) -> LogProbSet:
    """Run the model over every utterance once (bad ones listed in `failed`)."""
    result = LogProbSet([], [], [], [])
    _, outputs = recognizer.dataset_outputs(utterances, batch_size, result.failed)
    for ids, texts, log_probs in outputs:
        result.ids.extend(ids)
        result.references.extend(recognizer.tokenizer.normalize(t) for t in texts)
        result.log_probs.extend(log_probs)
    return result


def tune_lm(
    recognizer: RecognizerBase, log_probs: LogProbSet, weights: Sequence[float], bonuses: Sequence[float], progress: bool = False
) -> list[tuple[float, float, float]]:
    """WER of beam search with the recognizer's LM for every (lm_weight, word_bonus) pair, best first."""
    base = recognizer.config.decode
    results = []
    pairs = [(a, b) for a in weights for b in bonuses]
    for alpha, beta in tqdm(pairs, desc="tune", disable=not progress, leave=False):
        recognizer.config.decode = replace(base, lm_weight=alpha, word_bonus=beta)
        hyps = recognizer.decode_each(log_probs.log_probs)
        results.append((alpha, beta, score_wer(log_probs.references, hyps).rate))
    recognizer.config.decode = base
    return sorted(results, key=lambda r: (r[2], r[0], r[1]))


def write_recognitions(path: str | os.PathLike, result: EvaluationResult) -> None:
    """One JSON line per utterance: id, ref, hyp, and its word-level S/D/I counts; atomically."""
    with atomic_write(path) as f:
        for r in result.recognitions:
            ref = r.reference
            counts = score_wer([ref], [r.hypothesis])
            record = {
                "id": r.id, "ref": ref, "hyp": r.hypothesis, "sub": counts.substitutions, "del": counts.deletions,
                "ins": counts.insertions, "ref_words": counts.reference_length,
            }  # fmt: skip
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        for utt_id, reason in result.failed:
            f.write(json.dumps({"id": utt_id, "error": reason}, ensure_ascii=False) + "\n")


def summary_table(rows: Iterable[tuple[str, str]]) -> str:
    """Two-column text table."""
    rows = list(rows)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
