"""The training loop: AdamW, warm-up then cosine decay, gradient clipping, bf16 autocast on CUDA,
atomic checkpoints each epoch, best checkpoint by dev WER, a JSON-lines metrics log (and
TensorBoard), exact resume, SpecAugment and speed perturbation, optional torch.compile.

Data-parallel under `torchrun` (asr/distributed.py): every rank trains a DistributedDataParallel
replica on its own share of each epoch's batches; the loss is normalized by the group's label
count, so the averaged gradient is that of the whole group's batch. Rank 0 alone writes
checkpoints, logs and the progress bar; every rank reads last.pt to resume.

One function per step, icefall-style: `compute_loss`, `train_one_epoch`, `validate`, `train`.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from asr import distributed
from asr.augment import SpecAugment
from asr.checkpoint import load_checkpoint, save_checkpoint
from asr.config import Config, config_to_dict
from asr.ctc import ctc_loss
from asr.data.loader import Batch, BucketBatchSampler, UtteranceDataset, make_loader, placeholder_batch
from asr.data.manifest import read_manifest
from asr.features import FeatureExtractor
from asr.inference import Recognizer, decode_dataset
from asr.models import build_model
from asr.text import build_tokenizer, label_utterances

LAST, BEST = "last.pt", "best.pt"  # checkpoint names inside train.out_dir
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"  # event files folder inside train.out_dir


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

    @classmethod
    def zeros(cls, device: torch.device) -> "StepStats":
        return cls(torch.zeros((), device=device), torch.zeros((), device=device))


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features → [SpecAugment] → model → CTC. Returns (summed loss, summed label count, feasible
    mask (batch,)); infeasible utterances contribute nothing to either sum."""
    audio = batch.audio.to(device, non_blocking=True)  # (batch, samples)
    targets = batch.targets.to(device, non_blocking=True)  # (batch, max_labels)
    target_lengths = batch.target_lengths.to(device, non_blocking=True)  # (batch,)
    with torch.no_grad():
        feats, frame_lengths = features(audio, batch.audio_lengths.to(device))  # (batch, frames, dim)
        if augment is not None:
            feats = augment(feats, frame_lengths)  # (batch, frames, dim)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else contextlib.nullcontext()
    with autocast:
        log_probs, frame_lengths = model(feats, frame_lengths)  # (batch, frames, vocab), float32
    losses, feasible = ctc_loss(log_probs, frame_lengths, targets, target_lengths)  # (batch,), (batch,)
    return losses.sum(), (target_lengths * feasible).sum(), feasible


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
    log,
    bar,
    deadline: float,
    save_state,
    augment: SpecAugment | None = None,
    context: distributed.DistContext = distributed.DistContext(),
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
        progress.skipped_bad_audio += len(batch.bad)
        for utt_id, reason in batch.bad:
            log({"event": "bad_audio", "id": utt_id, "reason": reason})
            if not context.is_main:
                print(f"rank {context.rank}: skipping bad audio: {reason}", file=sys.stderr)
        progress.batch_in_epoch += 1
        real_utterances = len(batch)
        if real_utterances == 0:
            if not context.is_distributed:
                continue
            batch = placeholder_batch(sample_rate)  # this rank must still join the all-reduce
        loss_sum, label_sum, feasible = compute_loss(model, features, batch, device, config.train.amp, augment)
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
        stats.loss_sum += loss_sum.detach()
        stats.label_sum += label_sum
        stats.audio_seconds += float(batch.audio_lengths.sum()) / sample_rate if real_utterances else 0.0
        stats.steps += 1
        stats.grad_norms.append(grad_norm)
        bar.update(1)
        if progress.step % config.train.log_every == 0:
            elapsed = time.perf_counter() - started
            sums = torch.stack([stats.loss_sum, stats.label_sum.to(stats.loss_sum.dtype)])
            sums = torch.cat([sums, torch.tensor([stats.audio_seconds], device=device, dtype=sums.dtype)])
            loss_total, labels_total, audio_total = distributed.all_reduce_sum(sums, context).tolist()  # group totals
            loss = loss_total / max(labels_total, 1.0)
            record = {
                "step": progress.step,
                "epoch": progress.epoch,
                "loss": loss,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(np.mean(stats.grad_norms)),
                "audio_s_per_s": audio_total / max(elapsed, 1e-9),
                "skipped_infeasible": progress.skipped_infeasible,
            }
            log(record)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{record['lr']:.2e}")
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
    out_dir = Path(config.train.out_dir)
    if context.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if config.train.num_threads > 0:
        torch.set_num_threads(config.train.num_threads)
    device = context.device
    seed_everything(config.train.seed)

    if not config.data.train:
        raise TrainingError("data.train is empty: give the path of a training manifest")
    tokenizer = build_tokenizer(config.data)
    train_utts = [u for u in read_manifest(config.data.train) if u.duration <= config.data.max_duration]
    train_utts = label_utterances(train_utts, tokenizer)
    dataset = UtteranceDataset(
        train_utts, tokenizer, config.features.sample_rate, speed_factors=config.augment.speed_factors, seed=config.train.seed
    )
    if len(dataset) == 0:
        raise TrainingError(f"{config.data.train}: no usable training utterances")
    dev_utts = read_manifest(config.data.dev) if config.data.dev else []

    features = FeatureExtractor(config.features).to(device)
    model = build_model(config.model, features.output_dim, tokenizer.vocab_size).to(device)
    augment = SpecAugment(config.augment, features.static_dim, config.features.subsample).to(device)
    augment = augment if augment.enabled else None
    step_model: torch.nn.Module = model  # what runs the training step; `model` is what checkpoints hold
    if context.is_distributed:
        # DDP broadcasts rank 0's initial weights and averages gradients in backward.
        step_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        torch.manual_seed(config.train.seed + context.rank)  # distinct dropout / SpecAugment draws per rank
    if config.train.compile:  # batch size and length change every step: compile for dynamic shapes
        step_model = torch.compile(step_model, dynamic=True)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas), weight_decay=config.optim.weight_decay
    )
    frames_per_second = 1000.0 / config.features.frame_shift_ms  # feature frames before subsampling
    max_frames = config.data.batch_frames or config.data.batch_seconds * frames_per_second
    try:
        sampler = BucketBatchSampler(
            [u.duration * frames_per_second for u in dataset.utterances], max_frames, seed=config.train.seed,
            num_replicas=context.world_size, rank=context.rank, sortagrad=config.data.sortagrad,
        )
    except ValueError as e:
        raise TrainingError(f"{config.data.train}: {e}") from e
    total_steps = 0
    for epoch in range(config.train.epochs):
        sampler.set_epoch(epoch)
        total_steps += len(sampler)
    if config.train.max_steps:
        total_steps = min(total_steps, config.train.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.optim.warmup_steps, total_steps, config.optim.min_lr_ratio)
    )
    progress = Progress()

    if resume:
        state = load_checkpoint(out_dir / LAST)
        if "training_state" not in state:
            raise TrainingError(f"{out_dir / LAST}: holds no training state to resume from")
        model.load_state_dict(state["model"])
        training_state = state["training_state"]
        optimizer.load_state_dict(training_state["optimizer"])
        scheduler.load_state_dict(training_state["scheduler"])
        progress = Progress(**training_state["progress"])
        restore_rng(training_state, context, config.train.seed + 1_000_003 * progress.step)
        if context.rank:  # the checkpoint's skip counts are group totals; rank 0 carries them on
            progress.skipped_infeasible = progress.skipped_bad_audio = progress.skipped_nonfinite_steps = 0

    metrics_file = open(out_dir / METRICS, "a", encoding="utf-8") if context.is_main else None
    board = open_tensorboard(out_dir / TENSORBOARD) if context.is_main and config.train.tensorboard else None

    def log(record: dict[str, Any]) -> None:
        if metrics_file is None:
            return
        metrics_file.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        metrics_file.flush()
        if board is not None:
            write_tensorboard(board, record)

    def save_state(name: str) -> None:
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device).cpu()
        skipped = [progress.skipped_infeasible, progress.skipped_bad_audio, progress.skipped_nonfinite_steps]
        ranks = distributed.gather_objects({"rng": rng, "skipped": skipped}, context)  # a collective: all ranks call
        if not context.is_main:
            return
        group_progress = progress.to_dict()
        for i, key in enumerate(("skipped_infeasible", "skipped_bad_audio", "skipped_nonfinite_steps")):
            group_progress[key] = sum(r["skipped"][i] for r in ranks)
        training_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "progress": group_progress,
            "rng": rng,
            "world_size": context.world_size,
        }
        if context.is_distributed:
            training_state["rng_per_rank"] = [r["rng"] for r in ranks]
        save_checkpoint(out_dir / name, model=model, config=config, tokenizer=tokenizer, training_state=training_state)

    if dataset.rejected and context.is_main:
        log({"event": "rejected_text", "count": len(dataset.rejected), "examples": dataset.rejected[:5]})
        print(f"skipping {len(dataset.rejected)} training utterance(s) the tokenizer rejects, e.g. {dataset.rejected[0][1]}")
    log({"event": "start", "resume": resume, "step": progress.step, "device": str(device), "config": config_to_dict(config),
         "train_utterances": len(dataset), "parameters": sum(p.numel() for p in model.parameters()),
         "world_size": context.world_size})

    recognizer = Recognizer(model, features, tokenizer, config)
    started = time.perf_counter()
    deadline = started + config.train.time_limit_s if config.train.time_limit_s > 0 else math.inf
    bar = tqdm(total=total_steps, initial=progress.step, desc="train", unit="step",
               disable=not (show_progress and context.is_main), dynamic_ncols=True)
    try:
        while progress.epoch < config.train.epochs:
            sampler.set_epoch(progress.epoch, start_batch=progress.batch_in_epoch)
            dataset.set_epoch(progress.epoch)
            loader = make_loader(dataset, sampler, num_workers=config.data.num_workers)
            finished_epoch = train_one_epoch(
                model=step_model, features=features, loader=loader, optimizer=optimizer, scheduler=scheduler,
                config=config, progress=progress, device=device, log=log, bar=bar, deadline=deadline,
                save_state=save_state, augment=augment, context=context,
            )
            if finished_epoch:
                progress.epoch += 1
                progress.batch_in_epoch = 0
            last_epoch = progress.epoch >= config.train.epochs or not finished_epoch
            record: dict[str, Any] = {"event": "epoch_end" if finished_epoch else "stopped", "epoch": progress.epoch, "step": progress.step}
            if dev_utts and context.is_main and (last_epoch or progress.epoch % config.train.eval_every_epochs == 0):
                record.update(validate(recognizer, dev_utts, config.decode.batch_size))
                if "dev_per" in record:  # phone models: the 39-phone PER is the figure to read
                    bar.write(f"epoch {progress.epoch}: dev PER {record['dev_per']:.2%} (39 phones)")
                else:
                    bar.write(f"epoch {progress.epoch}: dev WER {record['dev_wer']:.2%} CER {record['dev_cer']:.2%}")
            progress.train_seconds += time.perf_counter() - started
            started = time.perf_counter()
            is_best = "dev_wer" in record and record["dev_wer"] < progress.best_wer
            if is_best:
                progress.best_wer = record["dev_wer"]
            log(record)
            save_state(LAST)
            if distributed.any_rank(is_best or not dev_utts, context):  # rank 0 decides; all join the save
                save_state(BEST)
            if not finished_epoch:
                break
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if board is not None:
            board.close()
    return out_dir


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


def open_tensorboard(log_dir: Path):
    """A SummaryWriter, or None (with a notice) when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("train.tensorboard: the tensorboard package is not installed (pip install 'asr[tensorboard]'); "
              f"logging to {METRICS} only", file=sys.stderr)
        return None
    return SummaryWriter(log_dir=str(log_dir))


TENSORBOARD_SCALARS = {  # metrics-log key -> TensorBoard tag
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "audio_s_per_s": "train/audio_seconds_per_second",
    "dev_wer": "dev/wer",
    "dev_cer": "dev/cer",
    "dev_per": "dev/per",
}


def write_tensorboard(board, record: dict[str, Any]) -> None:
    if "step" not in record:
        return
    for key, tag in TENSORBOARD_SCALARS.items():
        if key in record:
            board.add_scalar(tag, record[key], global_step=record["step"])
    board.flush()
