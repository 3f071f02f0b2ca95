"""The flat list's prefix beam search (`flat.py`) as one compiled loop per utterance (numba):
the layout for CPUs.

The flat list runs ~130 torch ops per frame. On a CPU each costs 1-3 us however little it does,
so with the hypotheses of a peaky CTC model (a few live prefixes per utterance, a label or two
worth trying per frame) most of a frame is op overhead: on the demo's test set that capped the
flat list at ~5-6x pyctcdecode. Here numba compiles the search (to machine code, through LLVM,
at first use, cached on disk) and each utterance walks its own frames with its hypotheses in a
few small arrays, paying only for its live prefixes and the labels they try.

The search is the flat list's, step for step: the same candidate labels per frame
(`common.frame_candidates`, computed for the whole batch on numpy arrays), stays, then grows by
(hypothesis, label); a grow equal to a live prefix merges into its p_nb (found by hash); the
same early pruning before the LM; word- or token-level fusion as `WordLMFusion.grow_` and
`TokenLMFusion.grow_` compute it (the same tables, the n-gram looked up as `NGramLM.score`
does); the best `beam_size` within `beam_threshold` of the best survive, best first, exact ties
to the earlier candidate (the flat list's stable sort). Scores are float32, as in torch. At the
end `final_scores` adds the fusion's final LM terms (`fusion.final_scores`, on numpy arrays), the
n-best are picked, and the back-pointers (parent slot, label added) are followed by a compiled
walk. No torch anywhere: numpy arrays in, Hypothesis lists out.

The live hypotheses are arrays the caller holds (`start_hypotheses`), which the search reads
and leaves as they are after its last frame: a later call on the next frames goes on from
there. That is how the streaming decoder (`asr.decode.incremental`) advances chunk by chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from asr.decode.beam.common import NEG_INF, UTT_MUL, BeamOptions, Hypothesis, frame_candidates
from asr.decode.fusion import TOKEN_LM, TOKEN_TABLES, WORD_FUSION, Fusion, fusion_bound, fusion_tables
from asr.decode.lm import _MUL, NGramLM
from asr.jit import njit

_F32 = np.float32
_NEG_INF = _F32(-np.inf)
_LOWEST = _F32(np.finfo(np.float32).min)


# The search's steps are inlined into it by numba (inline="always"), not called: a call passes
# each array by reference count, and with ~10 arrays a step that cost ~10 % of the search.
_inlined = njit(inline="always")


@njit
def _plus(a, b, merge_sum):
    """ln(e^a + e^b) as torch.logaddexp computes it (prefix search), or max(a, b) (Viterbi)."""
    if not merge_sum:
        return max(a, b)
    if a == b and math.isinf(a):
        return a
    return max(a, b) + np.log1p(np.exp(-abs(a - b)))


@_inlined
def _lm_score(state, word, lm):
    """NGramLM.score for one (state, word): ln P and the state after. The n-grams (last j words
    of the context, word), j = 0 .. order-1, are looked up in their buckets' runs of the sorted
    key table; the longest listed one answers, plus the back-off weights of the context's
    listed ends longer than it. lm: `_lm_arrays`' tuple."""
    ends, first, keys, logp, next_state, bows, window, shift, bucket_base = lm
    entry = 0
    which = 0
    for j in range(ends.shape[1]):
        key = (ends[state, j] + word) * _MUL  # wraps modulo 2**64, as in torch
        at = first[(key >> shift) + bucket_base]
        for w in range(window):  # the run is sorted: stop at the first key not below ours
            other = keys[at + w]
            if other >= key:
                if other == key:
                    entry = at + w
                    which = j
                break
    return logp[entry] + bows[state, which], next_state[entry]


