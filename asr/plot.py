"""Training curves from a run's metrics log: `asr plot RUN_DIR` -> RUN_DIR/curves.png.

Reads RUN_DIR/metrics.jsonl (what `asr.train` writes), so it works without TensorBoard and on
runs copied from another machine. A resumed run may have logged some steps twice (the steps
between its last checkpoint and a kill); the later line wins.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from asr.fileio import atomic_path
from asr.train_log import METRICS

PANELS = (  # (metrics-log key, axis title, log scale)
    ("loss", "training loss (CTC per label)", True),
    ("lr", "learning rate", False),
    ("grad_norm", "gradient norm (before clipping)", True),
    ("audio_s_per_s", "throughput (s of audio / s)", False),
    ("dev_wer", "dev WER", False),
)


class PlotError(ValueError):
    """A run folder without a usable metrics log; the message names the file."""


def read_curves(metrics_path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value), ...] sorted by step} for every key in PANELS found in the log."""
    path = Path(metrics_path)
    if not path.is_file():
        raise PlotError(f"{path}: no metrics log")
    by_key: dict[str, dict[int, float]] = {key: {} for key, _, _ in PANELS}
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            # the last line of a killed run can be cut short; anything else is a real problem
            if number == len(lines):
                continue
            raise PlotError(f"{path}:{number}: not a JSON line") from None
        if "step" not in record:
            continue
        for key in by_key:
            value = record.get(key)
            if isinstance(value, (int, float)):
                by_key[key][int(record["step"])] = float(value)
    curves = {key: sorted(points.items()) for key, points in by_key.items() if points}
    if "loss" not in curves:
        raise PlotError(f"{path}: no training-loss lines (train.log_every steps have not passed yet?)")
    return curves


def plot_run(run_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Draw the curves of RUN_DIR/metrics.jsonl into a PNG (default RUN_DIR/curves.png)."""
    try:
        import matplotlib
    except ImportError as e:
        raise PlotError("asr plot needs matplotlib: pip install 'asr[plot]'") from e
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    curves = read_curves(run_dir / METRICS)
    output = Path(output) if output is not None else run_dir / "curves.png"
    panels = [p for p in PANELS if p[0] in curves]
    figure, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (key, title, log_scale) in zip(axes[:, 0], panels):
        steps, values = zip(*curves[key])
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_ylabel(title, fontsize=8)
        if log_scale and min(values) > 0:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("optimizer step")
    figure.suptitle(str(run_dir), fontsize=9)
    figure.tight_layout()
    with atomic_path(output) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return output
