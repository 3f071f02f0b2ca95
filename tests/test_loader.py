import numpy as np
import soundfile as sf

from asr.data.loader import BucketBatchSampler, UtteranceDataset, collate
from asr.data.manifest import Utterance
from asr.text import CharTokenizer


def test_sampler_covers_everything_once_within_budget():
    rng = np.random.default_rng(0)
    durations = rng.uniform(0.5, 8.0, size=500).tolist()
    sampler = BucketBatchSampler(durations, batch_seconds=40.0, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(500))
        for b in batches:
            assert max(durations[i] for i in b) * len(b) <= 40.0 or len(b) == 1


def test_sampler_is_deterministic_shuffles_per_epoch_and_resumes():
    durations = np.random.default_rng(1).uniform(1, 5, size=200).tolist()
    a = BucketBatchSampler(durations, 20.0, seed=7)
    b = BucketBatchSampler(durations, 20.0, seed=7)
    a.set_epoch(0)
    b.set_epoch(0)
    epoch0 = list(a)
    assert epoch0 == list(b)
    a.set_epoch(1)
    assert list(a) != epoch0
    b.set_epoch(0, start_batch=5)
    assert list(b) == epoch0[5:] and len(b) == len(epoch0) - 5


def test_dataset_reports_bad_text_and_bad_audio(tmp_path):
    sf.write(tmp_path / "ok.wav", np.zeros(1600, dtype=np.float32) + 0.01, 16000)
    (tmp_path / "broken.wav").write_bytes(b"garbage" * 20)
    utts = [
        Utterance("ok", str(tmp_path / "ok.wav"), 0.1, "fine"),
        Utterance("digits", str(tmp_path / "ok.wav"), 0.1, "room 101"),
        Utterance("broken", str(tmp_path / "broken.wav"), 0.1, "fine"),
    ]
    dataset = UtteranceDataset(utts, CharTokenizer(), 16000)
    assert [u for u, _ in dataset.rejected] == ["digits"]
    batch = collate([dataset[0], dataset[1]])
    assert batch.ids == ["ok"]
    assert batch.bad[0][0] == "broken" and "broken.wav" in batch.bad[0][1]
    assert batch.audio.shape == (1, 1600) and batch.targets.tolist() == [CharTokenizer().encode("fine")]
