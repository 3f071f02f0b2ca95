"""Forward+backward time of the whole CTC model with each recurrent cell, relative to nn.LSTM, same run.

The model is configs/demo.yaml's (3 bidirectional layers of 256 units over 240-dim stacked log-mel
frames) with only `model.cell` changed; the input is one training-sized batch of random features.
Rounds alternate between the cells and the median is reported. For the custom LSTM cells it also
times the recurrence backends (eager Python loops, TorchScript, torch.compile'd element-wise steps)
and the one-off compile time of each, which decides `asr.models.cells.BACKEND`.

    python scripts/bench_cells.py                              # all cells, default backend
    python scripts/bench_cells.py --backends eager script compile --cells lstm peephole lstm_diag_peephole
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

import asr.models.cells as cells
from asr.config import load_config
from asr.features import FeatureExtractor
from asr.models import build_model
from asr.text import CharTokenizer

ALL_CELLS = ["lstm", "gru", "peephole", "lstm_diag_peephole", "lstm_variant", "slstm", "convlstm"]
GENERIC_CELLS = {"peephole", "lstm_diag_peephole", "lstm_variant"}  # the ones BACKEND applies to


def time_step(model: torch.nn.Module, feats: torch.Tensor, lengths: torch.Tensor) -> float:
    sync = torch.cuda.synchronize if feats.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    log_probs, _ = model(feats, lengths)
    log_probs.sum().backward()
    model.zero_grad(set_to_none=True)
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--cells", nargs="+", default=ALL_CELLS, choices=ALL_CELLS)
    parser.add_argument("--backends", nargs="+", default=[cells.BACKEND], choices=["eager", "script", "compile"])
    parser.add_argument("--batch", type=int, default=11, help="utterances per batch (demo: 40 s batches ~ 11)")
    parser.add_argument("--frames", type=int, default=120, help="30 ms frames per utterance (3.6 s, the demo's mean)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (nn.LSTM is then cuDNN)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides of the config")
    args = parser.parse_args()

    config = load_config(args.config, args.overrides)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    input_dim = FeatureExtractor(config.features).output_dim
    vocab_size = CharTokenizer().vocab_size
    torch.manual_seed(0)
    feats = torch.randn(args.batch, args.frames, input_dim, device=args.device)  # (batch, frames, feats)
    lengths = torch.full((args.batch,), args.frames, device=args.device)
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads; model {config.model.num_layers}x"
        f"{config.model.hidden_size} {'bi' if config.model.bidirectional else 'uni'}directional, input {input_dim}, "
        f"batch {args.batch} x {args.frames} frames, forward+backward, median of {args.rounds} rounds"
    )

    runs: dict[str, tuple[torch.nn.Module, str]] = {}
    for cell in args.cells:
        backends = args.backends if cell in GENERIC_CELLS else [cells.BACKEND]
        for backend in backends:
            label = f"{cell} ({backend})" if cell in GENERIC_CELLS and len(args.backends) > 1 else cell
            torch.manual_seed(0)
            model = build_model(dataclasses.replace(config.model, cell=cell), input_dim, vocab_size).to(args.device).train()
            runs[label] = (model, backend)

    warmup: dict[str, float] = {}
    for label, (model, backend) in runs.items():  # first call: TorchScript / torch.compile build here
        cells.BACKEND = backend
        warmup[label] = time_step(model, feats, lengths)
        time_step(model, feats, lengths)
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(args.rounds):
        for label, (model, backend) in runs.items():
            cells.BACKEND = backend
            times[label].append(time_step(model, feats, lengths))

    reference = statistics.median(times["lstm"]) if "lstm" in times else None
    print(f"{'cell':<32} {'fwd+bwd ms':>10} {'vs nn.LSTM':>10} {'first call ms':>14}")
    for label, samples in times.items():
        median = statistics.median(samples)
        ratio = f"{median / reference:.2f}x" if reference else "-"
        print(f"{label:<32} {1000 * median:>10.1f} {ratio:>10} {1000 * warmup[label]:>14.0f}")


if __name__ == "__main__":
    main()
