"""What the torch layouts of the prefix beam search (flat, dense, triton) share: the frames they
skip and the labels each frame tries, in torch ops on the log-probs' device (the same selection
as `common.py`'s on numpy arrays), and, for the layouts that keep a fixed (utterance, beam) grid
of slots (dense, triton), the final scores and the walk back over the back-pointers.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from asr.decode.beam.common import NEG_INF, BeamOptions, Hypothesis
from asr.tokens import BLANK_ID


def skip_blank_frames(log_probs: torch.Tensor, lengths: torch.Tensor, threshold: float, blank: int = BLANK_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop frames whose blank probability exceeds `threshold` when the frame before did too.
    The first frame of each run is kept, so a label repeated across the run still reads as two.

    log_probs (batch, frames, vocab), lengths (batch,) -> compacted copies of both.
    """
    frames = log_probs.shape[1]
    valid = torch.arange(frames, device=log_probs.device)[None, :] < lengths[:, None]  # (batch, frames)
    blank_run = log_probs[..., blank] > math.log(threshold)  # (batch, frames)
    drop = blank_run.clone()
    drop[:, 0] = False
    drop[:, 1:] &= blank_run[:, :-1]
    keep = valid & ~drop
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # kept frames first, in order
    compacted = log_probs.gather(1, order[..., None].expand(-1, -1, log_probs.shape[2]))
    new_lengths = keep.sum(dim=1)
    num_frames = int(new_lengths.max()) if new_lengths.numel() else 0
    return compacted[:, : max(num_frames, 1)], new_lengths



