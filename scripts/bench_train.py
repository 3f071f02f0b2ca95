"""Training throughput: the whole pipeline against the bare model, same batches, same run.

Pipeline = `asr.train.train_one_epoch` as `asr train` runs it: DataLoader reading and resampling
audio from disk, collate, features on the device, model, CTC loss, backward, clipping, AdamW.
Bare = the same model + CTC loss + backward + clipping + AdamW on feature tensors of the same
shapes built beforehand, already on the device. The ratio says how much of the bare model's
speed the toolkit keeps (1.0 = data loading and features cost nothing).

    python scripts/bench_train.py                      # synthesizes a small corpus first
    python scripts/bench_train.py --manifest data/train.jsonl --config configs/demo.yaml
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from asr.config import load_config
from asr.ctc import ctc_loss
from asr.data.loader import BucketBatchSampler, UtteranceDataset, make_loader
from asr.data.manifest import read_manifest
from asr.features import FeatureExtractor
from asr.inference import resolve_device
from asr.models import build_model
from asr.text import CharTokenizer
from asr.train import Progress, clip_gradients, lr_lambda, train_one_epoch


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kwargs) -> None: ...


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--manifest", help="training manifest; default: synthesize --num-utterances into a temp dir")
    parser.add_argument("--num-utterances", type=int, default=400)
    parser.add_argument("--batches", type=int, default=12, help="batches timed per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides of the config")
    args = parser.parse_args()

    config = load_config(args.config, args.overrides)
    config.train.log_every = 10**9  # no metric lines inside the timed region
    device = resolve_device(config.train.device)
    if config.train.num_threads > 0:
        torch.set_num_threads(config.train.num_threads)
    manifest = args.manifest
    if manifest is None:
        from asr.data.synth import synthesize_corpus

        tmp = tempfile.mkdtemp(prefix="bench_train_")
        manifest = synthesize_corpus(tmp, num_utterances=args.num_utterances, seed=0, progress=False)["train"]
    tokenizer = CharTokenizer(on_unknown=config.data.on_unknown_char)
    dataset = UtteranceDataset(read_manifest(manifest), tokenizer, config.features.sample_rate)
    sampler = BucketBatchSampler([u.duration for u in dataset.utterances], config.data.batch_seconds, seed=0)
    batches = sampler.batches()[: args.batches]
    audio_seconds = sum(dataset.utterances[i].duration for b in batches for i in b)

    torch.manual_seed(0)
    features = FeatureExtractor(config.features).to(device)
    model = build_model(config.model, features.output_dim, tokenizer.vocab_size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)  # small lr: the model stays in a steady state
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(0, 10**9, 1.0))

    # Bare: pre-built feature tensors and targets of exactly the pipeline's shapes, on the device.
    loader = make_loader(dataset, batches)
    prebuilt = []
    for batch in loader:
        with torch.no_grad():
            feats, frame_lengths = features(batch.audio.to(device), batch.audio_lengths.to(device))
        prebuilt.append((torch.randn_like(feats), frame_lengths, batch.targets.to(device), batch.target_lengths.to(device)))

    def run_bare() -> float:
        sync(device)
        start = time.perf_counter()
        for feats, frame_lengths, targets, target_lengths in prebuilt:
            log_probs, out_lengths = model(feats, frame_lengths)
            losses, _ = ctc_loss(log_probs, out_lengths, targets, target_lengths)
            optimizer.zero_grad(set_to_none=True)
            (losses.sum() / target_lengths.sum()).backward()
            if math.isfinite(clip_gradients(model, config.optim.grad_clip)):
                optimizer.step()
        sync(device)
        return time.perf_counter() - start

    def run_pipeline() -> float:
        sync(device)
        start = time.perf_counter()
        train_one_epoch(
            model=model, features=features, loader=make_loader(dataset, batches, num_workers=config.data.num_workers),
            optimizer=optimizer, scheduler=scheduler, config=config, progress=Progress(), device=device,
            log=lambda record: None, bar=_NoBar(), deadline=math.inf, save_state=lambda name: None,
        )
        sync(device)
        return time.perf_counter() - start

    run_bare(), run_pipeline()  # warm-up: allocator, thread pools, page cache
    bare, pipeline = [], []
    for _ in range(args.rounds):
        bare.append(run_bare())
        pipeline.append(run_pipeline())
    bare_rate = audio_seconds / statistics.median(bare)
    pipeline_rate = audio_seconds / statistics.median(pipeline)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; model {config.model.num_layers}x{config.model.hidden_size} "
          f"{'bi' if config.model.bidirectional else 'uni'}-{config.model.cell}; "
          f"{len(batches)} batches, {audio_seconds:.1f} s of audio per round; median of {args.rounds} rounds")
    print(f"bare model+loss+optimizer   {bare_rate:8.1f} s of audio / s")
    print(f"full pipeline               {pipeline_rate:8.1f} s of audio / s")
    print(f"ratio pipeline / bare       {pipeline_rate / bare_rate:8.3f}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
