"""The dense grid's prefix beam search (`dense.py`) as one Triton kernel: a program per
utterance runs all of its frames, its beam held in registers. The layout for GPUs that have
Triton.

The dense grid (`asr.decode.beam.dense`) replays ~60 small kernels per frame from a CUDA graph;
on an H100 that was ~2 us each, so a frame cost ~120 us whatever the batch (session 6's
profile). Here a frame is a few dozen instructions per slot inside one running program, and
the utterances of a batch run side by side on the GPU's multiprocessors, each for its own
number of frames.

The search is the dense grid's, slot for slot (`beam_size` slots per utterance, each trying
the frame's `token_top_k` candidate labels; a grow equal to a live slot's prefix merges into
it; word- or token-level LM fusion; the best `beam_size` candidates within `beam_threshold`
of the best survive). Candidates are ranked stays first, then grows by (slot, candidate), and
exact ties go to the earlier one, as in the flat list's stable sort. Each frame the program
writes its candidates to a scratch row, picks the best by repeated argmax, and reads the
picked ones back; the back-pointers (parent slot, label added) go to global memory and are
followed on the host afterwards, as the dense grid's are.

Triton compiles the kernel for the GPU at first use (and caches it on disk). Without a GPU,
`TRITON_INTERPRET=1` (set before this module is imported) runs the same kernel on CPU tensors
through Triton's interpreter: slow, but exactly the code the GPU runs, which is how the tests
check it against the flat search on a machine without one.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from asr.decode.beam.common import UTT_MUL, BeamOptions, Hypothesis
from asr.decode.beam.common_torch import final_hypotheses, grid_candidates
from asr.decode.fusion import TOKEN_LM, WORD_FUSION, Fusion, fusion_tables
from asr.decode.lm import _MUL, NGramTensors

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"  # what triton.jit saw at import


@triton.jit
def _plus(a, b, MERGE_SUM: tl.constexpr):
    """ln(e^a + e^b) (prefix search) or max(a, b) (Viterbi); -inf + -inf is -inf."""
    hi = tl.maximum(a, b)
    if MERGE_SUM:
        lo = tl.minimum(a, b)
        safe = hi > float("-inf")  # (else both are -inf, and so is the sum)
        return tl.where(safe, hi + tl.log(1.0 + tl.exp(lo - tl.where(safe, hi, 0.0))), hi)
    else:
        return hi


@triton.jit
def _lm_score(state, word, mask, ends_ptr, first_ptr, keys_ptr, logp_ptr, next_ptr, bows_ptr, window, shift, bucket_base, mul,
              ORDER: tl.constexpr, WP: tl.constexpr):
    """NGramLM.score for a block of (state, word) pairs (n,) int64: ln P and the state after.
    For j = 0 .. ORDER-1 (unrolled, so the loads of all orders are in flight together) the
    n-gram (last j words of the context, word) is looked up in its bucket's window of the
    sorted key table, all WP (the window rounded up to a power of 2) keys at once; the longest
    one listed answers, plus the back-off weights of the context's listed ends longer than it."""
    w = tl.arange(0, WP)
    entry = tl.zeros_like(state)
    which = tl.zeros_like(state)
    for j in tl.static_range(ORDER):
        end = tl.load(ends_ptr + state * ORDER + j, mask=mask, other=-1)
        key = (end + word) * mul
        start = tl.load(first_ptr + ((key >> shift) + bucket_base), mask=mask, other=0).to(tl.int64)
        probe = mask[:, None] & (w[None, :] < window)  # (n, WP)
        hit = (probe & (tl.load(keys_ptr + start[:, None] + w[None, :], mask=probe, other=0) == key[:, None])).to(tl.int32)
        found = tl.max(hit, axis=1) > 0  # (n,) j = 0 always is: every word is a 1-gram
        entry = tl.where(found, start + tl.argmax(hit, axis=1, tie_break_left=True), entry)
        which = tl.where(found, j, which)
    logp = tl.load(logp_ptr + entry, mask=mask, other=0.0) + tl.load(bows_ptr + state * ORDER + which, mask=mask, other=0.0)
    return logp, tl.load(next_ptr + entry, mask=mask, other=0)


