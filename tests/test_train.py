import json
import os
import signal
import subprocess
import sys
import time

import pytest
import soundfile as sf
import torch

from asr.checkpoint import load_checkpoint
from asr.config import load_config
from asr.train import BEST, LAST, train
from asr.train_log import METRICS
from conftest import TINY_OVERRIDES


def config_for(manifests, out_dir, *extra):
    return load_config(
        "configs/demo.yaml",
        [*TINY_OVERRIDES, f"data.train={manifests['train']}", f"data.dev={manifests['dev']}", f"train.out_dir={out_dir}", *extra],
    )


def test_resume_mid_epoch_is_exact(noise_corpus, tmp_path):
    straight = train(config_for(noise_corpus, tmp_path / "a"), show_progress=False)
    # a time limit that stops after the first step, then --resume finishes the same schedule
    interrupted = config_for(noise_corpus, tmp_path / "b", "train.time_limit_s=1e-9")
    train(interrupted, show_progress=False)
    stopped = load_checkpoint(tmp_path / "b" / LAST)["training_state"]["progress"]
    assert stopped["step"] == 1 and stopped["epoch"] == 0 and stopped["batch_in_epoch"] == 1
    train(config_for(noise_corpus, tmp_path / "b"), resume=True, show_progress=False)

    a = load_checkpoint(straight / LAST)
    b = load_checkpoint(tmp_path / "b" / LAST)
    assert a["training_state"]["progress"]["step"] == b["training_state"]["progress"]["step"] > 1
    for name, weight in a["model"].items():
        torch.testing.assert_close(b["model"][name], weight, rtol=0, atol=0)


def test_training_reduces_loss_and_logs(noise_corpus, tmp_path):
    out = train(config_for(noise_corpus, tmp_path / "r", "train.epochs=6", "optim.lr=0.01"), show_progress=False)
    records = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]
    assert any("dev_wer" in r for r in records)
    assert (out / BEST).is_file() and (out / LAST).is_file()


