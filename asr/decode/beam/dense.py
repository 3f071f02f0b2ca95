"""The prefix beam search of the flat list (`flat.py`) on a dense (utterance, beam) grid: the
layout for GPUs.

The flat list pays only for live hypotheses and tried labels, which is what a
CPU wants; but its sizes change every frame, so each frame reads a few sizes back to the host
and launches ~150 small kernels one by one. On a GPU that is all launch latency: an H100
decoding 64 utterances that way was busy 6-14 % of the time (word / character LM). Here every
frame does the same work on the same shapes (beam_size slots per utterance, each trying the
frame's `token_top_k` labels, dead slots at -inf), with no host read inside the loop, so on
CUDA one frame step is captured once as a CUDA graph and replayed for every frame
(torch.cuda.CUDAGraph; "CUDA Graphs" in the PyTorch docs). On the CPU the same step runs
eagerly; tests check it against the flat search there.

The search is the same: the same candidates per frame, the same merge of a grown prefix into
an equal one already in the beam (found by comparing every grow's hash with the utterance's
slots), the same LM fusion (word-level fusion asks the LM for every grow and keeps the answers
of those that end a word), the same selection (the utterance's best `beam_size` within
`beam_threshold` of its best). Only exact score ties may be broken differently.
"""

from __future__ import annotations

import torch

from asr.decode.beam.common import NEG_INF, UTT_MUL, BeamOptions, Hypothesis
from asr.decode.beam.common_torch import final_hypotheses, grid_candidates
from asr.decode.fusion import Fusion, TokenLMTensors, WordLMTensors
from asr.decode.lm import hash_step

@torch.inference_mode()
def decode_beam_dense(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
    fusion: Fusion | None,
    options: BeamOptions,
    cuda_graph: bool = True,
) -> list[list[Hypothesis]]:
    """`decode_beam` on the dense grid (its arguments, checked there; blank frames already
    skipped; lengths on log_probs' device). cuda_graph: on CUDA, replay one captured frame step
    (else launch it per frame)."""
    log_probs = log_probs.float().contiguous()
    k = max(min(options.token_top_k, log_probs.shape[2] - 1), 1)
    cand_id, cand_lp = grid_candidates(log_probs, lengths, k, options.token_min_logp, options.blank, options.token_cum_prob)  # (utts, frames, k)
    fusion = fusion.tensors(log_probs.device) if fusion is not None else None
    grid = _Grid(_blank_past_the_end(log_probs, lengths, options.blank), cand_id, cand_lp, fusion, options)
    if grid.frames:
        _run(grid.step, grid.frames, [grid.hf, grid.hi, grid.t], cuda_graph and log_probs.device.type == "cuda")
    parent, label = grid.back_pointers()
    hf, hi = grid.hf, grid.hi
    return final_hypotheses(hf[:, :, 0], hf[:, :, 1], hf[:, :, 2], hf[:, :, 3], hi[:, :, 2:], parent, label, fusion, options)


def _blank_past_the_end(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int) -> torch.Tensor:
    """A frame past an utterance's end becomes certain blank (and tries no label): each prefix
    then stays with its total in p_b and its score unchanged, so the step needs no mask."""
    utts, frames, vocab = log_probs.shape
    past = torch.arange(frames, device=log_probs.device) >= lengths[:, None]  # (utts, frames)
    neutral = torch.full((vocab,), NEG_INF, device=log_probs.device)
    neutral[blank] = 0.0
    return torch.where(past[:, :, None], neutral, log_probs)


