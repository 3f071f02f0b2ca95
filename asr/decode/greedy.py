"""Greedy (best-path) CTC decoding, batched, on numpy arrays or torch tensors."""

from __future__ import annotations

import numpy as np

from asr.arrays import is_tensor, to_numpy
from asr.tokens import BLANK_ID


def decode_greedy(log_probs, lengths, blank: int = BLANK_ID) -> list[list[int]]:
    """Best path per utterance: argmax per frame, merge repeats, drop blanks.

    log_probs (batch, frames, vocab), lengths (batch,): numpy arrays, or torch tensors (the
    argmax then runs on their device) -> one list of label ids per utterance.
    """
    if is_tensor(log_probs):
        best = to_numpy(log_probs.argmax(dim=-1).cpu())  # (batch, frames), one transfer for the batch
    else:
        best = np.asarray(log_probs).argmax(axis=-1)
    lengths = to_numpy(lengths.cpu() if is_tensor(lengths) else lengths)
    valid = np.arange(best.shape[1])[None, :] < lengths[:, None]  # (batch, frames)
    changed = np.ones_like(valid)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = valid & changed & (best != blank)  # (batch, frames)
    return [row[mask].tolist() for row, mask in zip(best, keep)]
