"""The prefix beam search on a flat list of live hypotheses: the reference layout, in torch ops.

The hypotheses of all utterances live in one flat list (grouped by utterance, best first), not
a dense (batch, beam) grid: a peaky CTC model leaves most utterances with a few live prefixes
and a label or two worth trying per frame, and the flat list only pays for those. Utterances are
taken longest first, so the ones that have ended are the list's tail and leave it by slicing.
Each frame (`_step`):
 1. every hypothesis stays, and grows by the frame's candidate labels (`_stay_and_grow`); grows
    that come out at -inf are dropped;
 2. a grown prefix already in the list is found by its 64-bit hash (the hash of the empty
    prefix differs per utterance, so the list's hashes, sorted once, serve the whole batch)
    and merged into it (`_merge_into_live`);
 3. grows that cannot make the beam, whatever the LM adds, leave (`_prune_early`); the LM
    scores the rest (only the grows that finish a word, or every grow for token-level fusion);
 4. each utterance keeps its best `beam_size` candidates within `beam_threshold` of its best
    (`_best_per_utterance`: one sort of all candidates by (utterance, -score)).
Prefixes are spelled out at the end from per-frame back-pointers (`_backtrack`).

The list's sizes change every frame, which is what a CPU wants and a GPU does not; and each of
its ~130 tensor ops a frame costs 1-3 us on a CPU, mostly overhead. So the other layouts run
this same search faster (`asr.decode.beam.search` picks one), and are tested against this one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from asr.decode.beam.common import NEG_INF, UTT_MUL, BeamOptions, Hypothesis
from asr.decode.beam.common_torch import frame_candidates
from asr.decode.fusion import Fusion, TokenLMTensors, WordLMTensors, fusion_bound
from asr.decode.lm import hash_step


@dataclass
class _Batch:
    """What every frame of one batch's search reads (utterances longest first)."""

    cand_id: torch.Tensor  # (batch * frames, k) the labels each frame tries
    cand_lp: torch.Tensor  # (batch * frames, k) their log probs (-inf: no label)
    flat_lp: torch.Tensor  # (batch * frames * vocab,) entry (utterance * frames + t) * vocab + label
    blank_lp: torch.Tensor  # (batch * frames,) entry utterance * frames + t
    batch: int  # utterances
    frames: int  # the longest one's
    vocab: int
    plus: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # logaddexp (prefix search) or maximum (Viterbi)
    fusion: TokenLMTensors | WordLMTensors | None  # the fusion's tensors on the device
    weights: torch.Tensor  # (2,) [lm_weight, word_bonus]
    bound: torch.Tensor  # (vocab,) the most fusion can add to a grow by each label (fusion_bound)
    early_pruning: bool
    beam_size: int
    beam_threshold: float
    stay_parent: torch.Tensor  # (batch * beam_size,) 0, 1, ...: a stay's parent is itself
    stay_label: torch.Tensor  # (batch * beam_size,) -1: a stay adds no label


@dataclass
class _Grows:
    """Grown prefixes: one per (hypothesis, label) tried."""

    parent: torch.Tensor  # (grows,) the hypothesis grown
    label: torch.Tensor  # (grows,) the label added
    nb: torch.Tensor  # (grows,) p_nb of the grown prefix
    key: torch.Tensor  # (grows,) its hash

    def take(self, index: torch.Tensor) -> "_Grows":
        return _Grows(*(x.index_select(0, index) for x in (self.parent, self.label, self.nb, self.key)))


