"""Training throughput: the whole pipeline against the bare model, same batches, same run.

Pipeline = `asr.train.train_one_epoch` as `asr train` runs it: DataLoader reading and resampling
audio from disk, collate, features on the device, model, CTC loss, backward, clipping, AdamW.
Bare = the same model + CTC loss + backward + clipping + AdamW on feature tensors of the same
shapes built beforehand, already on the device. The ratio says how much of the bare model's
speed the toolkit keeps (1.0 = data loading and features cost nothing).

    python scripts/bench_train.py                      # synthesizes a small corpus first
    python scripts/bench_train.py --manifest data/train.jsonl --config configs/demo.yaml

Augmentation (`--sweep`): the pipeline once per augmentation setup of SWEEP (none, each
waveform augmentation and VTLP alone, all together, the recommended demo mix), each against the
same bare model in the same rounds; prints each ratio. The training set's augmentation is
config.augment (with `--sweep`: the setup's overrides on top), as `asr train` builds it.

    python scripts/bench_train.py --sweep train.num_threads=1 [data.num_workers=1]
    python scripts/bench_train.py --sweep --setups "demo mix" train.num_threads=1

Data-parallel scaling (`--ddp N`): the full pipeline on the same global batches, once by one
process and once by N processes under torchrun (DistributedDataParallel, gloo on CPU, NCCL on
GPUs), in the same run; prints seconds of audio per second for each and their ratio. On CPU the
cores are shared out: the single process gets all of them as threads, each of the N processes
gets cores / N (override with --threads).

    python scripts/bench_train.py --ddp 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from asr.config import load_config
from asr.ctc import ctc_loss
from asr.data.loader import BucketBatchSampler, UtteranceDataset, make_loader
from asr.data.manifest import read_manifest
from asr.device import resolve_device
from asr.features import FeatureExtractor
from asr.models import build_model
from asr.text import CharTokenizer
from asr import distributed
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
    parser.add_argument("--sweep", action="store_true", help="time every augmentation setup of SWEEP")
    parser.add_argument("--setups", help="--sweep: only these setups of SWEEP, comma-separated (always with none)")
    parser.add_argument("--ddp", type=int, default=0, help="compare N data-parallel processes with 1 (torchrun)")
    parser.add_argument("--threads", type=int, default=0, help="--ddp: torch threads per process (default cores / N)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: a torchrun worker writing its result here
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides of the config")
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)
    if args.ddp:
        return compare_ddp(args)

    config = load_config(args.config, args.overrides)
    config.train.log_every = 10**9  # no metric lines inside the timed region
    device = resolve_device(config.train.device)
    if config.train.num_threads > 0:
        torch.set_num_threads(config.train.num_threads)
    manifest = prepare_manifest(args)
    tokenizer = CharTokenizer(on_unknown=config.data.on_unknown_char)
    utterances = read_manifest(manifest)
    dataset = UtteranceDataset(utterances, tokenizer, config.features.sample_rate)
    setups = {}  # name -> (the training set as that setup augments it, s to build it)
    chosen = {"none", *args.setups.split(",")} if args.setups else set(SWEEP)
    for name, extra in ({k: v for k, v in SWEEP.items() if k in chosen} if args.sweep else {"config": []}).items():
        setup = load_config(args.config, [*args.overrides, *extra])
        started = time.perf_counter()
        setups[name] = (UtteranceDataset(utterances, tokenizer, config.features.sample_rate, augment=setup.augment), time.perf_counter() - started)
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

    def autocast():
        if config.train.amp and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def run_bare() -> float:
        sync(device)
        start = time.perf_counter()
        for feats, frame_lengths, targets, target_lengths in prebuilt:
            with autocast():  # the pipeline's precision: bf16 on CUDA with train.amp, as compute_loss
                log_probs, out_lengths = model(feats, frame_lengths)
            losses, _ = ctc_loss(log_probs, out_lengths, targets, target_lengths)
            optimizer.zero_grad(set_to_none=True)
            (losses.sum() / target_lengths.sum()).backward()
            if math.isfinite(clip_gradients(model, config.optim.grad_clip)):
                optimizer.step()
        sync(device)
        return time.perf_counter() - start

    def run_pipeline(augmented: UtteranceDataset) -> float:
        sync(device)
        start = time.perf_counter()
        train_one_epoch(
            model=model, features=features, loader=make_loader(augmented, batches, num_workers=config.data.num_workers),
            optimizer=optimizer, scheduler=scheduler, config=config, progress=Progress(), device=device,
            log=lambda record: None, bar=_NoBar(), deadline=math.inf, save_state=lambda name: None,
        )
        sync(device)
        return time.perf_counter() - start

    run_bare(), run_pipeline(dataset)  # warm-up: allocator, thread pools, page cache
    bare, pipeline = [], {name: [] for name in setups}
    for _ in range(args.rounds):
        bare.append(run_bare())
        for name, (augmented, _) in setups.items():
            pipeline[name].append(run_pipeline(augmented))
    bare_rate = audio_seconds / statistics.median(bare)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; model {config.model.num_layers}x{config.model.hidden_size} "
          f"{'bi' if config.model.bidirectional else 'uni'}-{config.model.cell}"
          f"{', bf16 autocast' if config.train.amp and device.type == 'cuda' else ''}; "
          f"{len(batches)} batches, {audio_seconds:.1f} s of audio per round; median of {args.rounds} rounds")
    print(f"bare model+loss+optimizer   {bare_rate:8.1f} s of audio / s")
    if not args.sweep:
        pipeline_rate = audio_seconds / statistics.median(pipeline["config"])
        print(f"full pipeline               {pipeline_rate:8.1f} s of audio / s")
        print(f"ratio pipeline / bare       {pipeline_rate / bare_rate:8.3f}")
        return
    print(f"{'augmentation':<22} {'pipeline s/s':>12} {'ratio':>7} {'setup s':>8}  overrides")
    for name, (_, setup_seconds) in setups.items():
        rate = audio_seconds / statistics.median(pipeline[name])
        print(f"{name:<22} {rate:12.1f} {rate / bare_rate:7.3f} {setup_seconds:8.2f}  {' '.join(SWEEP[name])}")


DEMO_MIX = ["augment.noise_prob=0.5", "augment.noise_babble=0.5", "augment.reverb_prob=0.3", "augment.telephone_prob=0.1",
            "augment.lowpass_prob=0.1", "augment.gain_db=[-6,6]", "augment.vtlp=[0.9,1.1]"]  # docs/recipes.md#augmentation
# Each augmentation alone (at probability 1: its whole cost), all together, and the demo mix
# recommended in docs/recipes.md#augmentation.
SWEEP = {
    "none": [],
    "noise: coloured": ["augment.noise_prob=1"],
    "noise: babble": ["augment.noise_prob=1", "augment.noise_colored=0", "augment.noise_babble=1"],
    "reverb": ["augment.reverb_prob=1"],
    "telephone (mu-law)": ["augment.telephone_prob=1"],
    "low-pass": ["augment.lowpass_prob=1"],
    "gain": ["augment.gain_db=[-6,6]"],
    "vtlp": ["augment.vtlp=[0.9,1.1]"],
    "pitch + formants": ["augment.pitch_prob=1", "augment.pitch_shift=[-3,3]", "augment.formant_shift=[0.9,1.1]"],
    "all (each at 1)": ["augment.noise_prob=1", "augment.noise_babble=1", "augment.reverb_prob=1", "augment.telephone_prob=1",
                        "augment.lowpass_prob=1", "augment.gain_db=[-6,6]", "augment.vtlp=[0.9,1.1]", "augment.pitch_prob=1",
                        "augment.pitch_shift=[-3,3]", "augment.formant_shift=[0.9,1.1]"],
    "demo mix": DEMO_MIX,
    "demo mix + pitch 0.3": DEMO_MIX + ["augment.pitch_prob=0.3", "augment.pitch_shift=[-3,3]", "augment.formant_shift=[0.9,1.1]"],
}


def prepare_manifest(args) -> str:
    if args.manifest is not None:
        return args.manifest
    from asr.data.synth import synthesize_corpus

    tmp = tempfile.mkdtemp(prefix="bench_train_")
    return str(synthesize_corpus(tmp, num_utterances=args.num_utterances, seed=0, progress=False)["train"])


def compare_ddp(args) -> None:
    """1 process vs args.ddp processes, alternating launches, same batches; print the ratio."""
    manifest = prepare_manifest(args)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # (processes, threads each): 1 process with every core, N processes sharing them, and, on
    # CPU, 1 process with one core's share (what each of the N gets) for scale
    threads = args.threads or max(1, cores // args.ddp)
    setups = [(1, cores), (args.ddp, threads)] + ([(1, threads)] if threads != cores else [])
    results: dict[tuple[int, int], list[dict]] = {setup: [] for setup in setups}
    for _ in range(args.rounds):
        for nproc, threads in setups:
            out = Path(tempfile.mkdtemp(prefix="bench_ddp_")) / "result.json"
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                       __file__, "--worker", str(out), "--config", args.config, "--manifest", manifest,
                       "--batches", str(args.batches), *args.overrides]
            env = os.environ | {"OMP_NUM_THREADS": str(threads)}
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
            results[(nproc, threads)].append(json.loads(out.read_text()))
    first = results[setups[0]][0]
    print(f"device: {first['device']}; model {first['model']}; {first['batches']} global batches, "
          f"{first['audio_seconds']:.1f} s of audio per pass; median of {args.rounds} launches each")
    rates = {}
    for (nproc, threads), runs in results.items():
        rates[(nproc, threads)] = statistics.median(r["audio_seconds"] / r["seconds"] for r in runs)
        print(f"{nproc} process(es) x {runs[0]['threads']} thread(s)   {rates[(nproc, threads)]:8.1f} s of audio / s")
    for single in setups[:1] + setups[2:]:
        print(f"ratio {args.ddp}x{setups[1][1]} / {single[0]}x{single[1]}          {rates[setups[1]] / rates[single]:8.3f}")


def run_worker(args) -> None:
    """One torchrun rank: train_one_epoch over this rank's share of the first --batches global
    batches (a multiple of the group size), after one warm-up pass; rank 0 writes the timing."""
    config = load_config(args.config, args.overrides)
    config.train.log_every = 10**9
    context = distributed.setup(config.train.device)
    device = context.device
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    tokenizer = CharTokenizer(on_unknown=config.data.on_unknown_char)
    dataset = UtteranceDataset(read_manifest(args.manifest), tokenizer, config.features.sample_rate)
    frames_per_second = 1000.0 / config.features.frame_shift_ms
    budget = config.data.batch_frames or config.data.batch_seconds * frames_per_second
    # the same global batches whatever the group size; batch i goes to rank i % world_size, as in training
    lengths = [u.duration * frames_per_second for u in dataset.utterances]
    num_global = args.batches - args.batches % context.world_size
    global_batches = BucketBatchSampler(lengths, budget, seed=0).all_batches()[:num_global]
    share = global_batches[context.rank :: context.world_size]
    audio_seconds = sum(dataset.utterances[i].duration for b in global_batches for i in b)

    torch.manual_seed(0)
    features = FeatureExtractor(config.features).to(device)
    model = build_model(config.model, features.output_dim, tokenizer.vocab_size).to(device)
    step_model = model
    if context.is_distributed:
        step_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(0, 10**9, 1.0))

    def run(batches) -> float:
        distributed.barrier(context)
        sync(device)
        start = time.perf_counter()
        train_one_epoch(
            model=step_model, features=features, loader=make_loader(dataset, batches, num_workers=config.data.num_workers),
            optimizer=optimizer, scheduler=scheduler, config=config, progress=Progress(), device=device,
            log=lambda record: None, bar=_NoBar(), deadline=math.inf, save_state=lambda name: None, context=context,
        )
        sync(device)
        distributed.barrier(context)
        return time.perf_counter() - start

    run(share[:2])  # warm-up: allocator, thread pools, page cache, DDP buckets
    seconds = run(share)
    if context.is_main:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        Path(args.worker).write_text(json.dumps({
            "device": name, "threads": torch.get_num_threads(), "seconds": seconds, "audio_seconds": audio_seconds,
            "batches": len(global_batches), "world_size": context.world_size,
            "model": f"{config.model.num_layers}x{config.model.hidden_size} "
                     f"{'bi' if config.model.bidirectional else 'uni'}-{config.model.cell}",
        }))
    distributed.teardown(context)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