class _Grid:
    """The dense search's state, and its frame step (`step`, no arguments: CUDA captures it).

    hf (utts, beam, 4) float, [p_b, p_nb, ln P_lm so far, words scored so far], and hi (utts,
    beam, 2 + S) long, [last label, prefix hash, fusion state (S columns)]. Slot 0 holds the
    empty prefix (its hash differs per utterance, as in the flat list); the other slots start
    dead (p_b = p_nb = -inf). Every frame each slot grows by each of the frame's k candidates:
    the candidates are the beam stays, then the beam * k grows, slot-major."""

    def __init__(self, log_probs, cand_id, cand_lp, fusion: TokenLMTensors | WordLMTensors | None, options: BeamOptions):
        device = log_probs.device
        n_utt, self.frames, _ = log_probs.shape
        self.log_probs, self.cand_id, self.cand_lp = log_probs, cand_id, cand_lp  # (utts, frames, vocab), (utts, frames, k) x2
        beam, blank = options.beam_size, options.blank
        self.beam, self.k, self.beam_threshold, self.fusion, self.blank = beam, cand_id.shape[2], options.beam_threshold, fusion, blank
        self.plus = torch.logaddexp if options.merge == "sum" else torch.maximum
        self.weights = torch.tensor([options.lm_weight, options.word_bonus], device=device)
        self.hf = torch.zeros(n_utt, beam, 4, device=device)
        self.hf[:, :, :2] = NEG_INF
        self.hf[:, 0, 0] = 0.0
        state = fusion.init_state(n_utt * beam).view(n_utt, beam, -1) if fusion is not None else torch.zeros(n_utt, beam, 0, dtype=torch.long, device=device)
        empty_key = (torch.arange(n_utt, device=device) * UTT_MUL)[:, None, None].expand(n_utt, beam, 1)
        self.hi = torch.cat([torch.full_like(empty_key, blank), empty_key, state], dim=2)
        # per frame, the candidate each slot was picked from (spelled out after the last frame)
        self.picks = torch.empty(self.frames, n_utt, beam, dtype=torch.long, device=device)
        self.t = torch.zeros(1, dtype=torch.long, device=device)  # the frame, kept on the device
        # constants of the step: a grow's p_b, where each utterance's candidates start
        self.grow_pb = torch.full((n_utt, beam * self.k, 1), NEG_INF, device=device)
        self.row_start = torch.arange(n_utt, device=device)[:, None] * (beam + beam * self.k)

    def step(self) -> None:
        """Frame t: the candidates, then each utterance's best `beam` of them; t + 1."""
        c_f, c_i = self._candidates()
        self._keep_best(c_f, c_i)
        self.t.add_(1)

    def _candidates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The frame's candidates, stays first: (utts, beam + beam * k, 4) float and
        (utts, beam + beam * k, 2 + S) long, the rows of hf and hi."""
        hf, hi, plus, t, beam, k = self.hf, self.hi, self.plus, self.t, self.beam, self.k
        n_utt, S = hf.shape[0], hi.shape[2] - 2
        lp = self.log_probs.index_select(1, t).squeeze(1)  # (utts, vocab)
        c_id = self.cand_id.index_select(1, t)  # (utts, 1, k)
        c_lp = self.cand_lp.index_select(1, t)
        p_b, p_nb, last, key = hf[:, :, 0], hf[:, :, 1], hi[:, :, 0], hi[:, :, 1]
        total = plus(p_b, p_nb)  # (utts, beam)
        stay_b = total + lp[:, self.blank, None]
        stay_nb = p_nb + lp.gather(1, last)
        # grow every slot by every candidate (a repeat only from p_b): (utts, beam * k), slot-major
        grow = torch.where(c_id == last[:, :, None], p_b[:, :, None], total[:, :, None]).add_(c_lp).view(n_utt, -1)
        g_label = c_id.expand(n_utt, beam, k).reshape(n_utt, -1)
        g_key = hash_step(key[:, :, None], c_id).view(n_utt, -1)
        # a grow equal to a live slot's prefix joins its p_nb and is no candidate itself
        same = (g_key[:, :, None] == key[:, None, :]) & (total > NEG_INF)[:, None, :]  # (utts, beam * k, beam)
        stay_nb = plus(stay_nb, torch.where(same, grow[:, :, None], NEG_INF).amax(dim=1))
        g_nb = grow.masked_fill(same.any(dim=2), NEG_INF)
        g_f = torch.cat([self.grow_pb, g_nb[:, :, None], hf[:, :, None, 2:].expand(n_utt, beam, k, 2).reshape(n_utt, -1, 2)], dim=2)  # (utts, beam * k, 4)
        g_state = hi.new_empty(n_utt, beam, k, S).copy_(hi[:, :, None, 2:].expand(n_utt, beam, k, S)).view(n_utt, beam * k, S)  # grow_ writes it
        if self.fusion is not None:
            d_lm, d_words = self.fusion.grow_(g_state.view(-1, S), g_label.view(-1), dense=True)
            g_f[:, :, 2] += d_lm.view(n_utt, -1)
            g_f[:, :, 3] += d_words.view(n_utt, -1)
        s_f = torch.stack([stay_b, stay_nb, hf[:, :, 2], hf[:, :, 3]], dim=2)
        c_f = torch.cat([s_f, g_f], dim=1)
        c_i = torch.cat([hi, torch.cat([g_label[:, :, None], g_key[:, :, None], g_state], dim=2)], dim=1)
        return c_f, c_i

    def _keep_best(self, c_f: torch.Tensor, c_i: torch.Tensor) -> None:
        """Each utterance keeps its best `beam` candidates within `beam_threshold` of its best,
        written into hf and hi (topk: on an H100 13 us a frame against a stable sort's 16; ties
        may fall either way); which ones, into picks[t]."""
        hf, hi = self.hf, self.hi
        score = self.plus(c_f[:, :, 0], c_f[:, :, 1]).add_(c_f[:, :, 2:] @ self.weights)  # (utts, beam + beam * k)
        top, pick = score.topk(self.beam, dim=1)
        rows = pick + self.row_start  # (utts, beam) rows of the flattened candidates
        torch.index_select(c_f.view(-1, 4), 0, rows.view(-1), out=hf.view(-1, 4))
        hf[:, :, :2].masked_fill_((top < top[:, :1] - self.beam_threshold)[:, :, None], NEG_INF)
        torch.index_select(c_i.view(-1, hi.shape[2]), 0, rows.view(-1), out=hi.view(-1, hi.shape[2]))
        self.picks.index_copy_(0, self.t, pick[None])

    def back_pointers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per frame and slot, the slot it came from and the label it added (-1: none), both
        (frames, utts, beam). Candidate c of a step is a stay of slot c (c < beam), or slot
        (c - beam) // k grown by the frame's candidate label (c - beam) % k."""
        beam, k, picks = self.beam, self.k, self.picks
        grown = picks >= beam
        g = (picks - beam).clamp_(min=0)
        parent = torch.where(grown, g.div(k, rounding_mode="floor"), picks)
        label = torch.where(grown, self.cand_id.transpose(0, 1).gather(2, g % k), -1)
        return parent, label


def _run(step, frames: int, buffers: list[torch.Tensor], use_graph: bool) -> None:
    """Call `step` once per frame; on CUDA, capture it once and replay the capture."""
    if not use_graph:
        for _ in range(frames):
            step()
        return
    start = [b.clone() for b in buffers]
    side = torch.cuda.Stream()  # warm up, then capture, on a side stream (PyTorch's recipe)
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        step()
        for b, s in zip(buffers, start):  # undo the warm-up frame
            b.copy_(s)
        # capture_begin/end rather than the torch.cuda.graph context, which also runs
        # gc.collect() and empty_cache(): tens of ms per batch, for nothing here
        graph.capture_begin()
        step()
        graph.capture_end()
    torch.cuda.current_stream().wait_stream(side)
    for _ in range(frames):
        graph.replay()