@torch.inference_mode()
def decode_beam_flat(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
    fusion: Fusion | None,
    options: BeamOptions,
) -> list[list[Hypothesis]]:
    """`decode_beam` on the flat list (its arguments, checked there; blank frames already
    skipped; lengths on log_probs' device)."""
    device = log_probs.device
    batch, frames, vocab = log_probs.shape
    # Longest utterance first: the hypotheses are grouped by utterance, so the utterances that
    # have ended are a tail of the list, and leave it by slicing.
    by_length = torch.argsort(lengths, descending=True, stable=True)
    log_probs, lengths = log_probs.index_select(0, by_length), lengths.index_select(0, by_length)
    cand_id, cand_lp = frame_candidates(log_probs, lengths, options.token_top_k, options.token_min_logp, options.blank, options.token_cum_prob)  # (batch * frames, k)
    bound, early_pruning = fusion_bound(fusion, vocab, options.lm_weight, options.word_bonus, options.beam_threshold)
    fusion = fusion.tensors(device) if fusion is not None else None
    b = _Batch(
        cand_id, cand_lp, log_probs.reshape(-1), log_probs[:, :, options.blank].reshape(-1), batch, frames, vocab,
        torch.logaddexp if options.merge == "sum" else torch.maximum, fusion, torch.tensor([options.lm_weight, options.word_bonus], device=device),
        torch.from_numpy(bound).to(device), early_pruning, options.beam_size, options.beam_threshold,
        torch.arange(batch * options.beam_size, device=device), torch.full((batch * options.beam_size,), -1, device=device),
    )
    hf, hi = _start(batch, options.blank, fusion, device)
    history, ended = _run_frames(b, hf, hi, lengths.tolist())
    return _final_hypotheses(b, history, ended, by_length, options)


def _start(batch: int, blank: int, fusion: TokenLMTensors | WordLMTensors | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The list before the first frame. The hypotheses, grouped by utterance, best first: hf (4,
    hyps) float, rows [p_b, p_nb, ln P_lm so far, words scored so far], and hi (hyps, 3 + S) long,
    columns [utterance, last label, prefix hash, fusion state (S columns)]. One per utterance to
    start: the empty prefix (last label: blank), whose hash differs per utterance, so that equal
    hashes mean equal prefixes of one utterance anywhere in the batch."""
    utt = torch.arange(batch, device=device)
    hf = torch.zeros(4, batch, device=device)
    hf[1] = NEG_INF
    hi = torch.stack([utt, torch.full_like(utt, blank), utt * UTT_MUL], dim=1)
    if fusion is not None:
        hi = torch.cat([hi, fusion.init_state(batch)], dim=1)
    return hf, hi


def _run_frames(b: _Batch, hf: torch.Tensor, hi: torch.Tensor, ends: list[int]) -> tuple[list, list]:
    """Every frame's step, until every utterance has ended (`ends`: per utterance, longest
    first, the frame at which it leaves). Returns the back-pointers, per frame (parent hyp,
    label added or -1), and the (frames seen, place in the list, hf, hi) of the utterances as
    they ended."""
    history: list[tuple[torch.Tensor, torch.Tensor]] = []
    ended: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
    live = len(ends)  # utterances 0 .. live-1 still have frames
    for t in range(b.frames + 1):
        if live and ends[live - 1] <= t:  # utterances ending here leave the list, hypotheses and all
            while live and ends[live - 1] <= t:
                live -= 1
            cut = int((hi[:, 0] < live).sum())
            ended.append((t, cut, hf[:, cut:], hi[cut:]))
            hf, hi = hf[:, :cut], hi[:cut]
        if not live:
            break
        hf, hi, parent, label = _step(b, hf, hi, t)
        history.append((parent, label))
    return history, ended


def _step(b: _Batch, hf: torch.Tensor, hi: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One frame: the list (hf, hi) -> the list after frame t, and each new hypothesis's parent
    in the old list and the label it added (-1 for a stay)."""
    num = hi.shape[0]
    grows = _stay_and_grow(b, hf, hi, t)
    _merge_into_live(b, hf, hi[:, 2], grows)
    fused = b.weights @ hf[2:]  # (hyps,) lm_weight * ln P_lm + word_bonus * words
    stay_score = b.plus(hf[0], hf[1]).add_(fused)
    if b.early_pruning:
        grows = _prune_early(b, hi[:, 0], grows, stay_score, fused)

    # candidates [hyps | grows]: float rows, long columns, and their total scores
    g_i = hi.index_select(0, grows.parent)  # (grows, 3 + S)
    g_f = hf.index_select(1, grows.parent)
    g_f[0] = NEG_INF
    g_f[1] = grows.nb
    g_i[:, 1] = grows.label
    g_i[:, 2] = grows.key
    if b.fusion is not None:
        d_lm, d_words = b.fusion.grow_(g_i[:, 3:], grows.label)
        g_f[2] += d_lm
        g_f[3] += d_words
    c_f = torch.cat([hf, g_f], dim=1)  # (4, cands)
    c_i = torch.cat([hi, g_i])  # (cands, 3 + S)
    score = torch.cat([stay_score, torch.addmv(grows.nb, g_f[2:].t(), b.weights)])  # (cands,)

    # each utterance keeps its best `beam_size` within `beam_threshold` of its best
    pick = _best_per_utterance(score, c_i[:, 0], b.batch, b.beam_size, b.beam_threshold)  # grouped by utterance, best first
    parent = torch.cat([b.stay_parent[:num], grows.parent]).index_select(0, pick)
    label = torch.cat([b.stay_label[:num], grows.label]).index_select(0, pick)
    return c_f.index_select(1, pick), c_i.index_select(0, pick), parent, label


