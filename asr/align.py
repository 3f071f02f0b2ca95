"""Forced alignment: when each token (character or phone) and word of a known transcript was
spoken, from a CTC model's log-probs.

The best CTC path through a transcript: Viterbi over the 2L+1 states blank, y1, blank, y2, ...,
blank (the CTC forward pass of Graves et al. 2006 with max for sum). Per frame every state takes
the best of three predecessors (itself, the state before, and two before when that skips a
blank between two different labels); the choice is kept as one byte per (frame, state), and the
path is read back from the end. Three ways to run it, one answer:

    ctc_viterbi        a batch; on the CPU compiled by numba, an utterance at a time over the
                       states that are reachable and can still reach the end
    ctc_viterbi_torch  a batch as torch ops, a frame at a time: the same code on CUDA
    ctc_viterbi_long   one long recording: a window of states that moves forward with the path,
                       so memory grows with frames x window, not frames x labels

A token's frames are the frames its state holds on the path, its times those of the frames
(`FeatureExtractor.frame_times`, the one owner of frame -> seconds), and a word spans its tokens.
torchaudio's `forced_align` does the same search one utterance at a time; the tests check the
paths agree where torchaudio is installed.

Every function takes numpy arrays as well as torch tensors and answers in the kind it was given:
importing this module does not import torch, so word timestamps work in a runtime without it
(the search is compiled by numba either way; only `ctc_viterbi_torch` needs torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from asr.arrays import is_tensor, to_numpy
from asr.ctc import min_ctc_frames
from asr.jit import njit
from asr.tokens import BLANK_ID

if TYPE_CHECKING:
    import torch

    Array = np.ndarray | torch.Tensor  # numpy, or torch on any device

NEG_INF = float("-inf")


class AlignmentError(ValueError):
    """A transcript that cannot be aligned to its audio; the message names the utterance."""


def ctc_viterbi(
    log_probs: Array, lengths: Array, targets: Array, target_lengths: Array, blank: int = BLANK_ID,
    compiled: bool | None = None, repeats_need_blank: bool = True, return_states: bool = False,
) -> tuple[Array, Array] | tuple[Array, Array, Array]:
    """The best CTC path of each utterance through its transcript.

    log_probs (batch, frames, vocab), lengths (batch,), targets (batch, max_labels) padded,
    target_lengths (batch,) -> (path (batch, frames) long: the label each frame emits on the
    path, blank included, -1 past the utterance's end; score (batch,) float: the path's log
    prob, -inf where the transcript cannot fit the frames, whose path is then -1 throughout), on
    log_probs' device; numpy arrays in, numpy arrays out (searched compiled).

    On CUDA the search runs as torch ops over the whole batch, a frame at a time
    (`ctc_viterbi_torch`); on the CPU, where each of those ops costs microseconds of overhead,
    the same search runs compiled by numba, an utterance at a time over only the states that
    are reachable and can still reach the end (`compiled`: None picks by device). Both give the
    same paths and scores (tested), ties broken alike: stay, then one state back, then two.

    repeats_need_blank=False: the topology of a frame classifier's posteriors (`frame_log_probs`
    of a model with a frame head) instead of CTC's: two equal labels in a row may follow each
    other without a blank between them, so every blank is optional. return_states: also each
    frame's state (batch, frames), 2i + 1 for label i, even for blanks, -1 where there is none.
    """
    on_numpy = not is_tensor(log_probs)
    if compiled is None:
        compiled = on_numpy or log_probs.device.type == "cpu"
    if not compiled and not on_numpy:
        return ctc_viterbi_torch(log_probs, lengths, targets, target_lengths, blank, repeats_need_blank, return_states)
    global _viterbi_batch
    if _viterbi_batch is None:
        _viterbi_batch = njit(_viterbi_batch_kernel)
    lp = _numpy(log_probs, np.float32)  # (batch, frames, vocab)
    frame_lengths, labels, label_lengths = (_numpy(x, np.int64) for x in (lengths, targets, target_lengths))
    batch, frames, _ = lp.shape
    ext, skip = _extended(labels, blank, repeats_need_blank)  # (batch, states) each
    states = np.full((batch, frames), -1, np.int64)
    score = np.full(batch, NEG_INF, np.float32)
    _viterbi_batch(lp, frame_lengths, ext, 2 * label_lengths + 1, skip, states, score)
    score = np.where(min_frames(labels, label_lengths, repeats_need_blank) <= frame_lengths, score, np.float32(NEG_INF))
    path = np.where(states >= 0, np.take_along_axis(ext, states.clip(min=0), 1), -1)
    out = (path, score, states) if return_states else (path, score)
    if on_numpy:
        return out
    import torch

    return tuple(torch.from_numpy(x).to(log_probs.device) for x in out)


def _numpy(x: Array, dtype: type) -> np.ndarray:
    """A numpy array, or a torch tensor on any device (moved to the CPU, where the compiled
    searches run), as a contiguous numpy array of `dtype`."""
    if is_tensor(x):
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() else x  # bfloat16 has no numpy dtype
    return to_numpy(x, dtype)


def _extended(labels: np.ndarray, blank: int, repeats_need_blank: bool) -> tuple[np.ndarray, np.ndarray]:
    """labels (..., max_labels) -> the states' labels (..., 2 max_labels + 1) int64: blank, y1,
    blank, y2, ..., blank; and whether each state may be entered from two back (skipping the
    blank before it): a label state may, unless it repeats the label before and repeats need a
    blank."""
    shape = labels.shape[:-1] + (2 * labels.shape[-1] + 1,)
    ext = np.full(shape, blank, np.int64)
    ext[..., 1::2] = labels
    skip = np.zeros(shape, np.bool_)
    skip[..., 3::2] = labels[..., 1:] != labels[..., :-1] if repeats_need_blank else True
    return ext, skip


def min_frames(labels: Array, lengths: Array, repeats_need_blank: bool = True) -> Array:
    """The fewest frames each transcript can be aligned to: one per label, plus one blank between
    repeats where repeats need one (CTC)."""
    return min_ctc_frames(labels, lengths) if repeats_need_blank else lengths


def _viterbi_batch_kernel(lp, lengths, ext, num_ext, skip, states_out, score):
    """`ctc_viterbi` for a batch, an utterance at a time (numba): lp (B, T, V) f32, lengths (B,),
    ext (B, S) the labels of the states, num_ext (B,) states per utterance, skip (B, S) whether a
    state may be entered from two back; writes each frame's state (B, T) and score (B,). Per frame only the
    states that are reachable (s <= 2t + 1) and can still reach the end by the last frame
    (s >= S - 2 (T - t)) are computed, as torchaudio's forced_align does."""
    neg = np.float32(-np.inf)
    num_states = ext.shape[1]
    alpha = np.empty(num_states, np.float32)
    new = np.empty(num_states, np.float32)
    back = np.zeros((lp.shape[1], num_states), np.int8)
    for b in range(lp.shape[0]):
        frames, states = lengths[b], num_ext[b]
        if frames == 0:
            continue
        alpha[:] = neg
        new[:] = neg
        alpha[0] = lp[b, 0, ext[b, 0]]
        if states > 1:
            alpha[1] = lp[b, 0, ext[b, 1]]
        for t in range(1, frames):
            lo = max(0, states - 2 * (frames - t))
            hi = min(states, 2 * t + 2)
            for s in range(max(lo - 2, 0), lo):  # can no longer reach the end
                new[s] = neg
            for s in range(lo, hi):
                best, step = alpha[s], 0
                if s >= 1 and alpha[s - 1] > best:
                    best, step = alpha[s - 1], 1
                if s >= 2 and skip[b, s] and alpha[s - 2] > best:
                    best, step = alpha[s - 2], 2
                new[s] = best + lp[b, t, ext[b, s]]
                back[t, s] = step
            alpha, new = new, alpha
        state, best = states - 1, alpha[states - 1]
        if states > 1 and alpha[states - 2] > best:
            state, best = states - 2, alpha[states - 2]
        if not best > neg:
            continue
        score[b] = best
        for t in range(frames - 1, 0, -1):
            states_out[b, t] = state
            state -= back[t, state]
        states_out[b, 0] = state


