"""Recognition with a trained model: audio → features → model → greedy or beam decode → text, batched,
all on one device; and the dataset-level loop that `evaluate`, `transcribe` and the trainer's
dev check share."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
from tqdm import tqdm

from asr.audio import AudioError, load_audio
from asr.checkpoint import load_checkpoint
from asr.config import Config, DecodeConfig
from asr.data.loader import UtteranceDataset, make_loader
from asr.data.manifest import Utterance
from asr.decode import decode_greedy
from asr.decode.beam import LAYOUTS, decode_beam
from asr.decode.fusion import Fusion, make_fusion
from asr.device import resolve_device
from asr.features import FeatureExtractor
from asr.fileio import atomic_write
from asr.metrics import ErrorCounts, PhoneErrors, score_cer, score_per, score_wer
from asr.models import build_model
from asr.text import CharTokenizer, label_utterances


@dataclass
class Alternative:
    """One of an utterance's n best transcripts, with its beam-search scores (natural log)."""

    text: str
    score: float  # acoustic + lm_weight * lm + word_bonus * num_words: what ranks the list
    acoustic: float  # ln P_ctc(text | audio), over all its alignments
    lm: float  # ln P_lm of its words, </s> included (0 without an LM)
    num_words: int  # words (or tokens) the LM scored


@dataclass
class Transcript:
    """What `Recognizer.transcribe_files` says of one file."""

    path: str
    text: str | None  # None when the file could not be read
    error: str | None  # why not
    nbest: list[Alternative]  # with nbest > 1: the n best, best first (text is the first's)


