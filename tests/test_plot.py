"""`asr plot RUN_DIR`: training curves from metrics.jsonl to a PNG."""

import json

import pytest

from asr.cli import main
from asr.plot import PlotError, read_curves


def write_log(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_plot_draws_a_png_from_the_metrics_log(tmp_path):
    pytest.importorskip("matplotlib", reason="asr plot needs the 'plot' extra")
    records = [{"event": "start", "step": 0}]
    records += [{"step": s, "loss": 10 / s, "lr": 1e-3, "grad_norm": 2.0, "audio_s_per_s": 50.0} for s in range(1, 41)]
    records += [{"event": "epoch_end", "step": 40, "dev_wer": 0.5}]
    write_log(tmp_path / "metrics.jsonl", records)
    assert main(["plot", str(tmp_path)]) == 0
    png = (tmp_path / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_resumed_steps_keep_the_later_value_and_a_cut_last_line_is_ignored(tmp_path):
    records = [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 3, "loss": 3.0},
               {"event": "start", "step": 2}, {"step": 3, "loss": 2.5}]
    write_log(tmp_path / "metrics.jsonl", records, tail='{"step": 4, "lo')  # killed mid-line
    assert read_curves(tmp_path / "metrics.jsonl")["loss"] == [(1, 5.0), (2, 4.0), (3, 2.5)]


def test_a_run_without_a_log_is_a_clear_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "metrics.jsonl: no metrics log" in capsys.readouterr().err
    write_log(tmp_path / "metrics.jsonl", [{"step": 1, "loss": 1.0}], tail="not json\n" + json.dumps({"step": 2}) + "\n")
    with pytest.raises(PlotError, match=r"metrics.jsonl:2: not a JSON line"):
        read_curves(tmp_path / "metrics.jsonl")
