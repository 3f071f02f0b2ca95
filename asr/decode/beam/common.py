"""What every layout of the prefix beam search shares, without torch: the options they are
given, the hypothesis they return, and, on numpy arrays, the frames they skip and the labels
each frame tries (the numba layout's; the torch layouts select the same on their device, in
`common_torch.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from asr.tokens import BLANK_ID

NEG_INF = float("-inf")
UTT_MUL = 0x2545F4914F6CDD1D  # odd; spreads utterance indices into distinct empty-prefix hashes


@dataclass(frozen=True)
class BeamOptions:
    """What decode_beam hands every layout besides the log-probs and the fusion (checked there;
    see its docstring)."""

    beam_size: int  # prefixes kept per utterance
    token_top_k: int  # labels tried per frame
    token_min_logp: float  # ... at least this log prob
    token_cum_prob: float  # ... among the most probable labels adding up to this
    beam_threshold: float  # prefixes more than this below the utterance's best are dropped
    lm_weight: float  # alpha, on ln P_lm
    word_bonus: float  # beta, per word (or token) the LM scores
    nbest: int  # hypotheses returned per utterance
    merge: str  # "sum" (prefix search) or "max" (Viterbi)
    blank: int  # the blank label


@dataclass
class Hypothesis:
    ids: list[int]  # labels, blanks and repeats removed
    score: float  # acoustic + lm_weight * lm + word_bonus * num_words
    acoustic: float  # ln P_ctc(ids | audio), summed over alignments (or the best one, merge="max")
    lm: float  # ln P_lm of the words, </s> included (0 without an LM)
    num_words: int  # words (or tokens) the LM scored


def skip_blank_frames(log_probs: np.ndarray, lengths: np.ndarray, threshold: float, blank: int = BLANK_ID) -> tuple[np.ndarray, np.ndarray]:
    """Drop frames whose blank probability exceeds `threshold` when the frame before did too.
    The first frame of each run is kept, so a label repeated across the run still reads as two.

    log_probs (batch, frames, vocab) float32, lengths (batch,) -> compacted copies of both.
    """
    frames = log_probs.shape[1]
    valid = np.arange(frames)[None, :] < lengths[:, None]  # (batch, frames)
    blank_run = log_probs[..., blank] > np.float32(math.log(threshold))  # (batch, frames)
    drop = blank_run.copy()
    drop[:, 0] = False
    drop[:, 1:] &= blank_run[:, :-1]
    keep = valid & ~drop
    order = np.argsort(~keep, axis=1, kind="stable")  # kept frames first, in order
    compacted = np.take_along_axis(log_probs, order[..., None], axis=1)
    new_lengths = keep.sum(axis=1)
    num_frames = int(new_lengths.max()) if new_lengths.size else 0
    return compacted[:, : max(num_frames, 1)], new_lengths


def frame_candidates(log_probs: np.ndarray, lengths: np.ndarray, top_k: int, min_logp: float, blank: int, cum_prob: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The labels each frame tries: its `top_k` most probable non-blank labels with log prob at
    least `min_logp`, among the most probable labels (blank included) whose probabilities first
    reach `cum_prob` in sum; of labels equally probable, the lower id first. log_probs (batch,
    frames, vocab) float32 -> the labels (int64) and their log probs (float32), both
    (batch * frames, k), k the most any frame has (padded with the blank at log prob -inf)."""
    batch, frames, vocab = log_probs.shape
    lp = log_probs.reshape(-1, vocab)
    ok = candidate_mask(lp, lengths, frames, min_logp, blank, cum_prob)
    count = ok.sum(axis=1)
    if top_k < vocab - 1:  # the frames with more labels than that keep their top_k
        over = np.flatnonzero(count > top_k)
        if len(over):
            rows = lp[over]
            rows[:, blank] = NEG_INF
            best = np.argsort(-rows, axis=1, kind="stable")[:, :top_k]
            top = np.zeros(rows.shape, dtype=bool)
            np.put_along_axis(top, best, True, axis=1)
            ok[over] &= top
            count = ok.sum(axis=1)
    k = max(int(count.max()) if count.size else 0, 1)
    at = np.flatnonzero(ok)  # (n,) row * vocab + label, rising
    r = at // vocab
    first = np.cumsum(count) - count  # where each row's candidates start among them
    into = r * k + np.arange(len(at)) - first[r]  # (row, place in the row)
    cand_id = np.full(lp.shape[0] * k, blank, dtype=np.int64)
    cand_id[into] = at - r * vocab
    cand_lp = np.full(lp.shape[0] * k, NEG_INF, dtype=np.float32)
    cand_lp[into] = lp.reshape(-1)[at]
    return cand_id.reshape(-1, k), cand_lp.reshape(-1, k)


def candidate_mask(lp: np.ndarray, lengths: np.ndarray, frames: int, min_logp: float, blank: int, cum_prob: float) -> np.ndarray:
    """Which labels of each frame may be tried, before the top-k: lp (batch * frames, vocab) ->
    bool, the same shape. Not blank, log prob at least `min_logp`, within `cum_prob`, and
    nothing for frames past the utterance's end."""
    ok = lp >= np.float32(min_logp)
    if cum_prob < 1.0:  # a label is in if the labels more probable than it hold less than cum_prob
        order = np.argsort(-lp, axis=1, kind="stable")
        p = np.exp(np.take_along_axis(lp, order, axis=1))
        held = np.cumsum(p, axis=1, dtype=np.float64).astype(np.float32) - p  # (summed in float64, as torch does on the CPU)
        inside = np.empty_like(ok)
        np.put_along_axis(inside, order, held < np.float32(cum_prob), axis=1)
        ok &= inside
    ok[:, blank] = False
    ok &= (np.arange(frames) < lengths[:, None]).reshape(-1, 1)  # frames past the end try nothing
    return ok