@njit
def _search(
    lp, lengths, cand_id, cand_lp,  # (B, T, V) f32, (B,) i64, (B, T, K) i64 and f32 (-inf: none)
    hyp_f, hyp_i, live,  # in and out: (B, 4, beam) f32, (B, 4, beam) i64, (B,) i64 (`_start`)
    parent_out, label_out,  # out: (T, B, beam) i32 x2, the back-pointers of these frames
    beam, blank, threshold, early, bound, lm_weight, word_bonus, merge_sum, kind,
    lm,  # NGramLM (`_lm_arrays`)
    word_tables, token_tables,  # (trie, ends_word, penalty, node_word, end_cost), (token_words, table_logp, table_next)
):
    """Every utterance's frames, a step at a time; the step's parts are the flat list's
    (`flat._step`). The live hypotheses of utterance b, best first, are its first live[b]
    slots of hf = hyp_f[b] (4, beam) [p_b, p_nb, ln P_lm so far, words so far] and hi = hyp_i[b]
    (4, beam) [last label, hash, state 0, state 1]; they are the search's state, so a later
    call on the next frames goes on where this one stopped. The candidates of a frame, stays
    (the first n) then grows: cf, ci (4, stays + grows) the same rows, c_parent, c_label (the
    label added, -1 for a stay), score."""
    num_utt, frames, vocab = lp.shape
    k = cand_id.shape[2]
    slack = _F32(threshold + 1e-3)  # early pruning's margin, as in the flat list
    thr = _F32(threshold)
    cap = beam + beam * k
    cf = np.empty((4, cap), np.float32)
    ci = np.empty((4, cap), np.int64)
    c_parent = np.empty(cap, np.int64)
    c_label = np.empty(cap, np.int64)
    score = np.empty(cap, np.float32)
    fused = np.empty(beam, np.float32)
    total = np.empty(beam, np.float32)
    pick = np.empty(beam, np.int64)
    for b in range(num_utt):
        hf, hi, n = hyp_f[b], hyp_i[b], live[b]
        length = lengths[b]
        for t in range(length):
            m = _stay_and_grow(lp, cand_id, cand_lp, b, t, n, hf, hi, cf, ci, c_parent, c_label, total, blank, merge_sum)
            best_stay = _stay_scores(n, hf, cf, fused, score, lm_weight, word_bonus, merge_sum)
            if early:  # grows that cannot make the beam, whatever the LM adds, leave before it is asked
                m = _prune_early(n, m, best_stay - slack, fused, bound, cf, ci, c_parent, c_label)
            _fuse(n, m, vocab, hf, hi, cf, ci, c_parent, c_label, score, lm_weight, word_bonus, kind, lm, word_tables, token_tables)
            n = _select(m, beam, thr, score, pick)
            _keep(n, beam, pick, cf, ci, c_parent, c_label, hf, hi, parent_out, label_out, t, b)
        for t in range(length, frames):  # past the end: every slot stays
            for slot in range(beam):
                parent_out[t, b, slot] = slot
                label_out[t, b, slot] = -1
        live[b] = n


@njit
def _start(hyp_f, hyp_i, live, blank, start_state):
    """Every utterance's hypotheses before its first frame: the empty prefix alone (last label
    blank, the utterance's own hash, the LM's start state). Arrays as `_search` takes them."""
    for b in range(live.shape[0]):
        live[b] = 1
        hyp_f[b, 0, 0], hyp_f[b, 1, 0], hyp_f[b, 2, 0], hyp_f[b, 3, 0] = 0.0, _NEG_INF, 0.0, 0.0
        hyp_i[b, 0, 0], hyp_i[b, 1, 0], hyp_i[b, 2, 0], hyp_i[b, 3, 0] = blank, b * UTT_MUL, start_state, 0


@_inlined
def _stay_and_grow(lp, cand_id, cand_lp, b, t, n, hf, hi, cf, ci, c_parent, c_label, total, blank, merge_sum):
    """Frame t of utterance b's candidates: first the n stays (blank, or the last label again),
    then the grows by the frame's candidate labels (a repeat only from p_b); a grow equal to a
    live prefix joins that one's p_nb and is no candidate itself. Returns the number of
    candidates."""
    lp_blank = lp[b, t, blank]
    for i in range(n):
        total[i] = _plus(hf[0, i], hf[1, i], merge_sum)
        cf[0, i] = total[i] + lp_blank
        cf[1, i] = hf[1, i] + lp[b, t, hi[0, i]]
        cf[2, i] = hf[2, i]
        cf[3, i] = hf[3, i]
        for row in range(4):
            ci[row, i] = hi[row, i]
        c_parent[i] = i
        c_label[i] = -1
    m = n
    for i in range(n):
        for j in range(cand_id.shape[2]):
            c = cand_id[b, t, j]
            g = (hf[0, i] if c == hi[0, i] else total[i]) + cand_lp[b, t, j]
            if not g > _NEG_INF:
                continue
            g_key = (hi[1, i] + c + 1) * _MUL
            joined = False
            for other in range(n):
                if hi[1, other] == g_key:
                    cf[1, other] = _plus(cf[1, other], g, merge_sum)
                    joined = True
                    break
            if not joined:
                c_parent[m] = i
                c_label[m] = c
                ci[1, m] = g_key
                cf[1, m] = g
                m += 1
    return m


