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
