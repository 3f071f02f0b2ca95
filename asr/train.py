"""The training loop: AdamW, warm-up then cosine decay, gradient clipping, bf16 autocast on CUDA,
atomic checkpoints each epoch, best checkpoint by dev WER, a JSON-lines metrics log (and
TensorBoard), exact resume, augmentation (asr/augment.py, asr/augment_wave.py), optional torch.compile.

Data-parallel under `torchrun` (asr/distributed.py): every rank trains a DistributedDataParallel
replica on its own share of each epoch's batches; the loss is normalized by the group's label
count, so the averaged gradient is that of the whole group's batch. Rank 0 alone writes
checkpoints, logs and the progress bar; every rank reads last.pt to resume.

One function per step, icefall-style: `train` = `build_run` (data, model, optimizer, schedule),
`resume_run`, then `run_epochs`: each epoch `train_one_epoch` (whose step is `compute_loss`), then
`validate` and the checkpoints (`save_epoch`).
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from asr import distributed
from asr.augment import SpecAugment
from asr.checkpoint import load_checkpoint, save_checkpoint
from asr.config import Config, config_to_dict
from asr.ctc import LabelPrior, ctc_loss
from asr.data.loader import Batch, BucketBatchSampler, UtteranceDataset, make_loader, placeholder_batch
from asr.data.manifest import Utterance, read_manifest
from asr.audio import AudioError
from asr.features import TRAINED_CMVN_KINDS, FeatureExtractor, compute_cmvn_stats
from asr.frame_targets import IGNORE, frame_targets
from asr.inference import Recognizer, decode_dataset
from asr.models import build_model
from asr.text import CharTokenizer, build_tokenizer, label_utterances
from asr.train_log import MetricsLog

LAST, BEST = "last.pt", "best.pt"  # checkpoint names inside train.out_dir
CMVN_STATS_UTTERANCES = 1000  # training utterances (at most) whose features make the global CMVN statistics


class TrainingError(RuntimeError):
    """A training run that cannot start or go on (no data, nothing to resume from)."""


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so `--resume` continues exactly."""

    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of `epoch` already done
    step: int = 0  # optimizer steps taken
    best_wer: float = math.inf  # best dev WER so far
    skipped_infeasible: int = 0  # utterances whose labels could not fit their frames
    skipped_bad_audio: int = 0  # utterances whose audio failed to load
    skipped_nonfinite_steps: int = 0  # optimizer steps skipped for a non-finite gradient
    train_seconds: float = 0.0  # wall time spent training, summed over runs

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class StepStats:
    """Sums over the steps since the last log line, kept on the device until logged."""

    loss_sum: torch.Tensor
    label_sum: torch.Tensor
    audio_seconds: float = 0.0
    steps: int = 0
    grad_norms: list[float] = field(default_factory=list)
    frame_losses: list[torch.Tensor] = field(default_factory=list)  # the frame head's, this rank's, per step

    @classmethod
    def zeros(cls, device: torch.device) -> "StepStats":
        return cls(torch.zeros((), device=device), torch.zeros((), device=device))

    def add(
        self, loss_sum: torch.Tensor, label_sum: torch.Tensor, audio_seconds: float, grad_norm: float, frame_loss: torch.Tensor | None = None
    ) -> None:
        self.loss_sum += loss_sum
        self.label_sum += label_sum
        self.audio_seconds += audio_seconds
        self.steps += 1
        self.grad_norms.append(grad_norm)
        if frame_loss is not None:
            self.frame_losses.append(frame_loss.detach())

    def summarize(self, progress: Progress, lr: float, elapsed: float, context: distributed.DistContext) -> dict[str, Any]:
        """The metrics-log line for these steps, over the whole group (a collective: every rank calls)."""
        sums = torch.stack([self.loss_sum, self.label_sum.to(self.loss_sum.dtype)])
        sums = torch.cat([sums, torch.tensor([self.audio_seconds], device=self.loss_sum.device, dtype=sums.dtype)])
        loss_total, labels_total, audio_total = distributed.all_reduce_sum(sums, context).tolist()  # group totals
        record = {
            "step": progress.step,
            "epoch": progress.epoch,
            "loss": loss_total / max(labels_total, 1.0),
            "lr": lr,
            "grad_norm": float(np.mean(self.grad_norms)),
            "audio_s_per_s": audio_total / max(elapsed, 1e-9),
            "skipped_infeasible": progress.skipped_infeasible,
        }
        if self.frame_losses:  # this rank's mean over its steps (the loss above holds it too, weighted)
            record["frame_loss"] = float(torch.stack(self.frame_losses).mean())
        return record


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float):
    """Linear warm-up to 1, then cosine decay to `min_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def compute_loss(
    model: torch.nn.Module,
    features: FeatureExtractor,
    batch: Batch,
    device: torch.device,
    amp: bool,
    augment: SpecAugment | None = None,
    label_prior: LabelPrior | None = None,
    frame_loss_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Features [VTLP] → [SpecAugment] → model → [label prior] → CTC [+ the frame head's cross-entropy].
    Returns (summed loss, summed label count, feasible mask (batch,), the frame head's mean
    cross-entropy per timed frame or None); infeasible utterances contribute nothing to either sum.

    With a frame head (`model.frame_head`), the loss adds frame_loss_weight x its mean
    cross-entropy per frame x the batch's label count, so that after the trainer divides by the
    label count the objective is CTC per label + weight x cross-entropy per frame."""
    audio = batch.audio.to(device, non_blocking=True)  # (batch, samples)
    targets = batch.targets.to(device, non_blocking=True)  # (batch, max_labels)
    target_lengths = batch.target_lengths.to(device, non_blocking=True)  # (batch,)
    warp = batch.warp.to(device) if batch.warp is not None else None  # (batch,) VTLP factors, training mode only
    with torch.no_grad():
        feats, frame_lengths = features(audio, batch.audio_lengths.to(device), warp)  # (batch, frames, dim)
        if augment is not None:
            feats = augment(feats, frame_lengths)  # (batch, frames, dim)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else contextlib.nullcontext()
    with autocast:
        log_probs, frame_lengths, frame_log_probs = model(feats, frame_lengths, frames=True)  # (batch, frames, vocab), float32
    if label_prior is not None:
        log_probs = label_prior.adjust(log_probs, frame_lengths)  # (batch, frames, vocab)
    losses, feasible = ctc_loss(log_probs, frame_lengths, targets, target_lengths)  # (batch,), (batch,)
    label_sum = (target_lengths * feasible).sum()
    loss_sum = losses.sum()
    frame_loss = None
    if frame_log_probs is not None:
        frame_loss = frame_cross_entropy(frame_log_probs, frame_lengths, batch, features)
        loss_sum = loss_sum + frame_loss_weight * frame_loss * label_sum
    return loss_sum, label_sum, feasible, frame_loss