@_inlined
def _stay_scores(n, hf, cf, fused, score, lm_weight, word_bonus, merge_sum):
    """The stays' scores (and each hypothesis's fused LM part); returns the best of them."""
    best_stay = _NEG_INF
    for i in range(n):
        fused[i] = lm_weight * hf[2, i] + word_bonus * hf[3, i]
        score[i] = _plus(cf[0, i], cf[1, i], merge_sum) + fused[i]
        best_stay = max(best_stay, score[i])
    return best_stay


@_inlined
def _prune_early(n, m, bar, fused, bound, cf, ci, c_parent, c_label):
    """Drop the grows that stay below `bar` (the best stay less the threshold) even with the
    most fusion can add to them; returns the number of candidates left."""
    kept = n
    for g in range(n, m):
        need = max(bar - fused[c_parent[g]] - bound[c_label[g]], _LOWEST)
        if cf[1, g] >= need:
            c_parent[kept], c_label[kept], ci[1, kept], cf[1, kept] = c_parent[g], c_label[g], ci[1, g], cf[1, g]
            kept += 1
    return kept


@_inlined
def _fuse(n, m, vocab, hf, hi, cf, ci, c_parent, c_label, score, lm_weight, word_bonus, kind, lm, word_tables, token_tables):
    """LM fusion of the grows n .. m-1: what each adds to ln P_lm and to the words scored, its
    state after, and its score."""
    trie, ends_word, penalty, node_word, end_cost = word_tables
    token_words, table_logp, table_next = token_tables
    for g in range(n, m):
        i, c = c_parent[g], c_label[g]
        d_lm, d_words = _F32(0.0), _F32(0.0)
        st0, st1 = hi[2, i], hi[3, i]
        if kind == WORD_FUSION:  # word: the delimiter ends the unfinished word, which the LM then scores
            entry = st1 * vocab + c
            d_lm = penalty[entry]
            if ends_word[entry]:
                w_lp, st0 = _lm_score(hi[2, i], node_word[st1], lm)
                d_lm = d_lm + (w_lp + end_cost[st1])
                d_words = _F32(1.0)
            st1 = trie[entry]
        elif kind == TOKEN_TABLES:
            entry = st0 * vocab + c
            d_lm = table_logp[entry]
            st0 = table_next[entry]
            d_words = _F32(1.0)
        elif kind == TOKEN_LM:  # the n-gram itself, asked at every grow
            d_lm, st0 = _lm_score(st0, token_words[c], lm)
            d_words = _F32(1.0)
        cf[0, g] = _NEG_INF
        cf[2, g] = hf[2, i] + d_lm
        cf[3, g] = hf[3, i] + d_words
        ci[0, g] = c
        ci[2, g] = st0
        ci[3, g] = st1
        score[g] = cf[1, g] + (lm_weight * cf[2, g] + word_bonus * cf[3, g])


@_inlined
def _select(m, beam, thr, score, pick):
    """The best `beam` of the m candidates within `thr` of the best, best first, ties to the
    earlier one, into pick; returns how many."""
    best = _NEG_INF
    for c in range(m):
        best = max(best, score[c])
    floor = max(best - thr, _LOWEST)  # finite, so -inf candidates fail it
    count = 0
    for c in range(m):
        s = score[c]
        if not s >= floor:
            continue
        if count < beam:
            at = count
            count += 1
        elif s > score[pick[beam - 1]]:
            at = beam - 1
        else:
            continue
        while at > 0 and score[pick[at - 1]] < s:
            pick[at] = pick[at - 1]
            at -= 1
        pick[at] = c
    return count


@_inlined
def _keep(count, beam, pick, cf, ci, c_parent, c_label, hf, hi, parent_out, label_out, t, b):
    """The picked candidates become the live hypotheses; their back-pointers at frame t of
    utterance b are written, the empty slots' too."""
    for slot in range(beam):
        if slot < count:
            c = pick[slot]
            for row in range(4):
                hf[row, slot] = cf[row, c]
                hi[row, slot] = ci[row, c]
            parent_out[t, b, slot] = c_parent[c]
            label_out[t, b, slot] = c_label[c]
        else:
            parent_out[t, b, slot] = slot
            label_out[t, b, slot] = -1


