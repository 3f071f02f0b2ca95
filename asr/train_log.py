"""A training run's metrics log: OUT_DIR/metrics.jsonl, one JSON line per record (steps, epochs,
events), and the same scalars as TensorBoard events with train.tensorboard. `asr plot` reads the
JSON lines back."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from asr import distributed

METRICS = "metrics.jsonl"  # inside train.out_dir
TENSORBOARD = "tensorboard"  # event files folder inside train.out_dir


@dataclass
class MetricsLog:
    """The run's metrics log: out_dir/metrics.jsonl, one JSON line per record, and TensorBoard
    with train.tensorboard. Only rank 0 writes; elsewhere both are None."""

    file: TextIO | None
    board: Any | None  # a torch.utils.tensorboard SummaryWriter

    @classmethod
    def open(cls, out_dir: Path, context: distributed.DistContext, tensorboard: bool) -> "MetricsLog":
        file = open(out_dir / METRICS, "a", encoding="utf-8") if context.is_main else None
        board = open_tensorboard(out_dir / TENSORBOARD) if context.is_main and tensorboard else None
        return cls(file, board)

    def write(self, record: dict[str, Any]) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        self.file.flush()
        if self.board is not None:
            write_tensorboard(self.board, record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.board is not None:
            self.board.close()


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