def frame_cross_entropy(frame_log_probs: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch, features: FeatureExtractor) -> torch.Tensor:
    """The frame head's mean cross-entropy over the batch's timed frames (asr.frame_targets);
    0, still tied to the head's weights (every rank's step must reach them), where none is timed."""
    frames = frame_log_probs.shape[1]
    if batch.intervals is None or frames == 0:
        return frame_log_probs.sum() * 0.0
    centres = torch.tensor(features.frame_centres(frames), dtype=torch.float64, device=frame_log_probs.device)
    targets = frame_targets(*batch.intervals, centres, frame_lengths)  # (batch, frames)
    timed = int((targets != IGNORE).sum())
    if timed == 0:
        return frame_log_probs.sum() * 0.0
    flat = frame_log_probs.reshape(-1, frame_log_probs.shape[-1])
    return torch.nn.functional.nll_loss(flat, targets.reshape(-1), ignore_index=IGNORE, reduction="sum") / timed


def clip_gradients(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm; return it. One host sync per step, as torch's own AMP
    GradScaler does, to skip a step whose gradient is not finite."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm)


def validate(recognizer: Recognizer, utterances, batch_size: int) -> dict[str, float]:
    result = decode_dataset(recognizer, utterances, batch_size=batch_size)
    record = {"dev_wer": result.wer, "dev_cer": result.cer, "dev_utterances": len(result.recognitions)}
    if result.phones is not None:  # phone models: dev_wer is the error rate over training phones
        record["dev_per"] = result.phones.rate
    return record


def count_bad_audio(
    batch: Batch, progress: Progress, log: Callable[[dict[str, Any]], None], context: distributed.DistContext
) -> None:
    """Count and log the utterances of `batch` whose audio failed to load (collate left them out)."""
    progress.skipped_bad_audio += len(batch.bad)
    for utt_id, reason in batch.bad:
        log({"event": "bad_audio", "id": utt_id, "reason": reason})
        if not context.is_main:
            print(f"rank {context.rank}: skipping bad audio: {reason}", file=sys.stderr)


def train_one_epoch(
    *,
    model: torch.nn.Module,
    features: FeatureExtractor,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    config: Config,
    progress: Progress,
    device: torch.device,
    log: Callable[[dict[str, Any]], None],
    bar,
    deadline: float,
    save_state: Callable[[str], None],
    augment: SpecAugment | None = None,
    context: distributed.DistContext = distributed.DistContext(),
    label_prior: LabelPrior | None = None,
) -> bool:
    """Train through the rest of `progress.epoch`. Returns False if the time limit or
    train.max_steps stopped it. `model` is what runs the step (the DDP wrapper under torchrun).
    Every rank makes the same calls in the same order, so their collectives always pair up."""
    model.train()
    if augment is not None:
        augment.train()
    stats = StepStats.zeros(device)
    started = time.perf_counter()
    sample_rate = config.features.sample_rate
    for batch in loader:
        count_bad_audio(batch, progress, log, context)
        progress.batch_in_epoch += 1
        real_utterances = len(batch)
        if real_utterances == 0:
            if not context.is_distributed:
                continue
            batch = placeholder_batch(sample_rate)  # this rank must still join the all-reduce
        loss_sum, label_sum, feasible, frame_loss = compute_loss(
            model, features, batch, device, config.train.amp, augment, label_prior, config.train.frame_loss_weight
        )
        # Normalize by the group's label count: DDP averages gradients over ranks, so the step
        # follows the mean loss per label over every rank's batch (one process: loss_sum / labels).
        group_labels = distributed.all_reduce_sum(label_sum.detach().clone(), context)
        optimizer.zero_grad(set_to_none=True)
        (loss_sum * context.world_size / group_labels.clamp(min=1)).backward()
        grad_norm = clip_gradients(model, config.optim.grad_clip)  # equal on every rank after the all-reduce
        if real_utterances:
            progress.skipped_infeasible += int((~feasible).sum())
        if math.isfinite(grad_norm):
            optimizer.step()
        else:
            progress.skipped_nonfinite_steps += 1
            log({"event": "nonfinite_gradient", "step": progress.step, "ids": batch.ids})
        scheduler.step()
        progress.step += 1
        audio_seconds = float(batch.audio_lengths.sum()) / sample_rate if real_utterances else 0.0
        stats.add(loss_sum.detach(), label_sum, audio_seconds, grad_norm, frame_loss)
        bar.update(1)
        if progress.step % config.train.log_every == 0:
            record = stats.summarize(progress, scheduler.get_last_lr()[0], time.perf_counter() - started, context)
            log(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
            stats = StepStats.zeros(device)
            started = time.perf_counter()
        if config.train.save_every_steps and progress.step % config.train.save_every_steps == 0:
            save_state(LAST)
        stop = bool(config.train.max_steps and progress.step >= config.train.max_steps) or time.perf_counter() > deadline
        if distributed.any_rank(stop, context):
            return False
    return True


def train(config: Config, resume: bool = False, show_progress: bool = True) -> Path:
    """Train a model as `config` says; return the output directory (checkpoints + metrics log).
    Under torchrun, every rank calls this; they train one model together."""
    try:
        context = distributed.setup(config.train.device)
    except distributed.DistributedError as e:
        raise TrainingError(str(e)) from e
    try:
        return _train(config, resume, show_progress, context)
    finally:
        distributed.teardown(context)


def _train(config: Config, resume: bool, show_progress: bool, context: distributed.DistContext) -> Path:
    """Build (or resume) the run, then train it with the metrics log open."""
    run = build_run(config, context, resume)
    if resume:
        resume_run(run)
    log = MetricsLog.open(run.out_dir, context, config.train.tensorboard)
    try:
        log_start(run, log, resume)
        run_epochs(run, log, show_progress)
    finally:
        log.close()
    return run.out_dir


@dataclass
class TrainingRun:
    """What one run trains, on what, and how far it has come: made by `build_run`, put back by
    `resume_run`, advanced by `run_epochs`; `save` writes it to a checkpoint."""

    config: Config
    context: distributed.DistContext
    out_dir: Path  # checkpoints and the metrics log
    tokenizer: CharTokenizer
    dataset: UtteranceDataset  # training utterances the tokenizer accepts
    dev_utts: list[Utterance]  # empty without data.dev
    features: FeatureExtractor
    model: torch.nn.Module  # what checkpoints hold
    step_model: torch.nn.Module  # what runs the training step: `model`, wrapped in DDP and/or compiled
    augment: SpecAugment | None  # None when SpecAugment is off
    optimizer: torch.optim.Optimizer
    sampler: BucketBatchSampler
    scheduler: torch.optim.lr_scheduler.LambdaLR
    total_steps: int  # optimizer steps of the whole run (the schedule's length)
    label_prior: LabelPrior | None = None  # with train.label_prior_weight > 0
    cmvn_stats: dict[str, Any] | None = None  # features.cmvn global / running: {"mean", "var", "frames"}, set on `features`
    progress: Progress = field(default_factory=Progress)

    def save(self, name: str) -> None:
        """Write out_dir/`name` with weights, config, tokenizer and everything `resume_run` needs.
        A collective: every rank calls, rank 0 writes (the skip counts summed over the group)."""
        rng = {"torch": torch.get_rng_state()}
        if self.context.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.context.device).cpu()
        progress, context = self.progress, self.context
        skipped = [progress.skipped_infeasible, progress.skipped_bad_audio, progress.skipped_nonfinite_steps]
        ranks = distributed.gather_objects({"rng": rng, "skipped": skipped}, context)  # a collective: all ranks call
        if not context.is_main:
            return
        group_progress = progress.to_dict()
        for i, key in enumerate(("skipped_infeasible", "skipped_bad_audio", "skipped_nonfinite_steps")):
            group_progress[key] = sum(r["skipped"][i] for r in ranks)
        training_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "progress": group_progress,
            "rng": rng,
            "world_size": context.world_size,
        }
        if context.is_distributed:
            training_state["rng_per_rank"] = [r["rng"] for r in ranks]
        save_checkpoint(
            self.out_dir / name, model=self.model, config=self.config, tokenizer=self.tokenizer, training_state=training_state,
            label_log_prior=self.label_prior.log_prior if self.label_prior is not None else None,
            train_max_duration=max(u.duration for u in self.dataset.utterances) / min(self.config.augment.speed_factors or [1.0]) + 2 * self.config.augment.pad_silence,
            cmvn_stats=self.cmvn_stats,
        )