class Recognizer:
    """A model with its feature extractor and tokenizer, on one device, in eval mode."""

    def __init__(self, model: torch.nn.Module, features: FeatureExtractor, tokenizer: CharTokenizer, config: Config):
        self.model, self.features, self.tokenizer, self.config = model, features, tokenizer, config
        self.fusion: Fusion | None = None
        self.set_decoder(config.decode)

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

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto") -> "Recognizer":
        state = load_checkpoint(path)
        config: Config = state["config"]
        tokenizer: CharTokenizer = state["tokenizer"]
        features = FeatureExtractor(config.features)
        model = build_model(config.model, features.output_dim, tokenizer.vocab_size)
        model.load_state_dict(state["model"])
        target = resolve_device(device)
        return cls(model.to(target), features.to(target), tokenizer, config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def sample_rate(self) -> int:
        return self.config.features.sample_rate

    @torch.inference_mode()
    def log_probs(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (batch, samples) float32 at `sample_rate`, lengths (batch,) -> the model's
        log-probs (batch, frames, vocab) and frame lengths (batch,), on the model's device."""
        modules = (self.model, self.features)  # eval mode: no dropout, no dither
        was_training = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            feats, frame_lengths = self.features(audio.to(self.device), lengths.to(self.device))  # (batch, frames, dim)
            return self.model(feats, frame_lengths)
        finally:
            for m, mode in zip(modules, was_training):
                m.train(mode)

    def transcribe_batch(self, audio: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """audio (batch, samples) float32 at `sample_rate`, lengths (batch,) -> one text each."""
        return self.decode_log_probs(*self.log_probs(audio, lengths))

    @property
    def decode_pool(self) -> int:
        """How many utterances' log-probs to decode at once: beam search amortizes its fixed
        per-frame cost over a larger batch than the model's."""
        decode = self.config.decode
        return max(decode.batch_size, decode.beam_batch_size) if decode.decoder == "beam" else decode.batch_size

    def decode_log_probs(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """log_probs (batch, frames, vocab), lengths (batch,) -> one text each, with the chosen decoder."""
        if self.config.decode.decoder == "greedy":
            return [self.tokenizer.decode(ids) for ids in decode_greedy(log_probs, lengths)]
        return [alternatives[0].text if alternatives else "" for alternatives in self.decode_nbest(log_probs, lengths, 1)]

    def decode_nbest(self, log_probs: torch.Tensor, lengths: torch.Tensor, n: int) -> list[list[Alternative]]:
        """log_probs (batch, frames, vocab), lengths (batch,) -> each utterance's `n` best
        transcripts, best first, by beam search with the decode config's options and LM."""
        decode = self.config.decode
        if decode.decoder != "beam":
            raise ValueError("n-best lists come from beam search: set the decoder to 'beam'")
        nbest = decode_beam(
            log_probs,
            lengths,
            beam_size=decode.beam_size,
            token_top_k=decode.token_top_k,
            token_min_logp=decode.token_min_logp,
            token_cum_prob=decode.token_cum_prob,
            beam_threshold=decode.beam_threshold,
            blank_skip=decode.blank_skip,
            layout=decode.beam_layout,
            fusion=self.fusion,
            lm_weight=decode.lm_weight,
            word_bonus=decode.word_bonus,
            nbest=n,
        )
        return [[Alternative(self.tokenizer.decode(h.ids), h.score, h.acoustic, h.lm, h.num_words) for h in hyps] for hyps in nbest]

    def transcribe_files(self, paths: Sequence[str | os.PathLike], batch_size: int = 16, nbest: int = 1) -> Iterator[Transcript]:
        """One Transcript per file, in order; a bad file gets its error and the rest go on.
        nbest > 1: each also carries its n best transcripts (beam search only)."""
        for start in range(0, len(paths), batch_size):
            chunk = [str(p) for p in paths[start : start + batch_size]]
            loaded: dict[str, torch.Tensor] = {}
            errors: dict[str, str] = {}
            for p in chunk:
                try:
                    loaded[p] = torch.from_numpy(load_audio(p, self.sample_rate))
                except AudioError as e:
                    errors[p] = str(e)
            decoded: dict[str, list[Alternative]] = {}
            texts: dict[str, str] = {}
            if loaded:
                names = list(loaded)
                lengths = torch.tensor([len(loaded[n]) for n in names])  # (batch,)
                audio = torch.nn.utils.rnn.pad_sequence([loaded[n] for n in names], batch_first=True)  # (batch, samples)
                if nbest > 1:
                    decoded = dict(zip(names, self.decode_nbest(*self.log_probs(audio, lengths), nbest)))
                    texts = {n: alternatives[0].text if alternatives else "" for n, alternatives in decoded.items()}
                else:
                    texts = dict(zip(names, self.transcribe_batch(audio, lengths)))
            for p in chunk:
                yield Transcript(p, texts.get(p), errors.get(p), decoded.get(p, []))


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


def decode_dataset(
    recognizer: Recognizer, utterances: Sequence[Utterance], batch_size: int = 32, progress: bool = False
) -> EvaluationResult:
    """Decode every utterance and score it against its text. Utterances that fail to load or
    tokenize are listed in `failed`, not fatal."""
    utterances, dataset, loader = _dataset_loader(recognizer, utterances, batch_size)
    recognitions: list[Recognition] = []
    failed = list(dataset.rejected)
    pending: list[tuple[str, str, torch.Tensor]] = []  # (id, text, log-probs) waiting for the decoder
    normalize = recognizer.tokenizer.normalize

    def decode_pending() -> None:
        hyps = recognizer.decode_log_probs(*pad_log_probs([lp for _, _, lp in pending]))
        recognitions.extend(Recognition(i, normalize(t), h) for (i, t, _), h in zip(pending, hyps))
        pending.clear()

    batches = tqdm(loader, desc="decode", unit="batch", disable=not progress, leave=False)
    for ids, texts, log_probs in _model_outputs(recognizer, batches, failed):
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
    log_probs: list[torch.Tensor]  # one (frames, vocab) per utterance, on the recognizer's device
    failed: list[tuple[str, str]]

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Padded (batch, frames, vocab) log-probs and (batch,) lengths, in order."""
        for start in range(0, len(self.log_probs), batch_size):
            yield pad_log_probs(self.log_probs[start : start + batch_size])


def pad_log_probs(chunk: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames_i, vocab) log-probs -> padded (batch, frames, vocab) and lengths (batch,)."""
    lengths = torch.tensor([len(x) for x in chunk], device=chunk[0].device)
    return torch.nn.utils.rnn.pad_sequence(list(chunk), batch_first=True), lengths


@torch.inference_mode()
def collect_log_probs(recognizer: Recognizer, utterances: Sequence[Utterance], batch_size: int = 32) -> LogProbSet:
    """Run features and model over every utterance once (bad ones listed in `failed`)."""
    _, dataset, loader = _dataset_loader(recognizer, utterances, batch_size)
    result = LogProbSet([], [], [], list(dataset.rejected))
    for ids, texts, log_probs in _model_outputs(recognizer, loader, result.failed):
        result.ids.extend(ids)
        result.references.extend(recognizer.tokenizer.normalize(t) for t in texts)
        result.log_probs.extend(log_probs)
    return result


def tune_lm(
    recognizer: Recognizer, log_probs: LogProbSet, weights: Sequence[float], bonuses: Sequence[float], progress: bool = False
) -> list[tuple[float, float, float]]:
    """WER of beam search with the recognizer's LM for every (lm_weight, word_bonus) pair, best first."""
    from dataclasses import replace

    base = recognizer.config.decode
    results = []
    pairs = [(a, b) for a in weights for b in bonuses]
    for alpha, beta in tqdm(pairs, desc="tune", disable=not progress, leave=False):
        recognizer.config.decode = replace(base, lm_weight=alpha, word_bonus=beta)
        hyps = [h for lp, n in log_probs.batches(recognizer.decode_pool) for h in recognizer.decode_log_probs(lp, n)]
        results.append((alpha, beta, score_wer(log_probs.references, hyps).rate))
    recognizer.config.decode = base
    return sorted(results, key=lambda r: (r[2], r[0], r[1]))


def write_recognitions(path: str | os.PathLike, result: EvaluationResult) -> None:
    """One JSON line per utterance: id, ref, hyp, and its word-level S/D/I counts; atomically."""
    with atomic_write(path) as f:
        for r in result.recognitions:
            ref = r.reference
            counts = score_wer([ref], [r.hypothesis])
            f.write(
                json.dumps(
                    {
                        "id": r.id,
                        "ref": ref,
                        "hyp": r.hypothesis,
                        "sub": counts.substitutions,
                        "del": counts.deletions,
                        "ins": counts.insertions,
                        "ref_words": counts.reference_length,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
        for utt_id, reason in result.failed:
            f.write(json.dumps({"id": utt_id, "error": reason}, ensure_ascii=False) + "\n")


def summary_table(rows: Iterable[tuple[str, str]]) -> str:
    """Two-column text table."""
    rows = list(rows)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
