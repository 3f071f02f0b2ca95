import itertools
import torch

from asr.ctc import ctc_loss, min_ctc_frames
from asr.decode import decode_greedy


def collapse(path):
    out = []
    for k, g in itertools.groupby(path):
        if k != 0:
            out.append(k)
    return out


def brute_force_nll(log_probs: torch.Tensor, target: list[int]) -> float:
    """-log sum over every alignment of `target`: exponential, tiny inputs only."""
    frames, vocab = log_probs.shape
    scores = [
        sum(float(log_probs[t, s]) for t, s in enumerate(path))
        for path in itertools.product(range(vocab), repeat=frames)
        if collapse(path) == target
    ]
    return -float(torch.logsumexp(torch.tensor(scores, dtype=torch.float64), 0))


def test_min_frames_counts_repeats():
    targets = torch.tensor([[1, 1, 2, 2, 2], [1, 2, 3, 0, 0], [4, 4, 0, 0, 0]])
    lengths = torch.tensor([5, 3, 1])
    # [1,1,2,2,2] needs 5 labels + 3 separating blanks; the padding (0s) never counts
    assert min_ctc_frames(targets, lengths).tolist() == [8, 3, 1]


def test_loss_matches_brute_force_and_masks_infeasible():
    torch.manual_seed(0)
    log_probs = torch.randn(3, 5, 3).log_softmax(-1)  # (batch, frames, vocab)
    targets = torch.tensor([[1, 2], [1, 1], [2, 2]])
    target_lengths = torch.tensor([2, 2, 2])
    frame_lengths = torch.tensor([5, 4, 2])  # the third needs 3 frames for "2 2": infeasible
    loss, feasible = ctc_loss(log_probs, frame_lengths, targets, target_lengths)
    assert feasible.tolist() == [True, True, False]
    assert abs(loss[0].item() - brute_force_nll(log_probs[0], [1, 2])) < 1e-4
    assert abs(loss[1].item() - brute_force_nll(log_probs[1, :4], [1, 1])) < 1e-4
    assert loss[2].item() == 0.0


def test_infeasible_batch_gives_finite_zero_gradient():
    logits = torch.randn(1, 3, 4, requires_grad=True)
    loss, feasible = ctc_loss(logits.log_softmax(-1), torch.tensor([3]), torch.tensor([[1, 1, 1]]), torch.tensor([3]))
    loss.sum().backward()
    assert not feasible.any()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


def test_greedy_merges_repeats_and_respects_blanks_and_lengths():
    # per-frame argmax: a a _ a b b _ | padding frames favour label 3
    best = [1, 1, 0, 1, 2, 2, 0, 3, 3]
    log_probs = torch.full((2, 9, 4), -10.0)
    for t, s in enumerate(best):
        log_probs[0, t, s] = 0.0
        log_probs[1, t, s] = 0.0
    out = decode_greedy(log_probs, torch.tensor([7, 9]))
    assert out == [[1, 1, 2], [1, 1, 2, 3]]


def test_label_prior_adjusts_the_loss_and_follows_the_posteriors_of_valid_frames():
    from asr.ctc import LabelPrior

    prior = LabelPrior(vocab=3, weight=0.5, momentum=0.5)
    assert torch.allclose(prior.log_prior.exp(), torch.full((3,), 1 / 3))
    log_probs = torch.tensor([[[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [0.0, 0.0, 1.0]]]).clamp(min=1e-9).log()  # the last frame is padding
    adjusted = prior.adjust(log_probs, torch.tensor([2]))
    assert torch.allclose(adjusted, log_probs + 0.5 * torch.tensor(3.0).log())  # less 0.5 * log(1/3)
    # the prior moves halfway to the mean posterior of the two valid frames; the padding frame counts for nothing
    assert torch.allclose(prior.log_prior.exp(), 0.5 * torch.full((3,), 1 / 3) + 0.5 * torch.tensor([0.7, 0.2, 0.1]), atol=1e-6)