def build_run(config: Config, context: distributed.DistContext, resume: bool = False) -> TrainingRun:
    """Seed, then data, model, optimizer, sampler and schedule: in this order, which fixes every
    random draw (initial weights, dropout, SpecAugment, batch order). With features.cmvn global or
    running, the CMVN statistics too, unless `resume` (then `resume_run` reads them back)."""
    out_dir = Path(config.train.out_dir)
    if context.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if config.train.num_threads > 0:
        torch.set_num_threads(config.train.num_threads)
    device = context.device
    seed_everything(config.train.seed)
    tokenizer, dataset, dev_utts = load_training_data(config)
    features = FeatureExtractor(config.features).to(device)
    cmvn_stats = None
    if config.features.cmvn in TRAINED_CMVN_KINDS and not resume:
        cmvn_stats = training_cmvn_stats(config, dataset, features, context)
        features.set_cmvn_stats(cmvn_stats["mean"], cmvn_stats["var"])
    model = build_model(config.model, features.output_dim, tokenizer.vocab_size).to(device)
    augment = SpecAugment(config.augment, features.static_dim, config.features.subsample).to(device)
    augment = augment if augment.enabled else None
    step_model = wrap_step_model(model, config, context)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas), weight_decay=config.optim.weight_decay
    )
    sampler = build_sampler(config, dataset, context)
    total_steps = count_steps(config, sampler)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.optim.warmup_steps, total_steps, config.optim.min_lr_ratio)
    )
    return TrainingRun(
        config=config, context=context, out_dir=out_dir, tokenizer=tokenizer, dataset=dataset, dev_utts=dev_utts,
        features=features, model=model, step_model=step_model, augment=augment, optimizer=optimizer,
        sampler=sampler, scheduler=scheduler, total_steps=total_steps,
        label_prior=LabelPrior(tokenizer.vocab_size, config.train.label_prior_weight, config.train.label_prior_momentum) if config.train.label_prior_weight > 0 else None,
        cmvn_stats=cmvn_stats,
    )


