"""The training loop: AdamW, warm-up then cosine decay, gradient clipping, bf16 autocast on CUDA,
atomic checkpoints each epoch, best checkpoint by dev WER, a JSON-lines metrics log, exact resume.

One function per step, icefall-style: `compute_loss`, `train_one_epoch`, `validate`, `train`.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from asr.checkpoint import load_checkpoint, save_checkpoint
from asr.config import Config, config_to_dict
from asr.ctc import ctc_loss
from asr.data.loader import Batch, BucketBatchSampler, UtteranceDataset, make_loader
from asr.data.manifest import read_manifest
from asr.features import FeatureExtractor
from asr.inference import Recognizer, decode_dataset, resolve_device
from asr.models import build_model
from asr.text import build_tokenizer, label_utterances

LAST, BEST = "last.pt", "best.pt"  # checkpoint names inside train.out_dir
METRICS = "metrics.jsonl"


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
    model: torch.nn.Module, features: FeatureExtractor, batch: Batch, device: torch.device, amp: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features → model → CTC. Returns (summed loss, summed label count, feasible mask (batch,));
    infeasible utterances contribute nothing to either sum."""
    audio = batch.audio.to(device, non_blocking=True)  # (batch, samples)
    targets = batch.targets.to(device, non_blocking=True)  # (batch, max_labels)
    target_lengths = batch.target_lengths.to(device, non_blocking=True)  # (batch,)
    with torch.no_grad():
        feats, frame_lengths = features(audio, batch.audio_lengths.to(device))  # (batch, frames, dim)
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
) -> bool:
    """Train through the rest of `progress.epoch`. Returns False if the time limit stopped it."""
    model.train()
    stats = StepStats.zeros(device)
    started = time.perf_counter()
    sample_rate = config.features.sample_rate
    for batch in loader:
        progress.skipped_bad_audio += len(batch.bad)
        for utt_id, reason in batch.bad:
            log({"event": "bad_audio", "id": utt_id, "reason": reason})
        progress.batch_in_epoch += 1
        if len(batch) == 0:
            continue
        loss_sum, label_sum, feasible = compute_loss(model, features, batch, device, config.train.amp)
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / label_sum.clamp(min=1)).backward()  # mean loss per label
        grad_norm = clip_gradients(model, config.optim.grad_clip)
        infeasible = int((~feasible).sum())
        progress.skipped_infeasible += infeasible
        if math.isfinite(grad_norm):
            optimizer.step()
        else:
            progress.skipped_nonfinite_steps += 1
            log({"event": "nonfinite_gradient", "step": progress.step, "ids": batch.ids})
        scheduler.step()
        progress.step += 1
        stats.loss_sum += loss_sum.detach()
        stats.label_sum += label_sum
        stats.audio_seconds += float(batch.audio_lengths.sum()) / sample_rate
        stats.steps += 1
        stats.grad_norms.append(grad_norm)
        bar.update(1)
        if progress.step % config.train.log_every == 0:
            elapsed = time.perf_counter() - started
            loss = float(stats.loss_sum / stats.label_sum.clamp(min=1))
            record = {
                "step": progress.step,
                "epoch": progress.epoch,
                "loss": loss,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(np.mean(stats.grad_norms)),
                "audio_s_per_s": stats.audio_seconds / max(elapsed, 1e-9),
                "skipped_infeasible": progress.skipped_infeasible,
            }
            log(record)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{record['lr']:.2e}")
            stats = StepStats.zeros(device)
            started = time.perf_counter()
        if config.train.save_every_steps and progress.step % config.train.save_every_steps == 0:
            save_state(LAST)
        if (config.train.max_steps and progress.step >= config.train.max_steps) or time.perf_counter() > deadline:
            return False
    return True


