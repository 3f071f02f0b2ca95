"""Greedy (best-path) CTC decoding, batched."""

from __future__ import annotations

import torch

from asr.tokens import BLANK_ID


def decode_greedy(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = BLANK_ID) -> list[list[int]]:
    """Best path per utterance: argmax per frame, merge repeats, drop blanks.

    log_probs (batch, frames, vocab), lengths (batch,) -> one list of label ids per utterance.
    """
    best = log_probs.argmax(dim=-1)  # (batch, frames)
    frames = torch.arange(best.shape[1], device=best.device)  # (frames,)
    valid = frames[None, :] < lengths.to(best.device)[:, None]  # (batch, frames)
    changed = torch.ones_like(valid)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = valid & changed & (best != blank)  # (batch, frames)
    best, keep = best.cpu(), keep.cpu()  # one transfer for the whole batch
    return [row[mask].tolist() for row, mask in zip(best, keep)]