def training_cmvn_stats(
    config: Config, dataset: UtteranceDataset, features: FeatureExtractor, context: distributed.DistContext
) -> dict[str, Any]:
    """The statistics features.cmvn global and running normalize with, {"mean", "var" (static_dim,),
    "frames"}: over at most CMVN_STATS_UTTERANCES training utterances, drawn by a random.Random
    of their own (every other draw stays as it was), without augmentation; utterances whose audio
    fails to load are left out. Every rank computes the same."""
    chosen = sorted(random.Random(config.train.seed).sample(range(len(dataset)), min(len(dataset), CMVN_STATS_UTTERANCES)))
    loaded = []

    def audios():
        for index in chosen:
            try:
                samples = dataset.load_audio(index)
            except AudioError:
                continue
            loaded.append(index)
            yield torch.from_numpy(samples)

    try:
        mean, var, frames = compute_cmvn_stats(features, audios())
    except ValueError as e:
        raise TrainingError(f"{config.data.train}: features.cmvn={config.features.cmvn}: {e}") from e
    if context.is_main:
        print(f"features.cmvn={config.features.cmvn}: statistics of {frames} frames from {len(loaded)} training utterances")
    return {"mean": mean, "var": var, "frames": frames}


def load_training_data(config: Config) -> tuple[CharTokenizer, UtteranceDataset, list[Utterance]]:
    """The tokenizer data.unit asks for, the training set (labelled, at most data.max_duration
    long) and the dev utterances."""
    if not config.data.train:
        raise TrainingError("data.train is empty: give the path of a training manifest")
    tokenizer = build_tokenizer(config.data)
    train_utts = [u for u in read_manifest(config.data.train) if u.duration <= config.data.max_duration]
    train_utts = label_utterances(train_utts, tokenizer)
    dataset = training_dataset(config, train_utts, tokenizer)
    if len(dataset) == 0:
        raise TrainingError(f"{config.data.train}: no usable training utterances")
    if dataset.timed and not any(it is not None for it in dataset.intervals):
        raise TrainingError(
            f"{config.data.train}: model.frame_head learns from timed transcripts, and no row has times "
            "(words + word_starts + word_ends for characters, phone_times + phone_ends for phones); "
            "train without it: model.frame_head=false"
        )
    dev_utts = read_manifest(config.data.dev) if config.data.dev else []
    return tokenizer, dataset, dev_utts


