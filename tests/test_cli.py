import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from asr.cli import main
from asr.config import load_config
from asr.train import BEST, train
from conftest import TINY_OVERRIDES


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import write_noise_corpus

    root = tmp_path_factory.mktemp("cli")
    manifests = write_noise_corpus(root)
    config = load_config(
        "configs/demo.yaml",
        [*TINY_OVERRIDES, f"data.train={manifests['train']}", f"data.dev={manifests['dev']}", f"train.out_dir={root / 'run'}"],
    )
    return train(config, show_progress=False) / BEST, manifests


def test_transcribe_reports_bad_files_and_carries_on(checkpoint, tmp_path, capsys):
    ckpt, _ = checkpoint
    rate = 44100  # any rate, any channel count, any format soundfile reads
    stereo = (0.1 * np.random.default_rng(0).standard_normal((rate, 2))).astype(np.float32)
    sf.write(tmp_path / "good.flac", stereo, rate)
    sf.write(tmp_path / "good.sph", stereo[:, 0], rate, format="NIST", subtype="PCM_16")
    (tmp_path / "empty.wav").write_bytes(b"")
    files = [tmp_path / "good.flac", tmp_path / "empty.wav", tmp_path / "missing.ogg", tmp_path / "good.sph"]
    code = main(["transcribe", str(ckpt), *map(str, files)])
    out, err = capsys.readouterr()
    assert code == 1
    lines = out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(files[0]), str(files[3])]
    assert "empty.wav: empty file" in err and "missing.ogg: no such file" in err
    assert "2 of 4 file(s) failed" in err


def test_transcribe_json(checkpoint, tmp_path, capsys):
    ckpt, _ = checkpoint
    sf.write(tmp_path / "a.wav", np.zeros(8000, dtype=np.float32) + 0.01, 8000)
    assert main(["transcribe", "--json", str(ckpt), str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0]["file"].endswith("a.wav") and isinstance(records[0]["text"], str)
    assert records[1]["file"].endswith("b.wav") and "no such file" in records[1]["error"]


def test_evaluate_writes_per_utterance_results(checkpoint, tmp_path, capsys):
    ckpt, manifests = checkpoint
    out_file = tmp_path / "rec.jsonl"
    assert main(["evaluate", str(ckpt), str(manifests["dev"]), "--output", str(out_file)]) == 0
    table = capsys.readouterr().out
    assert "greedy WER" in table and "greedy CER" in table
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(records) == 4
    for r in records:
        assert {"id", "ref", "hyp", "sub", "del", "ins"} <= set(r)
        assert r["sub"] + r["del"] <= r["ref_words"]


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "none.pt"), str(tmp_path / "m.jsonl")]) == 2
    assert "none.pt: no such checkpoint" in capsys.readouterr().err
    assert main(["train", "configs/demo.yaml", "model.hidden=3"]) == 2
    assert "hidden" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The README's demo, as a user runs it: time and WER bars of the pipeline issue."""
    result = subprocess.run(
        [sys.executable, "-m", "asr", "demo", "--out", str(tmp_path / "demo")], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    wer = float(out.split("greedy WER")[1].split("%")[0])
    seconds = float(out.split("wall time:")[1].split("s")[0])
    print(out)
    assert wer <= 10.0, out
    beam_wer = float(out.split("beam 16 + LM WER")[1].split("%")[0])  # word 3-gram from the training text
    assert beam_wer < 0.5 * wer, out  # the LM must cut the error clearly, not by noise
    assert seconds <= 600, out
    assert (tmp_path / "demo" / "run" / "best.pt").is_file()
    assert (tmp_path / "demo" / "run" / "metrics.jsonl").is_file()
    assert "hypothesis" in out
