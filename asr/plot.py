"""Pictures: a run's training curves (`asr plot RUN_DIR` -> RUN_DIR/curves.png), and an aligned
utterance (`asr align ... --plot N`).

The curves read RUN_DIR/metrics.jsonl (what `asr.train` writes), so it works without TensorBoard and on
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


def plot_alignment(recognizer, utterance, alignment, output: str | os.PathLike) -> Path:
    """One aligned utterance as people check an alignment by eye, to a PNG: its spectrogram, the
    model's posteriorgram (each label's probability per frame), and the aligned tokens and
    words under them, on one time axis in seconds."""
    try:
        import matplotlib
    except ImportError as e:
        raise PlotError("plotting alignments needs matplotlib: pip install 'asr[plot]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from asr.audio import load_audio

    audio = torch.from_numpy(load_audio(utterance.audio, recognizer.sample_rate, utterance.offset, utterance.duration if utterance.offset else None))
    log_probs, _ = recognizer.log_probs(audio[None], torch.tensor([len(audio)]))
    posteriors = log_probs[0].float().exp().cpu().numpy().T  # (vocab, frames)
    seconds = len(audio) / recognizer.sample_rate
    starts, ends = recognizer.features.frame_times(posteriors.shape[1])
    window = int(0.025 * recognizer.sample_rate)
    spectrum = torch.stft(audio, n_fft=512, hop_length=window * 2 // 5, win_length=window, window=torch.hann_window(window), return_complex=True)
    decibels = (20 * spectrum.abs().clamp(min=1e-5).log10()).numpy()  # (freqs, frames)

    figure, (ax_spec, ax_post, ax_text) = plt.subplots(3, 1, figsize=(max(8.0, 2.5 * seconds), 7), sharex=True, gridspec_kw={"height_ratios": [2, 3, 1]})
    ax_spec.imshow(decibels, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, recognizer.sample_rate / 2000), vmin=decibels.max() - 80)
    ax_spec.set_ylabel("kHz")
    symbols = recognizer.tokenizer.symbols
    ax_post.imshow(posteriors, origin="lower", aspect="auto", cmap="Greys", interpolation="nearest", extent=(starts[0], ends[-1], -0.5, len(symbols) - 0.5), vmin=0, vmax=1)
    ax_post.set_yticks(range(len(symbols)))
    ax_post.set_yticklabels(["_" if s == "<blank>" else ("|" if s == " " else s) for s in symbols], fontsize=5)
    ax_post.set_ylabel("posterior")
    for span in alignment.tokens:
        ax_post.axvspan(span.start, span.end, color="tab:blue", alpha=0.12)
        ax_text.text((span.start + span.end) / 2, 0.7, span.text, ha="center", va="center", fontsize=7)
    for span in alignment.words:
        ax_text.plot([span.start, span.end], [0.3, 0.3], color="tab:orange", linewidth=3)
        ax_text.text((span.start + span.end) / 2, 0.12, span.text, ha="center", va="center", fontsize=8)
    ax_text.set_ylim(0, 1)
    ax_text.set_yticks([])
    ax_text.set_xlabel("seconds")
    ax_text.set_xlim(0, seconds)
    figure.suptitle(f"{alignment.id}: ln P(path) {alignment.score:.1f}", fontsize=9)
    figure.tight_layout()
    output = Path(output)
    with atomic_path(output) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return output