def training_dataset(config: Config, utterances: list[Utterance], tokenizer: CharTokenizer) -> UtteranceDataset:
    """The training set as config.augment augments it (speed, silence, concatenation, waveform
    augmentation, VTLP draws), with times for the frame head where model.frame_head asks."""
    return UtteranceDataset(
        utterances, tokenizer, config.features.sample_rate, speed_factors=config.augment.speed_factors,
        pad_silence=config.augment.pad_silence, concat=config.augment.concat, seed=config.train.seed,
        timed=config.model.frame_head, augment=config.augment,
    )


def wrap_step_model(model: torch.nn.Module, config: Config, context: distributed.DistContext) -> torch.nn.Module:
    """What runs the training step: `model` itself, in DistributedDataParallel under torchrun,
    compiled with train.compile."""
    step_model = model
    if context.is_distributed:
        # DDP broadcasts rank 0's initial weights and averages gradients in backward.
        device = context.device
        step_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        torch.manual_seed(config.train.seed + context.rank)  # distinct dropout / SpecAugment draws per rank
    if config.train.compile:  # batch size and length change every step: compile for dynamic shapes
        step_model = torch.compile(step_model, dynamic=True)
    return step_model


def build_sampler(config: Config, dataset: UtteranceDataset, context: distributed.DistContext) -> BucketBatchSampler:
    """Length-bucketed batches of at most data.batch_frames feature frames (or data.batch_seconds),
    this rank's share of them under torchrun."""
    frames_per_second = 1000.0 / config.features.frame_shift_ms  # feature frames before subsampling
    max_frames = config.data.batch_frames or config.data.batch_seconds * frames_per_second
    try:
        augmented = config.augment.concat > 0 or config.augment.pad_silence > 0
        return BucketBatchSampler(
            [u.duration * frames_per_second for u in dataset.utterances], max_frames, seed=config.train.seed,
            num_replicas=context.world_size, rank=context.rank, sortagrad=config.data.sortagrad,
            epoch_lengths=(lambda epoch: [d * frames_per_second for d in dataset.item_durations(epoch)]) if augmented else None,
        )
    except ValueError as e:
        raise TrainingError(f"{config.data.train}: {e}") from e


