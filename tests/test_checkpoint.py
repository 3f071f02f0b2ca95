import pickle

import pytest
import torch

from asr.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from asr.config import load_config
from asr.models import build_model
from asr.text import CharTokenizer


def make(tmp_path):
    config = load_config(None, ["model.hidden_size=8", "model.num_layers=1"])
    tokenizer = CharTokenizer()
    model = build_model(config.model, 12, tokenizer.vocab_size)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model=model, config=config, tokenizer=tokenizer, training_state={"progress": {"step": 3}})
    return path, model, config


def test_round_trip(tmp_path):
    path, model, config = make(tmp_path)
    state = load_checkpoint(path)
    assert state["config"] == config
    assert state["tokenizer"].symbols == CharTokenizer().symbols
    assert state["training_state"]["progress"]["step"] == 3
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state["model"][k], v)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "asr-checkpoint-v1", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt: not a loadable checkpoint"):
        load_checkpoint(path)


def test_truncated_and_foreign_files(tmp_path):
    path, _, _ = make(tmp_path)
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not an asr-checkpoint-v1 file"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "p.pt").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "p.pt")


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path, model, config = make(tmp_path)
    before = path.read_bytes()

    def broken_save(obj, f):
        with open(f, "wb") as out:
            out.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, config=config, tokenizer=CharTokenizer())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_cmvn_stats_round_trip(tmp_path):
    config = load_config(None, ["model.hidden_size=8", "model.num_layers=1", "features.cmvn=global"])
    tokenizer = CharTokenizer()
    model = build_model(config.model, 80, tokenizer.vocab_size)
    stats = {"mean": torch.randn(80), "var": torch.rand(80), "frames": 1234}
    save_checkpoint(tmp_path / "c.pt", model=model, config=config, tokenizer=tokenizer, cmvn_stats=stats)
    saved = load_checkpoint(tmp_path / "c.pt")["cmvn_stats"]
    assert saved["frames"] == 1234
    torch.testing.assert_close(saved["mean"], stats["mean"], rtol=0, atol=0)
    torch.testing.assert_close(saved["var"], stats["var"], rtol=0, atol=0)
    assert "cmvn_stats" not in load_checkpoint(make(tmp_path)[0])