def train(config: Config, resume: bool = False, show_progress: bool = True) -> Path:
    """Train a model as `config` says; return the output directory (checkpoints + metrics log)."""
    out_dir = Path(config.train.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.train.num_threads > 0:
        torch.set_num_threads(config.train.num_threads)
    device = resolve_device(config.train.device)
    seed_everything(config.train.seed)

    if not config.data.train:
        raise TrainingError("data.train is empty: give the path of a training manifest")
    tokenizer = build_tokenizer(config.data)
    train_utts = [u for u in read_manifest(config.data.train) if u.duration <= config.data.max_duration]
    train_utts = label_utterances(train_utts, tokenizer)
    dataset = UtteranceDataset(train_utts, tokenizer, config.features.sample_rate)
    if len(dataset) == 0:
        raise TrainingError(f"{config.data.train}: no usable training utterances")
    dev_utts = read_manifest(config.data.dev) if config.data.dev else []

    features = FeatureExtractor(config.features).to(device)
    model = build_model(config.model, features.output_dim, tokenizer.vocab_size).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas), weight_decay=config.optim.weight_decay
    )
    sampler = BucketBatchSampler([u.duration for u in dataset.utterances], config.data.batch_seconds, seed=config.train.seed)
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
        torch.set_rng_state(training_state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in training_state["rng"]:
            torch.cuda.set_rng_state(training_state["rng"]["cuda"], device)

    metrics_path = out_dir / METRICS
    metrics_file = open(metrics_path, "a", encoding="utf-8")

    def log(record: dict[str, Any]) -> None:
        metrics_file.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        metrics_file.flush()

    def save_state(name: str) -> None:
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        training_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "progress": progress.to_dict(),
            "rng": rng,
        }
        save_checkpoint(out_dir / name, model=model, config=config, tokenizer=tokenizer, training_state=training_state)

    if dataset.rejected:
        log({"event": "rejected_text", "count": len(dataset.rejected), "examples": dataset.rejected[:5]})
        print(f"skipping {len(dataset.rejected)} training utterance(s) the tokenizer rejects, e.g. {dataset.rejected[0][1]}")
    log({"event": "start", "resume": resume, "step": progress.step, "device": str(device), "config": config_to_dict(config),
         "train_utterances": len(dataset), "parameters": sum(p.numel() for p in model.parameters())})

    recognizer = Recognizer(model, features, tokenizer, config)
    started = time.perf_counter()
    deadline = started + config.train.time_limit_s if config.train.time_limit_s > 0 else math.inf
    bar = tqdm(total=total_steps, initial=progress.step, desc="train", unit="step", disable=not show_progress, dynamic_ncols=True)
    try:
        while progress.epoch < config.train.epochs:
            sampler.set_epoch(progress.epoch, start_batch=progress.batch_in_epoch)
            loader = make_loader(dataset, sampler, num_workers=config.data.num_workers)
            finished_epoch = train_one_epoch(
                model=model, features=features, loader=loader, optimizer=optimizer, scheduler=scheduler,
                config=config, progress=progress, device=device, log=log, bar=bar, deadline=deadline,
                save_state=save_state,
            )
            if finished_epoch:
                progress.epoch += 1
                progress.batch_in_epoch = 0
            last_epoch = progress.epoch >= config.train.epochs or not finished_epoch
            record: dict[str, Any] = {"event": "epoch_end" if finished_epoch else "stopped", "epoch": progress.epoch, "step": progress.step}
            if dev_utts and (last_epoch or progress.epoch % config.train.eval_every_epochs == 0):
                record.update(validate(recognizer, dev_utts, config.decode.batch_size))
                bar.write(f"epoch {progress.epoch}: dev WER {record['dev_wer']:.2%} CER {record['dev_cer']:.2%}")
            progress.train_seconds += time.perf_counter() - started
            started = time.perf_counter()
            is_best = "dev_wer" in record and record["dev_wer"] < progress.best_wer
            if is_best:
                progress.best_wer = record["dev_wer"]
            log(record)
            save_state(LAST)
            if is_best or not dev_utts:
                save_state(BEST)
            if not finished_epoch:
                break
    finally:
        bar.close()
        metrics_file.close()
    return out_dir