@njit
def _spell(parent, label, slot):
    """Labels of the chosen slots (utts, n), walking the back-pointers (frames, utts, beam) from
    the last frame: (utts, n, frames), -1 where a frame added none."""
    frames = parent.shape[0]
    num_utt, n = slot.shape
    out = np.full((num_utt, n, frames), -1, np.int64)
    for b in range(num_utt):
        for j in range(n):
            at = slot[b, j]
            for t in range(frames - 1, -1, -1):
                out[b, j, t] = label[t, b, at]
                at = parent[t, b, at]
    return out


def _lm_arrays(lm: NGramLM | None) -> tuple[tuple, int]:
    """The search's NGramLM tables (ends, first, keys, logp, next_state, bows, window, shift,
    bucket_base) and its start state; without an LM, dummies of the dtypes an LM has, so that
    numba compiles one version of the search for both."""
    if lm is None:
        one = np.zeros(1, np.int64)
        return (np.zeros((1, 1), np.int64), np.zeros(1, np.int32), one, np.zeros(1, np.float32), one, np.zeros((1, 1), np.float32), 1, 0, 0), 0
    window = lm._windows.shape[1]
    tables = (lm._ends, lm._first, lm._padded, lm.logp, lm.next_state, lm._bows)
    return tables + (window, 64 - lm._bits, 1 << (lm._bits - 1)), lm._bos_state


@njit
def _trace(parent, label, slot):
    """The labels of one utterance's slot and the frame where each was added, walking the
    back-pointers (frames, 1, beam) from the last frame: two (labels,) int64 arrays."""
    labels = np.empty(parent.shape[0], np.int64)
    at_frame = np.empty(parent.shape[0], np.int64)
    n = 0
    for t in range(parent.shape[0] - 1, -1, -1):
        if label[t, 0, slot] >= 0:
            labels[n] = label[t, 0, slot]
            at_frame[n] = t
            n += 1
        slot = parent[t, 0, slot]
    return labels[:n][::-1].copy(), at_frame[:n][::-1].copy()


def trace_path(parent: np.ndarray, label: np.ndarray, slot: int) -> tuple[list[int], list[int]]:
    """One utterance's back-pointers (frames, 1, beam) int32 and a slot -> its labels and, for
    each, the frame that added it."""
    labels, at_frame = _trace(parent, label, slot)
    return labels.tolist(), at_frame.tolist()


@njit
def _totals(p_b, p_nb, merge_sum):
    """Each slot's acoustic score, p_b (+) p_nb as the search adds them (`_plus`): (utts, beam) float32."""
    out = np.empty_like(p_b)
    for b in range(p_b.shape[0]):
        for slot in range(p_b.shape[1]):
            out[b, slot] = _plus(p_b[b, slot], p_nb[b, slot], merge_sum)
    return out


@dataclass(frozen=True)
class SearchSetup:
    """What `_search` is given besides the frames, the hypotheses and the back-pointers: fixed
    for a decoder (its options, the fusion and its tables)."""

    args: tuple  # _search's arguments from beam to token_tables
    kind: int  # the fusion's kind (asr.decode.fusion: NO_FUSION, WORD_FUSION, ...)
    start_state: int  # the LM's start state (0 without an LM)
    fusion: Fusion | None  # for the final LM scores
    options: BeamOptions


def search_setup(fusion: Fusion | None, options: BeamOptions, vocab: int) -> SearchSetup:
    """The options and the fusion's tables as `_search` reads them, for log-probs of `vocab` labels."""
    bound, early = fusion_bound(fusion, vocab, options.lm_weight, options.word_bonus, options.beam_threshold)
    kind, lm, word_tables, token_tables = fusion_tables(fusion)  # (numba reads the kinds as constants)
    lm_tables, start_state = _lm_arrays(lm)
    args = (
        options.beam_size, options.blank, float(options.beam_threshold), early, bound, _F32(options.lm_weight), _F32(options.word_bonus), options.merge == "sum", kind,
        lm_tables, tuple(word_tables), tuple(token_tables),
    )
    return SearchSetup(args, kind, start_state, fusion, options)


