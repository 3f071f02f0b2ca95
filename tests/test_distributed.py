"""Data-parallel training on CPU: `asr train` under torchrun with 2 gloo processes, on speech
from the built-in eSpeak NG corpus."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asr.checkpoint import load_checkpoint
from asr.data.synth import synthesize_corpus
from asr.train import LAST
from asr.train_log import METRICS, TENSORBOARD
from conftest import TINY_OVERRIDES

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "ddp_worker.py"


@pytest.fixture(scope="module")
def speech_corpus(tmp_path_factory):
    """34 training utterances of speech, plus 3 whose audio is missing: each of those fills a
    batch alone, so some rank gets a batch with nothing left in it and must still take its step."""
    root = tmp_path_factory.mktemp("ddp_corpus")
    manifests = synthesize_corpus(root, num_utterances=40, seed=0, progress=False, num_workers=1)
    missing = [{"id": f"missing-{i}", "audio": f"wav/missing-{i}.wav", "duration": 3.9, "text": "gone"} for i in range(3)]
    with open(manifests["train"], "a") as f:
        f.write("".join(json.dumps(m) + "\n" for m in missing))
    return manifests


def torchrun(report_dir: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """`asr train` (through tests/ddp_worker.py) under torchrun, on this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               str(WORKER), str(report_dir), "configs/demo.yaml", *args]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def overrides(corpus, out_dir, *extra):
    # with the frame head: the built-in corpus has word times, and a rank whose batch is empty must
    # still reach the head's weights in its step
    return [*TINY_OVERRIDES, f"data.train={corpus['train']}", f"data.dev={corpus['dev']}", f"train.out_dir={out_dir}",
            "train.log_every=1", "optim.lr=0.01", "model.frame_head=true",
            "augment.concat=0.0", *extra]  # each utterance its own item, so the shares below can be counted


def read_report(report_dir: Path, rank: int) -> dict:
    return json.loads((report_dir / f"rank{rank}.json").read_text())


@pytest.fixture(scope="module")
def group_run(speech_corpus, tmp_path_factory):
    """A 2-process run of 3 epochs: (out_dir, report_dir, torchrun's CompletedProcess)."""
    root = tmp_path_factory.mktemp("ddp_run")
    result = torchrun(root / "report", *overrides(speech_corpus, root / "run", "train.epochs=3"))
    return root / "run", root / "report", result


def test_two_gloo_processes_train_one_model_on_disjoint_shares(speech_corpus, group_run, tmp_path):
    out, report, result = group_run
    ranks = [read_report(report, r) for r in (0, 1)]
    records = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]

    # one metrics log, written by rank 0 alone, for a group of two
    starts = [r for r in records if r.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2
    assert result.stdout.count("dev WER") == 3  # rank 0 alone validates and prints
    assert result.stdout.count("checkpoints and metrics log in") == 1
    assert list((out / TENSORBOARD).glob("events.out.tfevents.*"))

    # every rank takes the same number of steps; each epoch the two shares are disjoint and
    # together hold every training utterance exactly once
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"])
    all_ids = [json.loads(line)["id"] for line in Path(speech_corpus["train"]).read_text().splitlines()]
    train_ids = sorted(i for i in all_ids if not i.startswith("missing-"))
    epoch_ends = [0] + [r["step"] for r in records if r.get("event") == "epoch_end"]
    assert len(epoch_ends) == 4 and epoch_ends[-1] == len(ranks[0]["batches"])
    for begin, end in zip(epoch_ends, epoch_ends[1:]):
        shares = [{i for batch in rank["batches"][begin:end] for i in batch} for rank in ranks]
        assert not shares[0] & shares[1]
        assert sorted(shares[0] | shares[1]) == train_ids
        assert sum(len(batch) for rank in ranks for batch in rank["batches"][begin:end]) == len(train_ids)  # once each

    # the bad audio was skipped on whichever rank met it, and counted for the whole group
    progress = load_checkpoint(out / LAST)["training_state"]["progress"]
    assert progress["skipped_bad_audio"] == 3 * 3  # 3 files x 3 epochs
    assert sum(batch == [] for rank in ranks for batch in rank["batches"]) >= 3  # empty batches still stepped

    # the checkpoint holds what rank 0 trained, and DDP kept rank 1 identical to it, frame head too
    checkpoint = load_checkpoint(out / LAST)["model"]
    assert "frame_output.weight" in checkpoint and all("frame_loss" in r for r in records if "loss" in r)
    for rank in (0, 1):
        weights = torch.load(report / f"rank{rank}.pt", weights_only=True)
        assert weights.keys() == checkpoint.keys()
        for name, value in checkpoint.items():
            torch.testing.assert_close(weights[name], value, rtol=0, atol=0)

    # and it learned: the group's loss per label falls
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == epoch_ends[-1]
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3


def test_group_resumes_mid_epoch_exactly(speech_corpus, group_run, tmp_path):
    straight, straight_report, _ = group_run
    out = tmp_path / "run"
    # a time limit the ranks agree has passed after their first step; then --resume finishes
    torchrun(tmp_path / "first", *overrides(speech_corpus, out, "train.epochs=3", "train.time_limit_s=1e-9"))
    stopped = load_checkpoint(out / LAST)["training_state"]
    assert stopped["progress"]["step"] == 1 and stopped["progress"]["batch_in_epoch"] == 1
    assert stopped["world_size"] == 2 and len(stopped["rng_per_rank"]) == 2
    torchrun(tmp_path / "second", *overrides(speech_corpus, out, "train.epochs=3"), "--resume")

    a, b = load_checkpoint(straight / LAST), load_checkpoint(out / LAST)
    assert a["training_state"]["progress"]["step"] == b["training_state"]["progress"]["step"] > 1
    for name, weight in a["model"].items():
        torch.testing.assert_close(b["model"][name], weight, rtol=0, atol=0)
    # the resumed ranks trained on exactly the batches the straight run had left
    first, second = (read_report(tmp_path / part, 1)["batches"] for part in ("first", "second"))
    assert len(first) == 1 and first + second == read_report(straight_report, 1)["batches"]