def test_bad_audio_and_infeasible_labels_are_skipped_and_counted(noise_corpus, tmp_path):
    lines = noise_corpus["train"].read_text().splitlines()
    broken = json.loads(lines[0]) | {"id": "broken", "audio": "wav/missing.wav"}
    too_long = json.loads(lines[1]) | {"id": "too_long", "text": "a" * 200}  # 200 labels cannot fit ~1 s
    noise_corpus["train"].write_text("\n".join(lines + [json.dumps(broken), json.dumps(too_long)]) + "\n")
    out = train(config_for(noise_corpus, tmp_path / "s", "train.epochs=1"), show_progress=False)
    progress = load_checkpoint(out / LAST)["training_state"]["progress"]
    assert progress["skipped_bad_audio"] == 1
    assert progress["skipped_infeasible"] == 1
    assert progress["skipped_nonfinite_steps"] == 0
    events = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    assert any(e.get("event") == "bad_audio" and e["id"] == "broken" for e in events)
    state = load_checkpoint(out / LAST)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_sigkill_mid_epoch_then_resume(noise_corpus, tmp_path):
    """A run killed with SIGKILL leaves a loadable last.pt (never half a file) and --resume goes
    on from the step it saved, to the end of the same schedule."""
    out = tmp_path / "k"
    args = [sys.executable, "-m", "asr", "train", "configs/demo.yaml", *TINY_OVERRIDES, f"data.train={noise_corpus['train']}",
            f"train.out_dir={out}", "train.epochs=40", "train.save_every_steps=1", "train.log_every=1", "train.num_threads=1"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (out / LAST).is_file() and load_checkpoint(out / LAST)["training_state"]["progress"]["step"] >= 5:
                break
            time.sleep(0.05)
        time.sleep(0.137)  # land somewhere inside a later step (or its checkpoint write)
        assert process.poll() is None, "training finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        process.kill()
    saved = load_checkpoint(out / LAST)["training_state"]["progress"]  # loads: never half-written
    assert 5 <= saved["step"] and saved["epoch"] < 40
    assert not [p for p in out.iterdir() if p.name.startswith("last") and p.name != LAST]

    threads = torch.get_num_threads()
    try:  # one thread: a tiny model on a busy 2-core machine runs ~10x faster than with two
        config = config_for(noise_corpus, out, "train.epochs=40", "train.log_every=1", "train.eval_every_epochs=1000", "train.num_threads=1")
        train(config, resume=True, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    starts = [r for r in records if r.get("event") == "start"]
    assert [s["step"] for s in starts] == [0, saved["step"]]
    resumed_steps = [r["step"] for r in records[records.index(starts[1]):] if "loss" in r]
    assert resumed_steps[0] == saved["step"] + 1  # no step repeated or skipped
    final = load_checkpoint(out / LAST)["training_state"]["progress"]
    assert final["epoch"] == 40 and final["step"] == resumed_steps[-1]


def test_label_prior_training_saves_its_prior_resumes_exactly_and_alignment_uses_it(noise_corpus, tmp_path):
    from asr.inference import Recognizer

    prior = ("train.label_prior_weight=0.3",)
    straight = train(config_for(noise_corpus, tmp_path / "a", *prior), show_progress=False)
    train(config_for(noise_corpus, tmp_path / "b", *prior, "train.time_limit_s=1e-9"), show_progress=False)
    train(config_for(noise_corpus, tmp_path / "b", *prior), resume=True, show_progress=False)
    a, b = load_checkpoint(straight / LAST), load_checkpoint(tmp_path / "b" / LAST)
    log_prior = a["label_log_prior"]
    assert log_prior.shape == (a["tokenizer"].vocab_size,)
    assert float(log_prior.logsumexp(0)) == pytest.approx(0.0, abs=1e-4)  # a distribution over the labels
    assert float(log_prior.max() - log_prior.min()) > 0.01  # moved from uniform (0 apart) toward the model's posteriors
    torch.testing.assert_close(b["label_log_prior"], log_prior, rtol=0, atol=0)  # resumed with the prior it had
    for name, weight in a["model"].items():
        torch.testing.assert_close(b["model"][name], weight, rtol=0, atol=0)
    recognizer = Recognizer.from_checkpoint(straight / LAST, device="cpu")
    lp = torch.randn(1, 5, len(log_prior)).log_softmax(-1)
    torch.testing.assert_close(recognizer.alignment_scores(lp), lp - 0.3 * log_prior)
    assert "label_log_prior" not in load_checkpoint(train(config_for(noise_corpus, tmp_path / "c"), show_progress=False) / LAST)


def write_burst_corpus(root, count: int = 16, seed: int = 0) -> dict[str, object]:
    """Each word a tone of its own pitch with silence around it, and the manifest says when: a
    frame head can learn where the words are from that alone."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    texts = ["hello world", "a cat sat", "no", "it is good"]
    manifests = {}
    for split, n in (("train", count), ("dev", 4)):
        rows = []
        for i in range(n):
            words = texts[i % 4].split()
            audio, starts, ends, t = [], [], [], float(rng.uniform(0.1, 0.3))
            audio.append(np.zeros(int(t * 16000)))
            for word in words:
                length = float(rng.uniform(0.15, 0.4))
                starts.append(round(t, 4))
                pitch = 300.0 * (1 + sorted({w for t in texts for w in t.split()}).index(word))
                audio.append(0.3 * np.sin(2 * np.pi * pitch * np.arange(int(length * 16000)) / 16000))
                t += length
                ends.append(round(t, 4))
                gap = float(rng.uniform(0.1, 0.3))
                audio.append(np.zeros(int(gap * 16000)))
                t += gap
            samples = np.concatenate(audio).astype(np.float32)
            path = root / "wav" / f"{split}{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, samples, 16000)
            rows.append({"id": f"{split}{i}", "audio": f"wav/{split}{i}.wav", "duration": len(samples) / 16000, "text": texts[i % 4],
                         "words": words, "word_starts": starts, "word_ends": ends})  # fmt: skip
        manifests[split] = root / f"{split}.jsonl"
        manifests[split].write_text("".join(json.dumps(x) + "\n" for x in rows))
    return manifests


def test_frame_head_learns_where_the_words_are_and_alignment_reads_it(tmp_path):
    from asr.data.manifest import read_manifest
    from asr.inference import Recognizer, align_dataset

    corpus = write_burst_corpus(tmp_path)
    rows = corpus["train"].read_text().splitlines()
    bad = json.loads(rows[0]) | {"id": "bad_times", "word_starts": [0.1]}  # times that do not fit: trains untimed, logged
    corpus["train"].write_text("\n".join(rows + [json.dumps(bad)]) + "\n")
    head = ("model.frame_head=true", "train.epochs=40", "optim.lr=0.01", "model.hidden_size=24")
    out = train(config_for(corpus, tmp_path / "f", *head), show_progress=False)
    records = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    frame_losses = [r["frame_loss"] for r in records if "frame_loss" in r]
    assert frame_losses and frame_losses[-1] < 0.5 * frame_losses[0]
    assert [r["examples"][0][0] for r in records if r.get("event") == "untimed"] == ["bad_times"]
    assert "frame_output.weight" in load_checkpoint(out / LAST)["model"]

    recognizer = Recognizer.from_checkpoint(out / LAST, device="cpu")
    utterances = read_manifest(corpus["train"])[:-1]
    assert recognizer.align_with_frame_head
    errors = []
    for alignment in align_dataset(recognizer, utterances).alignments:
        truth = next(u for u in utterances if u.id == alignment.id).extra
        assert [w.text for w in alignment.words] == truth["words"]
        errors += [abs(w.start - s) for w, s in zip(alignment.words, truth["word_starts"])]
        errors += [abs(w.end - e) for w, e in zip(alignment.words, truth["word_ends"])]
    frame = recognizer.features.frame_seconds
    assert sum(e <= 1.5 * frame for e in errors) / len(errors) > 0.9  # boundaries on the tones' edges


def test_frame_head_without_any_times_is_an_error(noise_corpus, tmp_path):
    from asr.train import TrainingError

    with pytest.raises(TrainingError, match="no row has times"):
        train(config_for(noise_corpus, tmp_path / "n", "model.frame_head=true"), show_progress=False)


def test_global_cmvn_training_saves_its_statistics_and_the_recognizer_normalizes_with_them(noise_corpus, tmp_path, monkeypatch):
    import asr.train
    from asr.data.manifest import read_manifest
    from asr.features import FeatureExtractor, compute_cmvn_stats
    from asr.inference import Recognizer

    out = train(config_for(noise_corpus, tmp_path / "g", "features.cmvn=global"), show_progress=False)
    stats = load_checkpoint(out / LAST)["cmvn_stats"]
    config = load_checkpoint(out / LAST)["config"]
    train_utts = read_manifest(noise_corpus["train"])  # 16, fewer than CMVN_STATS_UTTERANCES: all of them
    plain = FeatureExtractor(config.features)
    audios = [torch.from_numpy(sf.read(u.audio, dtype="float32")[0]) for u in train_utts]
    mean, var, frames = compute_cmvn_stats(plain, audios)
    assert stats["frames"] == frames > 1000
    torch.testing.assert_close(stats["mean"], mean, rtol=0, atol=0)
    torch.testing.assert_close(stats["var"], var, rtol=0, atol=0)
    records = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    assert [r["cmvn_stats_frames"] for r in records if r.get("event") == "start"] == [frames]

    recognizer = Recognizer.from_checkpoint(out / BEST, device="cpu")
    audio = audios[0][None, :]
    feats, _ = recognizer.features(audio, torch.tensor([audio.shape[1]]))
    static, _, _ = plain.static_features(audio, torch.tensor([audio.shape[1]]))  # (1, frames, 20)
    expected = (static - mean) / (var + 1e-10).sqrt()
    torch.testing.assert_close(feats[0, :, :20], expected[0, ::2], atol=1e-4, rtol=1e-4)  # stacked 2, subsampled 2

    # --resume reads them back instead of computing them again
    train(config_for(noise_corpus, tmp_path / "r", "features.cmvn=global", "train.time_limit_s=1e-9"), show_progress=False)
    monkeypatch.setattr(asr.train, "compute_cmvn_stats", lambda *args: pytest.fail("statistics recomputed on --resume"))
    train(config_for(noise_corpus, tmp_path / "r", "features.cmvn=global"), resume=True, show_progress=False)
    torch.testing.assert_close(load_checkpoint(tmp_path / "r" / LAST)["cmvn_stats"]["mean"], mean, rtol=0, atol=0)