@triton.jit
def _beam_kernel(
    lp_ptr, len_ptr, cid_ptr, clp_ptr,  # (B, T, V) f32, (B,) i64, (B, T, K) i64, (B, T, K) f32
    parent_ptr, label_ptr,  # out: (T, B, BP) i32 back-pointers
    out_f_ptr, out_i_ptr,  # out: (B, 4, BP) f32 [p_b, p_nb, lm, words], (B, 2, BP) i64 [state 0, state 1]
    sf_ptr, si_ptr,  # scratch: (B, 5, NCP) f32 [score, p_b, p_nb, lm, words], (B, 4, NCP) i64 [last, key, state 0, state 1]
    ends_ptr, first_ptr, keys_ptr, lmlogp_ptr, next_ptr, bows_ptr,  # NGramLM tables
    window, shift, bucket_base, mul, start_state,
    trie_ptr, endsw_ptr, pen_ptr, nodeword_ptr, endcost_ptr,  # WordLMFusion tables
    tokword_ptr, tlogp_ptr, tnext_ptr,  # TokenLMFusion tables
    B, T, V, K, beam, blank, lm_weight, word_bonus, threshold, utt_mul,
    BP: tl.constexpr, KP: tl.constexpr, NCP: tl.constexpr, FUSION: tl.constexpr, MERGE_SUM: tl.constexpr,
    ORDER: tl.constexpr, WP: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    length = tl.load(len_ptr + b)
    slot = tl.arange(0, BP)
    kk = tl.arange(0, KP)
    nc = tl.arange(0, NCP)
    NC: tl.constexpr = BP + BP * KP
    grow_at = BP + slot[:, None] * KP + kk[None, :]  # (BP, KP) where a grow sits among the candidates
    sf = sf_ptr + b * 5 * NCP
    si = si_ptr + b * 4 * NCP

    # slot 0: the empty prefix (last label blank, the utterance's own hash); the rest start dead
    p_b = tl.where(slot == 0, 0.0, float("-inf"))
    p_nb = tl.full((BP,), float("-inf"), tl.float32)
    lm = tl.zeros((BP,), tl.float32)
    words = tl.zeros((BP,), tl.float32)
    last = tl.full((BP,), 0, tl.int64) + blank
    key = tl.zeros((BP,), tl.int64) + b * utt_mul
    st0 = tl.zeros((BP,), tl.int64) + start_state
    st1 = tl.zeros((BP,), tl.int64)

    for t in range(0, length):
        row = b * T + t
        lp_blank = tl.load(lp_ptr + row * V + blank)
        lp_last = tl.load(lp_ptr + row * V + last)
        c_id = tl.load(cid_ptr + row * K + kk, mask=kk < K, other=0) + tl.zeros((KP,), tl.int64)
        c_lp = tl.load(clp_ptr + row * K + kk, mask=kk < K, other=float("-inf"))
        total = _plus(p_b, p_nb, MERGE_SUM)
        alive = total > float("-inf")
        stay_b = total + lp_blank
        stay_nb = p_nb + lp_last
        # grow every slot by every candidate (a repeat of the last label only from p_b)
        grow = tl.where(c_id[None, :] == last[:, None], p_b[:, None], total[:, None]) + c_lp[None, :]  # (BP, KP)
        g_key = (key[:, None] + c_id[None, :] + 1) * mul
        # a grow equal to a live slot's prefix joins that slot's p_nb (one grow at most per slot)
        same = (g_key[:, :, None] == key[None, None, :]) & alive[None, None, :]  # (BP, KP, BP)
        joined = tl.max(tl.max(tl.where(same, grow[:, :, None], float("-inf")), axis=0), axis=0)  # (BP,)
        stay_nb = _plus(stay_nb, joined, MERGE_SUM)
        g_nb = tl.where(tl.max(same.to(tl.int32), axis=2) > 0, float("-inf"), grow)

        # LM fusion: what each grow adds to ln P_lm and to the words scored, and its state after
        if FUSION == 1:
            node = st1
            entry = node[:, None] * V + c_id[None, :]
            ends = tl.load(endsw_ptr + entry).to(tl.int1)
            # only the delimiter ends a word, and then the LM's answer depends on the slot alone
            asks = alive & (node != 0)
            word = tl.load(nodeword_ptr + node, mask=asks, other=0)
            w_lp, w_ctx = _lm_score(st0, word, asks, ends_ptr, first_ptr, keys_ptr, lmlogp_ptr, next_ptr, bows_ptr, window, shift, bucket_base, mul, ORDER, WP)
            w_lp += tl.load(endcost_ptr + node, mask=asks, other=0.0)
            d_lm = tl.load(pen_ptr + entry) + tl.where(ends, w_lp[:, None], 0.0)
            d_words = ends.to(tl.float32)
            g_st0 = tl.where(ends, w_ctx[:, None], st0[:, None])
            g_st1 = tl.load(trie_ptr + entry)
        elif FUSION == 2:
            entry = st0[:, None] * V + c_id[None, :]
            d_lm = tl.load(tlogp_ptr + entry)
            d_words = tl.full((BP, KP), 1.0, tl.float32)
            g_st0 = tl.load(tnext_ptr + entry)
            g_st1 = tl.zeros((BP, KP), tl.int64)
        elif FUSION == 3:
            word = tl.load(tokword_ptr + c_id)
            asks = alive[:, None] & (c_lp[None, :] > float("-inf"))
            d_lm, g_st0 = _lm_score(tl.reshape(st0[:, None] + tl.zeros((BP, KP), tl.int64), (BP * KP,)), tl.reshape(word[None, :] + tl.zeros((BP, KP), tl.int64), (BP * KP,)),
                                    tl.reshape(asks, (BP * KP,)), ends_ptr, first_ptr, keys_ptr, lmlogp_ptr, next_ptr, bows_ptr, window, shift, bucket_base, mul, ORDER, WP)
            d_lm = tl.reshape(d_lm, (BP, KP))
            g_st0 = tl.reshape(g_st0, (BP, KP))
            d_words = tl.full((BP, KP), 1.0, tl.float32)
            g_st1 = tl.zeros((BP, KP), tl.int64)
        else:
            d_lm = tl.zeros((BP, KP), tl.float32)
            d_words = tl.zeros((BP, KP), tl.float32)
            g_st0 = st0[:, None] + tl.zeros((BP, KP), tl.int64)
            g_st1 = st1[:, None] + tl.zeros((BP, KP), tl.int64)
        g_lm = lm[:, None] + d_lm
        g_words = words[:, None] + d_words

        # the candidates, stays then grows, to the scratch row
        s_stay = _plus(stay_b, stay_nb, MERGE_SUM) + (lm_weight * lm + word_bonus * words)
        s_grow = g_nb + (lm_weight * g_lm + word_bonus * g_words)
        tl.store(sf + slot, s_stay)
        tl.store(sf + NCP + slot, stay_b)
        tl.store(sf + 2 * NCP + slot, stay_nb)
        tl.store(sf + 3 * NCP + slot, lm)
        tl.store(sf + 4 * NCP + slot, words)
        tl.store(si + slot, last)
        tl.store(si + NCP + slot, key)
        tl.store(si + 2 * NCP + slot, st0)
        tl.store(si + 3 * NCP + slot, st1)
        tl.store(sf + grow_at, s_grow)
        tl.store(sf + NCP + grow_at, tl.full((BP, KP), float("-inf"), tl.float32))
        tl.store(sf + 2 * NCP + grow_at, g_nb)
        tl.store(sf + 3 * NCP + grow_at, g_lm)
        tl.store(sf + 4 * NCP + grow_at, g_words)
        tl.store(si + grow_at, c_id[None, :] + tl.zeros((BP, KP), tl.int64))
        tl.store(si + NCP + grow_at, g_key)
        tl.store(si + 2 * NCP + grow_at, g_st0)
        tl.store(si + 3 * NCP + grow_at, g_st1)
        tl.debug_barrier()

        # keep the best `beam` within `threshold` of the best: repeated argmax (ties: the earlier)
        score = tl.load(sf + nc, mask=nc < NC, other=float("-inf"))
        best = tl.max(score, axis=0)
        score = tl.where(score >= best - threshold, score, float("-inf"))
        count = tl.minimum(tl.sum((score > float("-inf")).to(tl.int32), axis=0), beam)
        pick = tl.zeros((BP,), tl.int32)
        for j in range(0, count):
            at = tl.argmax(score, axis=0, tie_break_left=True)
            pick = tl.where(slot == j, at, pick)
            score = tl.where(nc == at, float("-inf"), score)
        live = slot < count
        p_b = tl.where(live, tl.load(sf + NCP + pick), float("-inf"))
        p_nb = tl.where(live, tl.load(sf + 2 * NCP + pick), float("-inf"))
        lm = tl.load(sf + 3 * NCP + pick)
        words = tl.load(sf + 4 * NCP + pick)
        last = tl.load(si + pick)
        key = tl.load(si + NCP + pick)
        st0 = tl.load(si + 2 * NCP + pick)
        st1 = tl.load(si + 3 * NCP + pick)
        grown = pick >= BP
        tl.store(parent_ptr + (t * B + b) * BP + slot, tl.where(grown, (pick - BP) // KP, pick))
        tl.store(label_ptr + (t * B + b) * BP + slot, tl.where(grown, last, -1).to(tl.int32))
        tl.debug_barrier()

    for t in range(length, T):  # past the end: every slot stays
        tl.store(parent_ptr + (t * B + b) * BP + slot, slot)
        tl.store(label_ptr + (t * B + b) * BP + slot, tl.full((BP,), -1, tl.int32))
    out_f = out_f_ptr + b * 4 * BP + slot
    tl.store(out_f, p_b)
    tl.store(out_f + BP, p_nb)
    tl.store(out_f + 2 * BP, lm)
    tl.store(out_f + 3 * BP, words)
    out_i = out_i_ptr + b * 2 * BP + slot
    tl.store(out_i, st0)
    tl.store(out_i + BP, st1)


def _fusion_args(fusion: Fusion | None, device: torch.device):
    """The fusion's tensors on the device (`fusion.tensors`), and `fusion_tables` of them: its
    kind (the kernel's FUSION), its n-gram's tensors, and the kernel's table arguments."""
    view = fusion.tensors(device) if fusion is not None else None
    dummies = (torch.zeros(1, device=device), torch.zeros(1, dtype=torch.long, device=device), torch.zeros(1, dtype=torch.int8, device=device))
    return (view, *fusion_tables(fusion, view, dummies))


def _lm_args(lm: NGramTensors | None, device: torch.device) -> tuple[list, dict]:
    """The kernel's NGramLM arguments, and its constants for them (dummies without an LM)."""
    if lm is None:
        dummy = torch.zeros(1, dtype=torch.long, device=device)
        return [dummy, dummy, dummy, dummy.float(), dummy, dummy.float(), 1, 0, 0, _MUL, 0], dict(ORDER=1, WP=1)
    window = lm._windows.shape[1]
    tables = [lm._ends, lm._first, lm._padded, lm.logp, lm.next_state, lm._bows]
    sizes = dict(ORDER=lm.order, WP=triton.next_power_of_2(window))
    return tables + [window, 64 - lm._bits, 1 << (lm._bits - 1), _MUL, lm._bos_state], sizes


@torch.inference_mode()
def decode_beam_triton(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
    fusion: Fusion | None,
    options: BeamOptions,
    num_warps: int | None = None,
) -> list[list[Hypothesis]]:
    """`decode_beam` as one Triton kernel (its arguments, checked there; blank frames already
    skipped; lengths on log_probs' device). num_warps: threads per utterance, in warps of 32;
    by default 2 (ptxas for sm_90: ~165 registers a thread, no spills; one warp keeps every
    reduction inside the warp but needs 255), and 4 when a token LM is asked at every grow
    (its (slots * labels, window) lookups spill with fewer)."""
    device = log_probs.device
    if device.type != "cuda" and not INTERPRETED:
        raise ValueError("the triton layout runs on a CUDA device (or, for tests, on the CPU under TRITON_INTERPRET=1)")
    log_probs = log_probs.float().contiguous()
    n_utt, frames, vocab = log_probs.shape
    k = max(min(options.token_top_k, vocab - 1), 1)
    c_id, c_lp = (x.contiguous() for x in grid_candidates(log_probs, lengths, k, options.token_min_logp, options.blank, options.token_cum_prob))  # (utts, frames, k)
    bp, kp = triton.next_power_of_2(options.beam_size), triton.next_power_of_2(k)
    ncp = triton.next_power_of_2(bp + bp * kp)
    parent = torch.empty(frames, n_utt, bp, dtype=torch.int32, device=device)
    label = torch.empty(frames, n_utt, bp, dtype=torch.int32, device=device)
    out_f = torch.empty(n_utt, 4, bp, device=device)
    out_i = torch.empty(n_utt, 2, bp, dtype=torch.long, device=device)
    scratch_f = torch.empty(n_utt, 5, ncp, device=device)
    scratch_i = torch.empty(n_utt, 4, ncp, dtype=torch.long, device=device)
    view, kind, lm, word_tables, token_tables = _fusion_args(fusion, device)  # kind: the kernel's FUSION
    if n_utt:  # (with no frames, each program just writes its start: the empty prefix)
        lm_tables, lm_sizes = _lm_args(lm, device)
        num_warps = num_warps or (4 if kind == TOKEN_LM else 2)
        _beam_kernel[(n_utt,)](
            log_probs, lengths.long().contiguous(), c_id, c_lp, parent, label, out_f, out_i, scratch_f, scratch_i,
            *lm_tables, *word_tables, *token_tables,
            n_utt, frames, vocab, k, options.beam_size, options.blank, float(options.lm_weight), float(options.word_bonus), float(options.beam_threshold), UTT_MUL,
            BP=bp, KP=kp, NCP=ncp, FUSION=kind, MERGE_SUM=options.merge == "sum", **lm_sizes, num_warps=num_warps,
        )
    state = out_i[:, : (2 if kind == WORD_FUSION else 1)].transpose(1, 2)  # (utts, bp, S)
    return final_hypotheses(out_f[:, 0], out_f[:, 1], out_f[:, 2], out_f[:, 3], state, parent, label, view, options)