def count_steps(config: Config, sampler: BucketBatchSampler) -> int:
    """Optimizer steps of the whole run: every epoch's batches, capped at train.max_steps."""
    total_steps = 0
    for epoch in range(config.train.epochs):
        sampler.set_epoch(epoch)
        total_steps += len(sampler)
    if config.train.max_steps:
        total_steps = min(total_steps, config.train.max_steps)
    return total_steps


def resume_run(run: TrainingRun) -> None:
    """Put back weights, optimizer, schedule, progress and this rank's RNG from out_dir/last.pt."""
    path = run.out_dir / LAST
    state = load_checkpoint(path)
    if "training_state" not in state:
        raise TrainingError(f"{path}: holds no training state to resume from")
    run.model.load_state_dict(state["model"])
    training_state = state["training_state"]
    run.optimizer.load_state_dict(training_state["optimizer"])
    run.scheduler.load_state_dict(training_state["scheduler"])
    if run.label_prior is not None and "label_log_prior" in state:
        run.label_prior.log_prior = state["label_log_prior"].to(run.context.device)
    if run.config.features.cmvn in TRAINED_CMVN_KINDS:
        run.cmvn_stats = state.get("cmvn_stats")
        if run.cmvn_stats is None:
            raise TrainingError(f"{path}: holds no CMVN statistics, which features.cmvn={run.config.features.cmvn} needs")
        run.features.set_cmvn_stats(run.cmvn_stats["mean"], run.cmvn_stats["var"])
    run.progress = progress = Progress(**training_state["progress"])
    restore_rng(training_state, run.context, run.config.train.seed + 1_000_003 * progress.step)
    if run.context.rank:  # the checkpoint's skip counts are group totals; rank 0 carries them on
        progress.skipped_infeasible = progress.skipped_bad_audio = progress.skipped_nonfinite_steps = 0


def log_start(run: TrainingRun, log: MetricsLog, resume: bool) -> None:
    """The run's first metrics-log lines: rejected transcripts (also printed) and the start record."""
    dataset, context = run.dataset, run.context
    if dataset.rejected and context.is_main:
        log.write({"event": "rejected_text", "count": len(dataset.rejected), "examples": dataset.rejected[:5]})
        print(f"skipping {len(dataset.rejected)} training utterance(s) the tokenizer rejects, e.g. {dataset.rejected[0][1]}")
    if dataset.untimed and context.is_main:
        log.write({"event": "untimed", "count": len(dataset.untimed), "examples": dataset.untimed[:5]})
        print(f"{len(dataset.untimed)} training utterance(s) train without the frame head: bad times, e.g. {dataset.untimed[0][1]}")
    log.write({"event": "start", "resume": resume, "step": run.progress.step, "device": str(context.device),
               "config": config_to_dict(run.config), "train_utterances": len(dataset),
               "parameters": sum(p.numel() for p in run.model.parameters()), "world_size": context.world_size,
               **({"cmvn_stats_frames": run.cmvn_stats["frames"]} if run.cmvn_stats is not None else {})})


