"""The recurrent CTC model: frontend → stacked (bi)directional recurrent layers → linear → log-probs.

Each layer runs one unidirectional recurrence per direction. The backward direction sees every
utterance reversed *within its own length* (`reverse_padded`), so it starts at the utterance's
last real frame and padding never reaches its state; the forward direction needs nothing, since
padding only follows the real frames. On this CPU that is 2.2x faster than packed sequences
(packing makes every time step a different batch size; measured: 3x256 BiLSTM, batch 33 x 120
frames, forward+backward 0.67 s masked vs 1.46 s packed), and on CUDA it is plain cuDNN calls.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from asr.config import ModelConfig

RECURRENT_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}  # unidirectional, one layer; cuDNN on GPU


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence within its own length; padded frames stay where they are.

    x (batch, frames, dim), lengths (batch,) -> (batch, frames, dim). Its own inverse.
    """
    frames = torch.arange(x.shape[1], device=x.device)  # (frames,)
    lengths = lengths.to(x.device)[:, None]  # (batch, 1)
    index = torch.where(frames < lengths, lengths - 1 - frames, frames)  # (batch, frames)
    return x.gather(1, index[:, :, None].expand_as(x))


class RecurrentLayer(nn.Module):
    """One recurrent layer, one or two directions; outputs of the directions are concatenated."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, bidirectional: bool):
        super().__init__()
        make = RECURRENT_CELLS[cell]
        self.forward_rnn = make(input_size, hidden_size, batch_first=True)
        self.backward_rnn = make(input_size, hidden_size, batch_first=True) if bidirectional else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (batch, frames, input_size), lengths (batch,) -> (batch, frames, directions * hidden_size)."""
        forward_out, _ = self.forward_rnn(x)  # (batch, frames, hidden)
        if self.backward_rnn is None:
            return forward_out
        backward_out, _ = self.backward_rnn(reverse_padded(x, lengths))  # (batch, frames, hidden), reversed time
        return torch.cat([forward_out, reverse_padded(backward_out, lengths)], dim=-1)


class CTCModel(nn.Module):
    def __init__(self, input_dim: int, vocab_size: int, config: ModelConfig):
        super().__init__()
        if config.cell not in RECURRENT_CELLS:
            raise ValueError(f"model.cell={config.cell!r}: choose one of {', '.join(RECURRENT_CELLS)}")
        self.config = config
        self.frontend: nn.Module = nn.Identity()
        size = input_dim
        if config.frontend_size > 0:
            self.frontend = nn.Sequential(nn.Linear(input_dim, config.frontend_size), nn.ReLU(), nn.Dropout(config.dropout))
            size = config.frontend_size
        directions = 2 if config.bidirectional else 1
        self.layers = nn.ModuleList()
        for _ in range(config.num_layers):
            self.layers.append(RecurrentLayer(config.cell, size, config.hidden_size, config.bidirectional))
            size = directions * config.hidden_size
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(size, vocab_size)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (batch, frames, input_dim), lengths (batch,) -> log_probs (batch, frames, vocab), lengths (batch,).

        Frames past an utterance's length hold log-probs too; they are meaningless and every
        consumer (CTC loss, decoders) reads only the first `lengths` frames.
        """
        x = self.frontend(feats)  # (batch, frames, frontend)
        for i, layer in enumerate(self.layers):
            if i:
                x = self.dropout(x)
            x = layer(x, lengths)  # (batch, frames, directions * hidden)
        logits = self.output(self.dropout(x))  # (batch, frames, vocab)
        return torch.log_softmax(logits.float(), dim=-1), lengths  # float32 even under autocast


def build_model(config: ModelConfig, input_dim: int, vocab_size: int) -> CTCModel:
    return CTCModel(input_dim, vocab_size, config)
