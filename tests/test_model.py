import pytest
import torch

from asr.config import ModelConfig
from asr.models import build_model


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padding_does_not_leak_into_backward_direction(cell):
    """Each utterance of a padded batch gets the same outputs as when run alone."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell=cell, hidden_size=8, num_layers=2, dropout=0.0), input_dim=5, vocab_size=6).eval()
    lengths = torch.tensor([7, 3, 5])
    feats = torch.randn(3, 7, 5)
    feats[1, 3:] = 100.0  # garbage in the padding must not matter
    feats[2, 5:] = -100.0
    batched, out_lengths = model(feats, lengths)
    assert batched.shape == (3, 7, 6) and out_lengths.tolist() == [7, 3, 5]
    for i, n in enumerate(lengths.tolist()):
        alone, _ = model(feats[i : i + 1, :n], lengths[i : i + 1])
        torch.testing.assert_close(batched[i, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_output_is_float32_log_probs():
    model = build_model(ModelConfig(hidden_size=8, num_layers=1, frontend_size=12), input_dim=5, vocab_size=4)
    log_probs, _ = model(torch.randn(2, 4, 5), torch.tensor([4, 2]))
    assert log_probs.dtype == torch.float32
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 4))


def test_unknown_cell_is_an_error():
    with pytest.raises(ValueError, match="model.cell='transformer'"):
        build_model(ModelConfig(cell="transformer"), 5, 4)