def _stay_and_grow(b: _Batch, hf: torch.Tensor, hi: torch.Tensor, t: int) -> _Grows:
    """Grow every hypothesis by the frame's candidate labels c (hyp + c; a repeat of the last
    label only from alignments ending in blank) and return the finite grows; then write the
    stays (blank, or the last label again) over p_b and p_nb in place."""
    k = b.cand_id.shape[1]
    utt, last, key = hi[:, 0], hi[:, 1], hi[:, 2]
    p_b, p_nb = hf[0], hf[1]
    total = b.plus(p_b, p_nb)  # (hyps,)
    row = utt * b.frames + t  # (hyps,) the hypothesis's (utterance, frame)
    cand = b.cand_id.index_select(0, row)  # (hyps, k)
    grow = torch.where(cand == last[:, None], p_b[:, None], total[:, None]).add_(b.cand_lp.index_select(0, row))
    flat = (grow > NEG_INF).view(-1).nonzero().squeeze(1)  # (grows,) the finite ones
    parent = flat.div(k, rounding_mode="floor")
    label = cand.view(-1).index_select(0, flat)
    grows = _Grows(parent, label, grow.view(-1).index_select(0, flat), hash_step(key.index_select(0, parent), label))
    # stays, written over p_b and p_nb, which the grows have read
    torch.add(total, b.blank_lp.index_select(0, row), out=p_b)
    p_nb.add_(b.flat_lp.index_select(0, torch.add(last, row, alpha=b.vocab)))  # an empty prefix has p_nb = -inf
    return grows


def _merge_into_live(b: _Batch, hf: torch.Tensor, key: torch.Tensor, grows: _Grows) -> None:
    """A grown prefix already in the list: its alignments join that hypothesis's p_nb (in hf,
    in place), and it is no new candidate (its p_nb becomes -inf). The list's prefixes are
    distinct, and so are the grows (one parent, one label), so at most one grow lands on each
    hypothesis: found by hash, the grows' searched among the list's (`key`, (hyps,)), sorted."""
    p_nb = hf[1]
    sorted_key, order = key.sort()
    at = torch.searchsorted(sorted_key, grows.key).clamp_(max=key.shape[0] - 1)
    dup = (sorted_key.index_select(0, at) == grows.key).nonzero().squeeze(1)  # (dups,) grows
    into = order.index_select(0, at.index_select(0, dup))  # (dups,) hypotheses
    p_nb.index_copy_(0, into, b.plus(p_nb.index_select(0, into), grows.nb.index_select(0, dup)))
    grows.nb.index_fill_(0, dup, NEG_INF)


def _prune_early(b: _Batch, utt: torch.Tensor, grows: _Grows, stay_score: torch.Tensor, fused: torch.Tensor) -> _Grows:
    """Grows that cannot make the beam leave before the LM sees them: fusion adds at most
    `bound[label]` to a grow's score, so a grow that falls beam_threshold below its utterance's
    best stay even with that would be dropped by the selection anyway. (Also drops the merged
    grows, at -inf.)"""
    bar = stay_score.new_full((b.batch,), NEG_INF).scatter_reduce_(0, utt, stay_score, "amax").sub_(b.beam_threshold + 1e-3)
    bar = bar.index_select(0, utt).sub_(fused)  # (hyps,) what a grow needs, before fusion
    need = bar.index_select(0, grows.parent).sub_(b.bound.index_select(0, grows.label)).clamp_(min=torch.finfo(stay_score.dtype).min)
    return grows.take((grows.nb >= need).nonzero().squeeze(1))


