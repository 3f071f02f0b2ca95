"""CTC loss (Graves et al. 2006) through `torch.nn.functional.ctc_loss`, with a feasibility check.

The loss runs in float32 on the log-probs' device (cuDNN/CUDA kernels on GPU). Utterances whose
labels cannot fit their frames are found *before* the loss, masked out and counted; the
batch-first → (frames, batch, vocab) transpose that `F.ctc_loss` wants happens here and only here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from asr.tokens import BLANK_ID


def min_ctc_frames(targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Fewest frames a CTC alignment of each target needs: one per label, plus one blank
    between each pair of equal neighbours.

    targets (batch, max_labels) padded, target_lengths (batch,) -> (batch,) int64.
    """
    positions = torch.arange(targets.shape[1], device=targets.device)  # (max_labels,)
    valid = positions[None, :] < target_lengths[:, None]  # (batch, max_labels)
    repeats = (targets[:, 1:] == targets[:, :-1]) & valid[:, 1:]  # (batch, max_labels - 1)
    return target_lengths.to(torch.int64) + repeats.sum(dim=1)


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
