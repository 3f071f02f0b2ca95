import numpy as np
import soundfile as sf

from asr.data.loader import UtteranceDataset, collate
from asr.data.manifest import Utterance
from asr.text import CharTokenizer


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


def test_pad_silence_adds_zeros_at_both_ends_and_shifts_the_word_times(tmp_path):
    """augment.pad_silence: reproducible silence before and after, the frame head's times moved
    by the silence put before."""
    import json

    import torch

    from asr.augment import silence_pads
    from asr.data.manifest import read_manifest

    samples = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    sf.write(tmp_path / "a.wav", samples, 16000, subtype="FLOAT")
    row = {"id": "a", "audio": "a.wav", "duration": 1.0, "text": "ab cd", "words": ["ab", "cd"], "word_starts": [0.1, 0.5], "word_ends": [0.4, 0.9]}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    utts = read_manifest(tmp_path / "m.jsonl")
    tokenizer = CharTokenizer.from_texts(["ab cd"])
    plain = UtteranceDataset(utts, tokenizer, 16000, timed=True)[0]
    padded = UtteranceDataset(utts, tokenizer, 16000, pad_silence=0.5, seed=3, timed=True)[0]
    lead, trail = silence_pads(0.5, 3, 0, 0)
    assert 0 < lead <= 0.5 and 0 < trail <= 0.5
    n_lead = round(lead * 16000)
    assert len(padded["audio"]) == 16000 + n_lead + round(trail * 16000)
    assert torch.equal(padded["audio"][n_lead : n_lead + 16000], plain["audio"])
    assert padded["audio"][:n_lead].abs().max() == 0 and padded["audio"][n_lead + 16000 :].abs().max() == 0
    np.testing.assert_allclose(padded["intervals"][0], np.array(plain["intervals"][0]) + n_lead / 16000)
    assert silence_pads(0.5, 3, 0, 0) == (lead, trail) and silence_pads(0.5, 3, 1, 0) != (lead, trail)


def test_concat_joins_two_utterances_at_their_words_with_both_transcripts_and_times(tmp_path):
    """augment.concat: an item that is two utterances back to back, each trimmed to its words
    (keeping a little of its own silence), its labels both transcripts with a space between, its
    timed tokens both utterances' at their new places; the second is no item of its own."""
    import json

    from asr.augment import CONCAT_GAP, concat_pairs
    from asr.data.loader import BucketBatchSampler
    from asr.data.manifest import read_manifest

    rows = []
    for i, text in enumerate(["ab cd", "ef"]):
        samples = np.zeros(16000, np.float32)
        samples[3200:12800] = 0.1 * (i + 1)  # "speech" from 0.2 to 0.8 s
        sf.write(tmp_path / f"{i}.wav", samples, 16000, subtype="FLOAT")
        words = text.split()
        starts = [0.2, 0.5][: len(words)]
        ends = [0.4, 0.8] if len(words) == 2 else [0.8]
        rows.append({"id": f"u{i}", "audio": f"{i}.wav", "duration": 1.0, "text": text, "words": words, "word_starts": starts, "word_ends": ends})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    utts = read_manifest(tmp_path / "m.jsonl")
    tokenizer = CharTokenizer.from_texts(["ab cd ef"])
    seed = next(s for s in range(100) if 0 in concat_pairs(1.0, s, 0, 2))  # a seed whose pair is (u0, u1)
    [(first, (second, keep_after, keep_before))] = concat_pairs(1.0, seed, 0, 2).items()
    assert (first, second) == (0, 1) and 0 <= keep_after <= CONCAT_GAP and 0 <= keep_before <= CONCAT_GAP
    dataset = UtteranceDataset(utts, tokenizer, 16000, concat=1.0, seed=seed, timed=True)
    item = dataset[0]
    assert item["text"] == "ab cd ef"
    assert item["labels"] == tokenizer.encode("ab cd ef")
    end = round((0.8 + keep_after) * 16000)
    start = round((0.2 - keep_before) * 16000)
    assert len(item["audio"]) == end + 16000 - start
    audio = item["audio"].numpy()
    assert np.all(audio[3200:12800] == np.float32(0.1)) and np.all(audio[end + 3200 - start : end + 12800 - start] == np.float32(0.2))
    starts, ends, labels = item["intervals"]
    assert labels == tokenizer.encode("abcdef")
    shift = (end - start) / 16000
    np.testing.assert_allclose(starts[4:], [0.2 + shift, 0.5 + shift])
    assert starts[:4] == UtteranceDataset(utts, tokenizer, 16000, timed=True)[0]["intervals"][0]
    assert UtteranceDataset(utts, tokenizer, 16000, concat=0.0, timed=True)[0]["text"] == "ab cd"
    # the epoch's batches hold the pair once: utterance 1 is no item of its own
    assert dataset.item_durations(0) == [2.0, 0.0]
    sampler = BucketBatchSampler([1.0, 1.0], 10.0, seed=seed, epoch_lengths=dataset.item_durations)
    assert [i for batch in sampler.batches() for i in batch] == [0]


def test_concat_pairs_each_utterance_at_most_once():
    from asr.augment import concat_pairs

    pairs = concat_pairs(0.5, 0, 3, 101)
    assert len(pairs) == 25
    used = list(pairs) + [second for second, _, _ in pairs.values()]
    assert len(set(used)) == len(used) == 50
    assert concat_pairs(0.5, 0, 3, 101) == pairs and concat_pairs(0.5, 0, 4, 101) != pairs
    assert concat_pairs(0.0, 0, 3, 101) == {}