def run_epochs(run: TrainingRun, log: MetricsLog, show_progress: bool) -> None:
    """Train epoch after epoch until train.epochs, train.max_steps or train.time_limit_s; after each,
    validate (when due) and save last.pt, and best.pt when the dev WER improved."""
    config, progress, context = run.config, run.progress, run.context
    recognizer = Recognizer(run.model, run.features, run.tokenizer, config)
    started = time.perf_counter()
    deadline = started + config.train.time_limit_s if config.train.time_limit_s > 0 else math.inf
    bar = tqdm(total=run.total_steps, initial=progress.step, desc="train", unit="step",
               disable=not (show_progress and context.is_main), dynamic_ncols=True)
    try:
        while progress.epoch < config.train.epochs:
            run.sampler.set_epoch(progress.epoch, start_batch=progress.batch_in_epoch)
            run.dataset.set_epoch(progress.epoch)
            loader = make_loader(run.dataset, run.sampler, num_workers=config.data.num_workers)
            finished_epoch = train_one_epoch(
                model=run.step_model, features=run.features, loader=loader, optimizer=run.optimizer,
                scheduler=run.scheduler, config=config, progress=progress, device=context.device, log=log.write,
                bar=bar, deadline=deadline, save_state=run.save, augment=run.augment, context=context, label_prior=run.label_prior,
            )
            if finished_epoch:
                progress.epoch += 1
                progress.batch_in_epoch = 0
            record = end_epoch_record(run, recognizer, bar, finished_epoch)
            progress.train_seconds += time.perf_counter() - started
            started = time.perf_counter()
            save_epoch(run, log, record)
            if not finished_epoch:
                break
    finally:
        bar.close()


def end_epoch_record(run: TrainingRun, recognizer: Recognizer, bar, finished_epoch: bool) -> dict[str, Any]:
    """The metrics-log line that ends an epoch (or a stopped run); rank 0 adds the dev error rates
    every train.eval_every_epochs epochs and at the end."""
    config, progress = run.config, run.progress
    last_epoch = progress.epoch >= config.train.epochs or not finished_epoch
    record: dict[str, Any] = {"event": "epoch_end" if finished_epoch else "stopped", "epoch": progress.epoch, "step": progress.step}
    if run.dev_utts and run.context.is_main and (last_epoch or progress.epoch % config.train.eval_every_epochs == 0):
        record.update(validate(recognizer, run.dev_utts, config.decode.batch_size))
        if "dev_per" in record:  # phone models: the 39-phone PER is the figure to read
            bar.write(f"epoch {progress.epoch}: dev PER {record['dev_per']:.2%} (39 phones)")
        else:
            bar.write(f"epoch {progress.epoch}: dev WER {record['dev_wer']:.2%} CER {record['dev_cer']:.2%}")
    return record


def save_epoch(run: TrainingRun, log: MetricsLog, record: dict[str, Any]) -> None:
    """Log the epoch's line, save last.pt, and best.pt when the dev WER improved (every epoch
    without a dev set). Every rank calls: saving is a collective."""
    is_best = "dev_wer" in record and record["dev_wer"] < run.progress.best_wer
    if is_best:
        run.progress.best_wer = record["dev_wer"]
    log.write(record)
    run.save(LAST)
    if distributed.any_rank(is_best or not run.dev_utts, run.context):  # rank 0 decides; all join the save
        run.save(BEST)


def restore_rng(training_state: dict[str, Any], context: distributed.DistContext, fallback_seed: int) -> None:
    """Put back this rank's RNG state from a checkpoint. A checkpoint from a group of another
    size has no state for this rank: reseed it instead (training goes on, not bit-exactly)."""
    per_rank = training_state.get("rng_per_rank")
    if per_rank is not None and len(per_rank) == context.world_size:
        rng = per_rank[context.rank]
    elif context.rank == 0 and training_state.get("world_size", 1) == context.world_size:
        rng = training_state["rng"]
    else:
        torch.manual_seed(fallback_seed + context.rank)
        return
    torch.set_rng_state(rng["torch"])
    if context.device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], context.device)