_viterbi_batch = None  # compiled on first use


def ctc_viterbi_torch(
    log_probs: torch.Tensor, lengths: Array, targets: Array, target_lengths: Array, blank: int = BLANK_ID,
    repeats_need_blank: bool = True, return_states: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`ctc_viterbi` as torch ops over the whole batch, a frame at a time: the code for CUDA."""
    import torch

    with torch.inference_mode():
        device = log_probs.device
        batch, frames, _ = log_probs.shape
        extended = _extended(_numpy(targets, np.int64), blank, repeats_need_blank)
        ext, skip = (torch.from_numpy(x).to(device) for x in extended)  # (batch, states) each
        targets, lengths, target_lengths = (torch.as_tensor(x).to(device).long() for x in (targets, lengths, target_lengths))
        num_states = 2 * targets.shape[1] + 1
        num_ext = 2 * target_lengths + 1  # (batch,) states of each utterance
        valid = torch.arange(num_states, device=device) < num_ext[:, None]  # (batch, states)
        alpha = torch.full((batch, num_states), NEG_INF, device=device)  # (batch, states) best path score so far
        if frames:
            first = log_probs[:, 0].float().gather(1, ext)
            alpha[:, :2] = first[:, :2]
            alpha.masked_fill_(~valid, NEG_INF)
        back = torch.zeros(frames, batch, num_states, dtype=torch.int8, device=device)  # 0 stay, 1 or 2 states back
        dead = torch.full((batch, 2), NEG_INF, device=device)
        for t in range(1, frames):
            prev = torch.cat([dead, alpha], dim=1)  # (batch, 2 + states)
            from_two = prev[:, :-2].masked_fill(~skip, NEG_INF)
            best, step = torch.stack([alpha, prev[:, 1:-1], from_two]).max(dim=0)  # (batch, states); ties: the stay
            moved = best.add_(log_probs[:, t].float().gather(1, ext)).masked_fill_(~valid, NEG_INF)
            running = (t < lengths)[:, None]
            alpha = torch.where(running, moved, alpha)
            back[t] = step.to(torch.int8)
        # the path ends in the last label or the blank after it
        last = (num_ext - 1)[:, None]
        ends = torch.cat([alpha.gather(1, last), alpha.gather(1, (last - 1).clamp(min=0))], dim=1)  # (batch, 2)
        ends[:, 1].masked_fill_(target_lengths == 0, NEG_INF)
        score, which = ends.max(dim=1)
        state = last.squeeze(1) - which  # (batch,)
        states = torch.full((batch, frames), -1, dtype=torch.long, device=device)
        for t in range(frames - 1, -1, -1):
            running = t < lengths
            states[:, t] = torch.where(running, state, -1)
            if t:
                state = torch.where(running, state - back[t].gather(1, state[:, None]).squeeze(1).long(), state)
        score = torch.where(min_frames(targets, target_lengths, repeats_need_blank) <= lengths, score, NEG_INF)
        states = torch.where((score > NEG_INF)[:, None], states, -1)  # no path: all -1
        path = torch.where(states >= 0, ext.gather(1, states.clamp(min=0)), -1)
        return (path, score, states) if return_states else (path, score)


@dataclass
class Span:
    """A token or a word, where it was spoken."""

    text: str
    start: float  # s, from the start of the audio
    end: float  # s
    confidence: float  # mean posterior of its label over its frames (a word: mean over its tokens)


@dataclass
class Alignment:
    """One utterance's transcript, aligned."""

    id: str
    tokens: list[Span] = field(default_factory=list)  # characters or phones, spaces left out
    words: list[Span] = field(default_factory=list)  # empty where the tokenizer has no words (phones)
    score: float = 0.0  # ln P of the best path
    num_frames: int = 0


def token_frames(path: Array, blank: int = BLANK_ID) -> list[tuple[int, int, int]]:
    """The tokens on one utterance's path (frames,) (-1 past its end): (label, first frame, end
    frame) each, in order. A new token starts where the path enters a label state: after a
    blank, at another label, or at the same label after a blank."""
    labels = path.tolist()
    spans: list[tuple[int, int, int]] = []
    previous = blank
    for t, label in enumerate(labels):
        if label < 0:
            break
        if label != blank:
            if label != previous:
                spans.append((label, t, t + 1))
            else:
                spans[-1] = (label, spans[-1][1], t + 1)
        previous = label
    return spans


def label_runs(states: Array) -> list[tuple[int, int, int]]:
    """One utterance's path as states (frames,) (2i + 1 for label i, even for blanks, -1 past its
    end) -> (label index, first frame, end frame) for each label, in order."""
    runs: list[tuple[int, int, int]] = []
    previous = -1
    for t, state in enumerate(states.tolist()):
        if state < 0:
            break
        if state % 2:
            if state != previous:
                runs.append((state // 2, t, t + 1))
            else:
                runs[-1] = (state // 2, runs[-1][1], t + 1)
        previous = state
    return runs


def share_repeats(runs: list[tuple[int, int, int]], labels: list[int]) -> list[tuple[int, int, int]]:
    """Label runs (`label_runs`) with each group of adjacent runs of one label (no blank between,
    as the frame topology allows: "next to", "hello") sharing its frames evenly. Any split of
    such a group scores the same, so Viterbi's own choice (the first label as short as it can
    be) is arbitrary; the even split is the neutral one among those equal paths."""
    out = list(runs)
    i = 0
    while i < len(out):
        j = i
        while j + 1 < len(out) and labels[out[j + 1][0]] == labels[out[i][0]] and out[j + 1][1] == out[j][2]:
            j += 1
        if j > i:
            first, end, count = out[i][1], out[j][2], j - i + 1
            edges = [first + round(k * (end - first) / count) for k in range(count + 1)]
            if all(b > a for a, b in zip(edges, edges[1:])):  # every label keeps a frame
                for k in range(count):
                    out[i + k] = (out[i + k][0], edges[k], edges[k + 1])
        i = j + 1
    return out


def word_index(labels: list[int], separator: int | None) -> list[int] | None:
    """Each label's word, counted from 0, or -1 for a separator (a character model's space);
    None where there is no separator (phones: no words)."""
    if separator is None:
        return None
    index, word, in_word = [], -1, False
    for label in labels:
        if label == separator:
            index.append(-1)
            in_word = False
            continue
        if not in_word:
            word, in_word = word + 1, True
        index.append(word)
    return index


def spans_of(
    states: Array,
    labels: list[int],
    log_probs: Array,
    symbols: list[str],
    frame_start: list[float],
    frame_end: list[float],
    words_of: list[int] | None = None,
    even_repeats: bool = False,
) -> tuple[list[Span], list[Span]]:
    """One utterance's path as states (frames,) through its `labels`, and the log-probs (frames,
    vocab) it was found in -> its token and word spans. frame_start / frame_end: each frame's
    time span in seconds; words_of: each label's word, -1 for a separator, which gets no span
    (`word_index`); None: no words. even_repeats: adjacent runs of one label share their frames
    evenly (`share_repeats`: the frame topology's ties)."""
    tokens: list[Span] = []
    words: list[Span] = []
    word: list[Span] = []

    def end_word() -> None:
        if word:
            confidence = sum(s.confidence for s in word) / len(word)
            words.append(Span("".join(s.text for s in word), word[0].start, word[-1].end, confidence))
            word.clear()

    current = None
    runs = label_runs(states)
    for i, first, end in share_repeats(runs, labels) if even_repeats else runs:
        label = labels[i]
        which = words_of[i] if words_of is not None else None
        if which is not None and which != current:
            end_word()
            current = which
        if which == -1:
            continue
        confidence = _mean_posterior(log_probs[first:end, label])
        span = Span(symbols[label], frame_start[first], frame_end[end - 1], confidence)
        tokens.append(span)
        if which is not None:
            word.append(span)
    end_word()
    return tokens, words


def _mean_posterior(log_probs: Array) -> float:
    """The mean of exp(log_probs (frames,)) in float32, in the array's own library (numpy and
    torch may round the last bit differently)."""
    if is_tensor(log_probs):
        return float(log_probs.float().exp().mean())
    return float(np.exp(log_probs.astype(np.float32, copy=False)).mean(dtype=np.float32))


def _cpu(x: Array) -> Array:
    return x.cpu() if is_tensor(x) else x


def _padded(label_lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Label lists -> (batch, max_labels) int64 padded with 0, and their lengths (batch,)."""
    lengths = np.array([len(labels) for labels in label_lists], np.int64)
    targets = np.zeros((len(label_lists), int(lengths.max(initial=0))), np.int64)
    for b, labels in enumerate(label_lists):
        targets[b, : len(labels)] = labels
    return targets, lengths


def _without_separators(labels: list[int], words_of: list[int] | None) -> tuple[list[int], list[int] | None]:
    """A transcript's labels and their words (`word_index`) with the word separators left out."""
    if words_of is None:
        return labels, None
    kept = [i for i, w in enumerate(words_of) if w >= 0]
    return [labels[i] for i in kept], [words_of[i] for i in kept]


def align_log_probs(
    log_probs: Array,
    lengths: Array,
    targets: Array,
    target_lengths: Array,
    ids: list[str],
    symbols: list[str],
    frame_times,
    space: str | None,
    blank: int = BLANK_ID,
    scores: Array | None = None,
    frame_log_probs: Array | None = None,
) -> tuple[list[Alignment], list[tuple[str, str]]]:
    """A batch's alignments: log_probs (batch, frames, vocab), lengths (batch,), targets (batch,
    max_labels), target_lengths (batch,), ids (batch,) -> the alignments of the utterances that
    can be aligned, and (id, reason) for those that cannot (an empty transcript, or more labels
    and repeats than frames). frame_times: `FeatureExtractor.frame_times`. scores: what the
    search scores paths with, if not the log-probs (a label-prior model's adjusted ones);
    confidences are posteriors either way. numpy arrays or torch tensors (searched as
    `ctc_viterbi` searches them).

    frame_log_probs (batch, frames, vocab): a frame head's per-frame classification of the token
    being spoken (blank: none, silence), where the model has one (`model.frame_head`). Then the
    path is found in them instead, with the frame topology: the word separators are left out of
    the transcript (the silence between words is the optional blank), repeats need no blank
    between them, and the confidences are the frame head's posteriors."""
    separator = symbols.index(space) if space is not None else None
    label_lists = [targets[b, :n].tolist() for b, n in enumerate(target_lengths.tolist())]
    words_of = [word_index(labels, separator) for labels in label_lists]
    repeats_need_blank = frame_log_probs is None
    if frame_log_probs is not None:  # the separators leave the transcript; the search and the confidences read the frame head
        label_lists, words_of = zip(*(_without_separators(labels, of) for labels, of in zip(label_lists, words_of)))
        targets, target_lengths = _padded(label_lists)
        log_probs, scores = frame_log_probs, None
    search = log_probs if scores is None else scores
    _, score, states = ctc_viterbi(search, lengths, targets, target_lengths, blank, repeats_need_blank=repeats_need_blank, return_states=True)
    states, score, log_probs = _cpu(states), score.tolist(), _cpu(log_probs)
    starts, ends = frame_times(log_probs.shape[1])
    needed = min_frames(_cpu(targets), _cpu(target_lengths), repeats_need_blank).tolist()
    what = "labels, and a blank between repeats" if repeats_need_blank else "one per label"
    alignments, failed = [], []
    for b, utt in enumerate(ids):
        frames, labels = int(lengths[b]), int(target_lengths[b])
        if labels == 0:
            failed.append((utt, f"{utt}: empty transcript: nothing to align"))
        elif score[b] == NEG_INF:
            failed.append((utt, f"{utt}: the transcript needs {needed[b]} frames ({what}) but the audio has {frames}"))
        else:
            tokens, words = spans_of(
                states[b], label_lists[b], log_probs[b, :frames], symbols, starts, ends, words_of[b], not repeats_need_blank
            )
            alignments.append(Alignment(utt, tokens, words, score[b], frames))
    return alignments, failed


# ---- long recordings: a window of states that moves with the path ------------------------------


def _viterbi_window_kernel(lp, ext, skip, free, garbage, window, back, starts):
    """The CTC Viterbi of one utterance over a window of `window` states that only moves forward:
    lp (frames, vocab) f32, ext (states,) the labels of the states, skip (states,) whether a
    state may be entered from two back, free (states,) blank states that may also absorb any
    frame at ln P `garbage` (speech the transcript does not cover, between its segments). Writes back (frames, window) int8 (0 stay, 1 or 2 states
    back) and starts (frames,) the window's first state at each frame; returns (the best end
    state, or -1 where neither end state is in the window; its score). After each frame the
    window moves so that the best state sits a quarter into it (never backwards)."""
    frames = lp.shape[0]
    num_states = ext.shape[0]
    neg = np.float32(-np.inf)
    alpha = np.full(window, neg, np.float32)
    new = np.empty(window, np.float32)
    lo = 0
    alpha[0] = max(lp[0, ext[0]], garbage) if free[0] else lp[0, ext[0]]
    if num_states > 1 and window > 1:
        alpha[1] = lp[0, ext[1]]
    starts[0] = 0
    for j in range(window):
        back[0, j] = 0
    for t in range(1, frames):
        for j in range(window):
            s = lo + j
            if s >= num_states:
                new[j] = neg
                back[t, j] = 0
                continue
            best, step = alpha[j], 0
            if j >= 1 and alpha[j - 1] > best:
                best, step = alpha[j - 1], 1
            if j >= 2 and skip[s] and alpha[j - 2] > best:
                best, step = alpha[j - 2], 2
            emit = lp[t, ext[s]]
            if free[s] and garbage > emit:
                emit = garbage
            new[j] = best + emit
            back[t, j] = step
        starts[t] = lo
        # move the window: the best state a quarter in, the window's end not past the last state
        top = 0
        for j in range(window):
            if new[j] > new[top]:
                top = j
        shift = min(max(lo + top - window // 4, lo), max(num_states - window, lo)) - lo
        for j in range(window):
            alpha[j] = new[j + shift] if j + shift < window else neg
        lo += shift
    end, score = -1, neg
    for s in (num_states - 1, num_states - 2):
        if 0 <= s - lo < window and s >= 0 and alpha[s - lo] > score:
            end, score = s, alpha[s - lo]
    return end, score


_viterbi_window = None  # compiled on first use


def ctc_viterbi_long(
    log_probs: Array, target: Array, window: int = 2048, blank: int = BLANK_ID,
    free: Array | None = None, garbage: float = NEG_INF, return_states: bool = False,
) -> tuple[Array, float] | tuple[Array, float, Array]:
    """`ctc_viterbi` for one long utterance in memory that grows with frames × `window`, not
    frames × labels: log_probs (frames, vocab), target (labels,) -> (path (frames,) the label of
    each frame, score). Only `window` consecutive states of the transcript are alive at a time,
    and the window only moves forward, keeping the best state a quarter into it; where the best
    path stays inside it (a window of 2048 states is about 1000 characters of slack), this is the
    full Viterbi's answer. A passage of the transcript missing from the audio longer than about
    three quarters of the window makes the window lose the path; then it is doubled and the
    search run again. The score is -inf where the transcript cannot fit the audio at all. CPU,
    compiled by numba.

    free (2 * labels + 1,) bool: blank states (between the transcript's segments, before and
    after it) that may also hold any frame at ln P `garbage`, a filler for speech the transcript
    does not cover, which would otherwise be squeezed into the neighbouring words; the path's
    label there is blank (see `unaligned_speech`). return_states: also the state of each frame
    (frames,), -1 where there is no path. numpy arrays in, numpy arrays out; torch tensors in,
    CPU tensors out."""
    path, score, states = _viterbi_long(_numpy(log_probs, np.float32), _numpy(target, np.int64), window, blank, free, garbage)
    if is_tensor(log_probs):
        import torch

        path, states = torch.from_numpy(path), torch.from_numpy(states)
    return (path, score, states) if return_states else (path, score)


def _viterbi_long(
    lp: np.ndarray, labels: np.ndarray, window: int, blank: int, free: Array | None, garbage: float
) -> tuple[np.ndarray, float, np.ndarray]:
    """`ctc_viterbi_long` on numpy arrays: lp (frames, vocab) f32, labels (labels,) int64 ->
    (path (frames,), score, states (frames,))."""
    global _viterbi_window
    if _viterbi_window is None:
        _viterbi_window = njit(_viterbi_window_kernel)
    frames = lp.shape[0]
    ext, skip = _extended(labels, blank, repeats_need_blank=True)
    none = np.full(frames, -1, np.int64)
    if frames == 0:
        return none, NEG_INF, none
    window = max(min(window, len(ext)), 1)
    free_states = np.zeros(len(ext), np.bool_) if free is None else _numpy(free, np.bool_)
    while True:  # a window that lost the path is doubled, as ctc-segmentation does, until it holds every state
        back = np.empty((frames, window), np.int8)
        starts = np.empty(frames, np.int64)
        end, score = _viterbi_window(lp, ext, skip, free_states, np.float32(garbage), window, back, starts)
        if (end >= 0 and math.isfinite(score)) or window == len(ext):
            break
        window = min(2 * window, len(ext))
    if end < 0 or not math.isfinite(score):
        return none, NEG_INF, none
    states = np.empty(frames, np.int64)
    state = end
    for t in range(frames - 1, -1, -1):
        states[t] = state
        state -= int(back[t, state - starts[t]])
    return ext[states], float(score), states


@dataclass
class Segment:
    """A piece of a long transcript (a line of it), where it was found in the audio."""

    text: str
    start: float  # s
    end: float  # s
    confidence: float  # exp of the worst mean ln P over any `window` consecutive tokens in it


def segment_spans(
    path: Array, log_probs: Array, texts: list[str], label_ranges: list[tuple[int, int]],
    frame_start: list[float], frame_end: list[float], window: int = 30, blank: int = BLANK_ID,
) -> list[Segment]:
    """Where each segment of a transcript aligned as one (path (frames,), log_probs (frames,
    vocab)) was spoken: segment i is labels label_ranges[i] = (first, end) of the target.

    Its confidence follows ctc-segmentation's idea (Kürzinger et al. 2020: the worst stretch,
    not the average, so that a missing sentence inside a paragraph shows) but counts tokens,
    not frames: each token scores the ln P of its label at its best frame (its CTC spike), and
    the segment the worst mean over `window` consecutive tokens, exponentiated. Counting frames
    would let the blanks between a peaky model's spikes dilute the score of text that is not
    in the audio, which the path must still squeeze in somewhere. The window's default, 30, is
    ctc-segmentation's (`score_min_mean_over_L`)."""
    spans = token_frames(path, blank)  # one per label of the target, in order
    token_logp = np.array([float(log_probs[first:end, label].max()) for label, first, end in spans], np.float64)
    sums = np.concatenate([np.zeros(1), token_logp.cumsum()])
    segments = []
    for text, (first, end) in zip(texts, label_ranges):
        width = min(window, end - first)
        means = (sums[first + width : end + 1] - sums[first : end + 1 - width]) / width
        segments.append(Segment(text, frame_start[spans[first][1]], frame_end[spans[end - 1][2] - 1], float(np.exp(means.min()))))
    return segments


def unaligned_speech(
    in_gap: Array, log_probs: Array, frame_start: list[float], frame_end: list[float], min_frames: int,
    garbage: float, blank: int = BLANK_ID,
) -> list[tuple[float, float]]:
    """Speech the transcript does not cover, as (start, end) in seconds: in each run of frames
    the path spends between two segments of the transcript (or before the first, after the last:
    in_gap (frames,) bool), the frames the model does not call blank (ln P(blank) under
    `garbage`), from the first to the last of them, where there are at least `min_frames`."""
    speech = (log_probs[: len(in_gap), blank] < garbage).tolist()
    gap = in_gap.tolist()
    runs, first, last, count = [], None, None, 0
    for t, inside in enumerate(gap + [False]):
        if inside and t < len(speech) and speech[t]:
            first = t if first is None else first
            last, count = t, count + 1
        if not inside:
            if count >= min_frames:
                runs.append((frame_start[first], frame_end[last]))
            first, last, count = None, None, 0
    return runs
