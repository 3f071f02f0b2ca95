"""CTC loss (Graves et al. 2006) through `torch.nn.functional.ctc_loss`, with a feasibility check.

The loss runs in float32 on the log-probs' device (cuDNN/CUDA kernels on GPU). Utterances whose
labels cannot fit their frames are found *before* the loss, masked out and counted; the
batch-first → (frames, batch, vocab) transpose that `F.ctc_loss` wants happens here and only here.

The feasibility check also takes numpy arrays, and importing this module does not import torch
(the loss and the prior import it where they run): forced alignment (asr/align.py) checks
transcripts with it in a runtime without torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from asr.arrays import is_tensor
from asr.tokens import BLANK_ID

if TYPE_CHECKING:
    import torch


def min_ctc_frames(targets: torch.Tensor | np.ndarray, target_lengths: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Fewest frames a CTC alignment of each target needs: one per label, plus one blank
    between each pair of equal neighbours.

    targets (batch, max_labels) padded, target_lengths (batch,) -> (batch,) int64: torch tensors
    (on any device; nothing leaves it) or numpy arrays, the answer of the same kind.
    """
    if is_tensor(targets):
        import torch

        positions = torch.arange(targets.shape[1], device=targets.device)  # (max_labels,)
    else:
        positions = np.arange(targets.shape[1])
    valid = positions[None, :] < target_lengths[:, None]  # (batch, max_labels)
    repeats = (targets[:, 1:] == targets[:, :-1]) & valid[:, 1:]  # (batch, max_labels - 1)
    return repeats.sum(1) + target_lengths  # int64: a sum of bools is int64 in both, and wins over int32 lengths


def ctc_loss(
    log_probs: torch.Tensor,
    frame_lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = BLANK_ID,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-utterance CTC negative log-likelihood, with infeasible utterances masked to zero.

    log_probs (batch, frames, vocab), frame_lengths (batch,), targets (batch, max_labels) padded,
    target_lengths (batch,) -> (loss (batch,) float32, feasible (batch,) bool).
    Nothing here leaves the device: the mask is applied with `torch.where`, not by indexing.
    """
    import torch
    import torch.nn.functional as F

    feasible = (min_ctc_frames(targets, target_lengths) <= frame_lengths.to(targets.device)) & (target_lengths > 0)
    loss = F.ctc_loss(
        log_probs.float().transpose(0, 1),  # (frames, batch, vocab), the one transpose
        targets,
        frame_lengths,
        target_lengths,
        blank=blank,
        reduction="none",
        zero_infinity=True,  # belt and braces: an infeasible path gives 0 loss and 0 gradient
    )  # (batch,)
    return torch.where(feasible, loss, torch.zeros_like(loss)), feasible


class LabelPrior:
    """Label priors in the CTC loss (Huang et al. 2024, "Less peaky and more accurate CTC forced
    alignment by label priors"): the loss is taken over log p(label | x) - weight * log P(label),
    P the average of the model's own posteriors over the training frames, so paths that spend
    frames on labels other than blank are penalized less and the spikes widen toward the
    labels' real extent. P is a running average (`momentum` per step) of each batch's mean
    posterior over its valid frames, starting uniform; it is saved in checkpoints, and forced
    alignment scores paths with the same adjustment (`Recognizer.alignment_scores`)."""

    def __init__(self, vocab: int, weight: float, momentum: float = 0.99, log_prior: torch.Tensor | None = None):
        import torch

        self.weight, self.momentum = weight, momentum
        self.log_prior = log_prior.float().clone() if log_prior is not None else torch.full((vocab,), -math.log(vocab))  # (vocab,)

    def adjust(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """log_probs (batch, frames, vocab), lengths (batch,) -> the log-probs less weight *
        log P; the batch's posteriors (valid frames only, detached) update P afterwards."""
        import torch

        prior = self.log_prior.to(log_probs.device)
        adjusted = log_probs - self.weight * prior
        with torch.no_grad():
            valid = (torch.arange(log_probs.shape[1], device=log_probs.device) < lengths[:, None])[:, :, None]  # (batch, frames, 1)
            mean = (log_probs.detach().float().exp() * valid).sum(dim=(0, 1)) / valid.sum().clamp(min=1)  # (vocab,)
            updated = self.momentum * prior.exp() + (1 - self.momentum) * mean
            self.log_prior = updated.clamp(min=1e-12).log()  # stays on the device: no host sync per step
        return adjusted