def _final_hypotheses(b: _Batch, history: list, ended: list, by_length: torch.Tensor, options: BeamOptions) -> list[list[Hypothesis]]:
    """Every utterance has ended: score its hypotheses as they were then (the fusion's final
    scores added), and spell out each utterance's `nbest` best, in the caller's order."""
    device = by_length.device
    seen = torch.cat([torch.full((i.shape[0],), n, device=device) for n, _, _, i in ended])  # frames each one saw
    index = torch.cat([torch.arange(at, at + i.shape[0], device=device) for _, at, _, i in ended])  # its place in the list then
    hf = torch.cat([f for _, _, f, _ in ended], dim=1)
    hi = torch.cat([i for _, _, _, i in ended])
    utt = hi[:, 0]
    acoustic = b.plus(hf[0], hf[1])  # (hyps,)
    lm_total, words = hf[2], hf[3]
    if b.fusion is not None:
        final_lm, final_words = b.fusion.final_scores(hi[:, 3:])
        lm_total, words = lm_total + final_lm, words + final_words
    score = acoustic + options.lm_weight * lm_total + options.word_bonus * words
    chosen = _best_per_utterance(score, utt, b.batch, options.nbest)  # (chosen,) grouped by utterance, best first
    spelled = _backtrack(history, seen.index_select(0, chosen), index.index_select(0, chosen))
    owner = by_length.index_select(0, utt.index_select(0, chosen)).tolist()
    score, acoustic, lm_total, words = (v.index_select(0, chosen).tolist() for v in (score, acoustic, lm_total, words))
    results: list[list[Hypothesis]] = [[] for _ in range(b.batch)]
    for i, u in enumerate(owner):
        results[u].append(Hypothesis(spelled[i], score[i], acoustic[i], lm_total[i], int(words[i])))
    return results


def _best_per_utterance(score: torch.Tensor, utt: torch.Tensor, utterances: int, n: int, threshold: float = math.inf) -> torch.Tensor:
    """Indices of the items (score (items,) float32, utt (items,) in 0 .. utterances-1) that are
    among their utterance's `n` best, finite and within `threshold` of its best; grouped by
    utterance, best first, ties in item order.

    One stable sort by (utterance, -score), on int64 keys: the utterance in the high 32 bits,
    the score's float32 bits in the low, made to rise with the score (a negative float's
    magnitude bits are flipped). An item is in its utterance's top n when the item n places
    before it belongs to another utterance."""
    bits = score.view(torch.int32)
    order = torch.argsort((utt << 32).sub_(bits ^ ((bits >> 31) & 0x7FFFFFFF)), stable=True)
    best = score.new_full((utterances,), NEG_INF).scatter_reduce_(0, utt, score, "amax")
    floor = best.sub_(threshold).clamp_(min=torch.finfo(score.dtype).min)  # finite, so -inf items fail it
    keep = (score >= floor.index_select(0, utt)).index_select(0, order)
    if n < order.shape[0]:
        u_sorted = utt.index_select(0, order)
        keep[n:] &= u_sorted[n:] != u_sorted[:-n]
    return order.masked_select(keep)


def _backtrack(history: list[tuple[torch.Tensor, torch.Tensor]], seen: torch.Tensor, index: torch.Tensor) -> list[list[int]]:
    """Spell out hypotheses from the per-frame back-pointers: hypothesis i is entry index[i] of
    the list after frame seen[i]. One walk back over the frames serves all of them: a
    hypothesis joins the walk at its own last frame."""
    order = torch.argsort(seen, descending=True, stable=True)
    starts = seen.index_select(0, order).tolist()
    pointers = index.index_select(0, order)
    out = torch.full((len(history), len(starts)), -1, dtype=torch.long, device=seen.device)
    active, hyp = 0, pointers[:0]
    for t in range(len(history) - 1, -1, -1):
        while active < len(starts) and starts[active] > t:
            active += 1
        if active > hyp.shape[0]:
            hyp = torch.cat([hyp, pointers[hyp.shape[0] : active]])
        if active:
            parent, label = history[t]
            out[t, :active] = label.index_select(0, hyp)
            hyp = parent.index_select(0, hyp)
    spelled: list[list[int]] = [[] for _ in starts]
    for i, labels in zip(order.tolist(), out.t().cpu().tolist()):
        spelled[i] = [c for c in labels if c >= 0]
    return spelled
