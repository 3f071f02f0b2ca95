"""Greff et al. 2017's LSTM variants (and the other cells) trained with one budget on the built-in corpus.

Each run is `asr.train.train` on configs/demo.yaml with only the cell changed (plus the shared
--overrides, e.g. a smaller model), the same seed and the same number of optimizer steps: a step
budget, not a time budget, so slower cells are not penalized. Each model is then scored on the test
set (greedy decoding, characters). One line per run is appended to --results, so the runs can be
split over several invocations; every invocation prints the table of all results so far, beside the
paper's finding on TIMIT for each variant.

    python scripts/lstm_study.py --corpus /tmp/demo2/corpus --runs vanilla NIG NFG     # a few runs
    python scripts/lstm_study.py --corpus /tmp/demo2/corpus --runs NOG NIAF NOAF ...   # more, appended
    python scripts/lstm_study.py --results runs/lstm_study/results.jsonl --report      # table only
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from asr.checkpoint import load_checkpoint
from asr.config import load_config
from asr.data.manifest import read_manifest
from asr.inference import Recognizer, decode_dataset
from asr.models.cells import GREFF_VARIANTS
from asr.train import LAST, train

# Greff et al. 2017, Sec. 5.1 and Fig. 3, TIMIT: no variant beats vanilla significantly; CIFG, NP
# and FGR do not change performance significantly; NIG, NOG and NIAF are significantly worse on
# speech (and handwriting); NFG and NOAF, the forget gate and the output activation, are the most
# critical and worst on all three datasets.
PAPER_TIMIT = {
    "vanilla": "reference",
    "CIFG": "no significant change",
    "NP": "no significant change",
    "FGR": "no significant change",
    "NOG": "significantly worse",
    "NIAF": "significantly worse",
    "NIG": "significantly worse",
    "NFG": "significantly worse (critical)",
    "NOAF": "significantly worse (critical)",
}
CELLS = ["lstm", "gru", "peephole", "lstm_diag_peephole", "slstm", "convlstm"]


def run_overrides(name: str) -> list[str]:
    """A run is either a Greff variant (cell=lstm_variant) or a cell name."""
    if name in GREFF_VARIANTS:
        return ["model.cell=lstm_variant", f"model.lstm_variant={name}"]
    if name in CELLS:
        return [f"model.cell={name}"]
    raise SystemExit(f"unknown run {name!r}: a Greff variant ({', '.join(GREFF_VARIANTS)}) or a cell ({', '.join(CELLS)})")


def train_and_score(name: str, args: argparse.Namespace) -> dict:
    corpus = Path(args.corpus)
    out_dir = Path(args.work_dir) / name
    shutil.rmtree(out_dir, ignore_errors=True)
    config = load_config(
        args.config,
        [
            *args.overrides,
            *run_overrides(name),
            f"data.train={corpus / 'train.jsonl'}",
            "data.dev=''",
            f"train.out_dir={out_dir}",
            f"train.max_steps={args.steps}",
            f"train.seed={args.seed}",
        ],
    )
    started = time.perf_counter()
    train(config, show_progress=False)
    wall = time.perf_counter() - started
    state = load_checkpoint(out_dir / LAST)
    recognizer = Recognizer.from_checkpoint(out_dir / LAST, device=config.train.device)
    result = decode_dataset(recognizer, read_manifest(corpus / "test.jsonl"), batch_size=32, progress=False)
    return {
        "run": name,
        "cell": config.model.cell,
        "steps": state["training_state"]["progress"]["step"],
        "seed": args.seed,
        "model": f"{config.model.num_layers}x{config.model.hidden_size} bi={config.model.bidirectional}",
        "overrides": list(args.overrides),
        "parameters": sum(p.numel() for p in recognizer.model.parameters() if p.requires_grad),  # trainable
        "train_seconds": round(state["training_state"]["progress"]["train_seconds"], 1),
        "wall_seconds": round(wall, 1),
        "test_cer": result.cer,
        "test_wer": result.wer,
        "threads": torch.get_num_threads(),
    }


def print_table(results: list[dict]) -> None:
    by_run = {r["run"]: r for r in results}  # the latest result of each run
    base = by_run.get("vanilla") or by_run.get("lstm")
    print(f"\n{'run':<20} {'params':>8} {'steps':>6} {'train s':>8} {'test CER':>9} {'test WER':>9}  {'vs vanilla CER':>14}  Greff et al. 2017 (TIMIT)")
    order = [r for r in PAPER_TIMIT if r in by_run] + [r for r in by_run if r not in PAPER_TIMIT]
    for name in order:
        r = by_run[name]
        delta = f"{r['test_cer'] - base['test_cer']:+.2%}" if base and name in PAPER_TIMIT else ""
        print(
            f"{name:<20} {r['parameters']:>8} {r['steps']:>6} {r['train_seconds']:>8.0f} {r['test_cer']:>9.2%} "
            f"{r['test_wer']:>9.2%}  {delta:>14}  {PAPER_TIMIT.get(name, '')}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="demo_out/corpus", help="folder with train.jsonl and test.jsonl (asr synth)")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--runs", nargs="*", default=list(GREFF_VARIANTS), help="Greff variants and/or cell names")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run, the same for all")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--work-dir", default="runs/lstm_study")
    parser.add_argument("--results", default="runs/lstm_study/results.jsonl", help="JSON lines, appended to")
    parser.add_argument("--report", action="store_true", help="print the table of --results and exit")
    parser.add_argument(
        "--overrides", nargs="*", default=["model.hidden_size=128", "model.num_layers=2"],
        help="section.key=value overrides shared by all runs",
    )
    args = parser.parse_args()

    results_path = Path(args.results)
    if not args.report:
        results_path.parent.mkdir(parents=True, exist_ok=True)
        for name in args.runs:
            record = train_and_score(name, args)
            with open(results_path, "a", encoding="utf-8") as f:  # one whole line per finished run
                f.write(json.dumps(record) + "\n")
            print(f"{name}: test CER {record['test_cer']:.2%} WER {record['test_wer']:.2%} ({record['train_seconds']:.0f} s)", flush=True)
    results = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]
    print_table(results)


if __name__ == "__main__":
    main()