def frame_candidates(log_probs: torch.Tensor, lengths: torch.Tensor, top_k: int, min_logp: float, blank: int, cum_prob: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The labels each frame tries: its `top_k` most probable non-blank labels with log prob at
    least `min_logp`, among the most probable labels (blank included) whose probabilities first
    reach `cum_prob` in sum. log_probs (batch, frames, vocab) -> the labels and their log probs,
    both (batch * frames, k), k the most any frame has (padded with log prob -inf)."""
    batch, frames, vocab = log_probs.shape
    lp = log_probs.reshape(-1, vocab)
    ok = candidate_mask(lp, lengths, frames, min_logp, blank, cum_prob)
    count = ok.sum(dim=1)
    if top_k < vocab - 1:  # the frames with more labels than that keep their top_k
        over = (count > top_k).nonzero().squeeze(1)
        if over.numel():
            rows = lp.index_select(0, over)
            rows[:, blank] = NEG_INF
            top = torch.zeros_like(rows, dtype=torch.bool).scatter_(1, rows.topk(top_k, dim=1).indices, True)
            ok.index_copy_(0, over, ok.index_select(0, over) & top)
            count = ok.sum(dim=1)
    k = max(int(count.max()) if count.numel() else 0, 1)
    at = ok.view(-1).nonzero().squeeze(1)  # (n,) row * vocab + label, rising
    r = torch.div(at, vocab, rounding_mode="floor")
    first = count.cumsum(0).sub_(count)  # where each row's candidates start among them
    into = r * k + torch.arange(at.shape[0], device=lp.device).sub_(first.index_select(0, r))  # (row, place in the row)
    cand_id = torch.full((lp.shape[0] * k,), blank, dtype=torch.long, device=lp.device).index_copy_(0, into, at - r * vocab)
    cand_lp = torch.full((lp.shape[0] * k,), NEG_INF, device=lp.device).index_copy_(0, into, lp.view(-1).index_select(0, at))
    return cand_id.view(-1, k), cand_lp.view(-1, k)


def candidate_mask(lp: torch.Tensor, lengths: torch.Tensor, frames: int, min_logp: float, blank: int, cum_prob: float) -> torch.Tensor:
    """Which labels of each frame may be tried, before the top-k: lp (batch * frames, vocab) ->
    bool, the same shape. Not blank, log prob at least `min_logp`, within `cum_prob`, and
    nothing for frames past the utterance's end."""
    ok = lp >= min_logp
    if cum_prob < 1.0:  # a label is in if the labels more probable than it hold less than cum_prob
        ranked, order = lp.sort(dim=1, descending=True)
        p = ranked.exp()
        ok &= torch.zeros_like(ok).scatter_(1, order, p.cumsum(1).sub_(p) < cum_prob)
    ok[:, blank] = False
    ok &= (torch.arange(frames, device=lp.device) < lengths[:, None]).view(-1, 1)  # frames past the end try nothing
    return ok



def grid_candidates(log_probs: torch.Tensor, lengths: torch.Tensor, k: int, min_logp: float, blank: int, cum_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each frame's labels to try, as `frame_candidates` picks them, in k fixed places:
    (batch, frames, k) labels and log probs, -inf where a frame has fewer than k."""
    batch, frames, vocab = log_probs.shape
    ok = candidate_mask(log_probs.reshape(-1, vocab), lengths, frames, min_logp, blank, cum_prob)
    c_lp, c_id = log_probs.masked_fill(~ok.view(batch, frames, vocab), NEG_INF).topk(k, dim=2)
    return c_id, c_lp


def final_hypotheses(
    p_b: torch.Tensor, p_nb: torch.Tensor, lm_total: torch.Tensor, words_total: torch.Tensor, state: torch.Tensor,
    parent: torch.Tensor, label: torch.Tensor, fusion, options: BeamOptions, backtrack=None,
) -> list[list[Hypothesis]]:
    """Every utterance has ended: score the grid's slots as they are (p_b, p_nb, ln P_lm so far,
    words so far: (utts, beam); state (utts, beam, S) the fusion's), and spell out each
    utterance's `nbest` best by the back-pointers (parent slot, label added or -1: (frames,
    utts, beam)), with `backtrack` (default `grid_backtrack`; same arguments, same answer).
    fusion: the fusion's tensors on the grid's device (`fusion.tensors(device)`), or None."""
    n_utt = p_b.shape[0]
    score, acoustic, lm_total, words_total = score_slots(p_b, p_nb, lm_total, words_total, state, fusion, options)
    best, slot = (x[:, :options.nbest] for x in score.sort(dim=1, descending=True, stable=True))  # (utts, n) best first
    spelled = (backtrack or grid_backtrack)(parent.cpu(), label.cpu(), slot.cpu())
    columns = [best.tolist()] + [x.gather(1, slot).tolist() for x in (acoustic, lm_total, words_total)]
    results: list[list[Hypothesis]] = []
    for b in range(n_utt):
        results.append([
            Hypothesis(spelled[b][j], s, a, lm_score, int(w))
            for j, (s, a, lm_score, w) in enumerate(zip(*(column[b] for column in columns)))
            if s > NEG_INF
        ])
    return results


def score_slots(
    p_b: torch.Tensor, p_nb: torch.Tensor, lm_total: torch.Tensor, words_total: torch.Tensor, state: torch.Tensor, fusion, options: BeamOptions,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The grid's slots scored as the search ends (arguments as `final_hypotheses` takes them):
    score, acoustic, ln P_lm and words, the fusion's final terms included, each (utts, beam);
    an empty slot (acoustic -inf) scores -inf."""
    n_utt, beam = p_b.shape
    acoustic = torch.logaddexp(p_b, p_nb) if options.merge == "sum" else torch.maximum(p_b, p_nb)  # (utts, beam)
    if fusion is not None:
        final_lm, final_words = fusion.final_scores(state.reshape(n_utt * beam, -1))
        lm_total, words_total = lm_total + final_lm.view(n_utt, beam), words_total + final_words.view(n_utt, beam)
    score = acoustic + options.lm_weight * lm_total + options.word_bonus * words_total
    return score.masked_fill(acoustic == NEG_INF, NEG_INF), acoustic, lm_total, words_total


def grid_backtrack(hist_parent: torch.Tensor, hist_label: torch.Tensor, slot: torch.Tensor) -> list[list[list[int]]]:
    """Labels of the chosen slots (utts, n), walking the back-pointers (frames, utts, beam)
    from the last frame (past its end, an utterance's slots only stay, adding no label)."""
    frames, n_utt, beam = hist_parent.shape
    parent, label = hist_parent.numpy().reshape(frames, n_utt * beam), hist_label.numpy().reshape(frames, n_utt * beam)
    base = np.arange(n_utt)[:, None] * beam  # each utterance's first slot, in the flattened grid
    at = (slot.numpy() + base).ravel()
    base = np.broadcast_to(base, slot.shape).ravel()
    labels = np.empty((frames, at.shape[0]), dtype=np.int64)
    for t in range(frames - 1, -1, -1):
        labels[t] = label[t, at]
        at = parent[t, at] + base
    labels = labels.reshape(frames, *slot.shape)
    per_utt = labels.transpose(1, 2, 0).tolist()  # (utts, n, frames)
    return [[[c for c in row if c >= 0] for row in utt] for utt in per_utt]

