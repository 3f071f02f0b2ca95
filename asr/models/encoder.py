"""The recurrent CTC model: frontend → stacked (bi)directional recurrent layers → linear → log-probs.

Recurrent layers run on packed sequences, so the backward direction of a padded batch starts at
each utterance's own last frame and padding never reaches the states (cuDNN on GPU).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from asr.config import ModelConfig

RECURRENT_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class CTCModel(nn.Module):
    def __init__(self, input_dim: int, vocab_size: int, config: ModelConfig):
        super().__init__()
        if config.cell not in RECURRENT_CELLS:
            raise ValueError(f"model.cell={config.cell!r}: choose one of {', '.join(RECURRENT_CELLS)}")
        self.config = config
        self.frontend: nn.Module = nn.Identity()
        rnn_input = input_dim
        if config.frontend_size > 0:
            self.frontend = nn.Sequential(nn.Linear(input_dim, config.frontend_size), nn.ReLU(), nn.Dropout(config.dropout))
            rnn_input = config.frontend_size
        self.rnn = RECURRENT_CELLS[config.cell](
            rnn_input,
            config.hidden_size,
            num_layers=config.num_layers,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        rnn_output = config.hidden_size * (2 if config.bidirectional else 1)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(rnn_output, vocab_size)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (batch, frames, input_dim), lengths (batch,) -> log_probs (batch, frames, vocab), lengths (batch,)."""
        x = self.frontend(feats)  # (batch, frames, rnn_input)
        # pack_padded_sequence wants lengths on the CPU (cuDNN reads them on the host).
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed, _ = self.rnn(packed)
        x, _ = pad_packed_sequence(packed, batch_first=True, total_length=feats.shape[1])  # (batch, frames, rnn_output)
        logits = self.output(self.dropout(x))  # (batch, frames, vocab)
        return torch.log_softmax(logits.float(), dim=-1), lengths  # float32 even under autocast


def build_model(config: ModelConfig, input_dim: int, vocab_size: int) -> CTCModel:
    return CTCModel(input_dim, vocab_size, config)