def start_hypotheses(num_utt: int, setup: SearchSetup) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each utterance's hypotheses before its first frame, as `_search` takes and returns them:
    hyp_f (utts, 4, beam) float32, hyp_i (utts, 4, beam) int64, live (utts,) int64."""
    beam, blank = setup.args[0], setup.args[1]
    hyp_f = np.empty((num_utt, 4, beam), np.float32)
    hyp_i = np.empty((num_utt, 4, beam), np.int64)
    live = np.empty(num_utt, np.int64)
    _start(hyp_f, hyp_i, live, blank, setup.start_state)
    return hyp_f, hyp_i, live


def search_frames(
    log_probs: np.ndarray, lengths: np.ndarray, hypotheses: tuple[np.ndarray, np.ndarray, np.ndarray],
    parent: np.ndarray, label: np.ndarray, setup: SearchSetup, candidates: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Advance each utterance's `hypotheses` (`start_hypotheses`' arrays, updated in place) over
    its frames of log_probs (utts, frames, vocab) float32, contiguous, lengths (utts,) int64;
    the frames' back-pointers go to parent and label (frames, utts, beam) int32. candidates: the
    labels each frame tries and their log probs, (utts * frames, k) int64 and float32, if the
    caller picked them (torch's `common_torch.frame_candidates`, for tensors); else
    `common.frame_candidates` picks them."""
    n_utt, frames, _ = log_probs.shape
    options = setup.options
    if candidates is None:
        candidates = frame_candidates(log_probs, lengths, options.token_top_k, options.token_min_logp, options.blank, options.token_cum_prob)
    cand_id, cand_lp = candidates
    k = cand_id.shape[1]
    _search(log_probs, lengths, cand_id.reshape(n_utt, frames, k), cand_lp.reshape(n_utt, frames, k), *hypotheses, parent, label, *setup.args)


def final_scores(hypotheses: tuple[np.ndarray, np.ndarray, np.ndarray], setup: SearchSetup) -> tuple[np.ndarray, ...]:
    """The hypotheses' slots scored as the search ends: score, acoustic, ln P_lm and words, the
    fusion's final terms included (`fusion.final_scores`), each (utts, beam) float32; a slot past
    the live ones scores -inf."""
    hyp_f, hyp_i, live = hypotheses
    options = setup.options
    dead = np.arange(hyp_f.shape[2]) >= live[:, None]  # (utts, beam)
    f = np.where(dead[:, None, :], np.array([NEG_INF, NEG_INF, 0.0, 0.0], np.float32)[:, None], hyp_f)  # (utts, 4, beam), the dead slots' cleared
    acoustic, lm_total, words_total = _totals(f[:, 0], f[:, 1], options.merge == "sum"), f[:, 2], f[:, 3]
    if setup.fusion is not None:
        state = hyp_i[:, 2:].transpose(0, 2, 1)[:, :, : (2 if setup.kind == WORD_FUSION else 1)]  # (utts, beam, S)
        state = np.where(dead[:, :, None], 0, state)
        state[:, :, 0] = np.where(dead, setup.start_state, state[:, :, 0])  # (a dead slot's is any valid state)
        final_lm, final_words = setup.fusion.final_scores(state.reshape(-1, state.shape[2]))
        lm_total += final_lm.reshape(dead.shape)
        words_total += final_words.reshape(dead.shape)
    score = acoustic + _F32(options.lm_weight) * lm_total + _F32(options.word_bonus) * words_total
    return np.where(acoustic == NEG_INF, _F32(NEG_INF), score), acoustic, lm_total, words_total


def decode_beam_numba(
    log_probs: np.ndarray, lengths: np.ndarray, fusion: Fusion | None, options: BeamOptions, candidates: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[list[Hypothesis]]:
    """`decode_beam` as one compiled loop per utterance (its arguments, checked there; blank
    frames already skipped): log_probs (utts, frames, vocab) float32, lengths (utts,) int64,
    numpy arrays; candidates as `search_frames` takes them."""
    log_probs = np.ascontiguousarray(log_probs, dtype=np.float32)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    n_utt, frames, vocab = log_probs.shape
    setup = search_setup(fusion, options, vocab)
    hypotheses = start_hypotheses(n_utt, setup)
    parent = np.empty((frames, n_utt, options.beam_size), np.int32)
    label = np.empty((frames, n_utt, options.beam_size), np.int32)
    search_frames(log_probs, lengths, hypotheses, parent, label, setup, candidates)
    score, acoustic, lm_total, words_total = final_scores(hypotheses, setup)
    slot = np.argsort(-score, axis=1, kind="stable")[:, : options.nbest]  # (utts, n) best first, ties to the earlier slot
    spelled = _spell(parent, label, slot).tolist()  # (utts, n, frames), -1 where a frame added none
    columns = [np.take_along_axis(x, slot, axis=1).tolist() for x in (score, acoustic, lm_total, words_total)]
    return [
        [
            Hypothesis([c for c in spelled[b][j] if c >= 0], s, a, lm, int(w))
            for j, (s, a, lm, w) in enumerate(zip(*(column[b] for column in columns)))
            if s > NEG_INF
        ]
        for b in range(n_utt)
    ]
