"""Forced alignment: the batched CTC Viterbi against hand-built cases, brute force, one utterance
at a time and torchaudio; spans, times, the writers, and `asr align` end to end."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from asr.align import AlignmentError, ctc_viterbi, spans_of, token_frames, word_index
from asr.config import FeatureConfig
from asr.features import FeatureExtractor

NEG = -30.0


def peaky(frames: list[list[float]]) -> torch.Tensor:
    """(frames, vocab) rows of probabilities -> log-probs."""
    return torch.tensor(frames).clamp(min=1e-12).log()


def collapse(labels: tuple[int, ...], blank: int = 0) -> list[int]:
    out, previous = [], blank
    for c in labels:
        if c != blank and c != previous:
            out.append(c)
        previous = c
    return out


def path_score(lp: torch.Tensor, path: list[int]) -> float:
    return float(sum(lp[t, c] for t, c in enumerate(path)))


def test_repeats_need_a_blank_between_them():
    # "a a" in three frames: the only path is a, blank, a, however much the middle frame wants "a"
    lp = peaky([[0.1, 0.9], [0.05, 0.95], [0.1, 0.9]])[None]
    path, score = ctc_viterbi(lp, torch.tensor([3]), torch.tensor([[1, 1]]), torch.tensor([2]))
    assert path[0].tolist() == [1, 0, 1]
    assert score[0] == pytest.approx(path_score(lp[0], [1, 0, 1]))
    # in two frames it cannot fit
    _, score = ctc_viterbi(lp[:, :2], torch.tensor([2]), torch.tensor([[1, 1]]), torch.tensor([2]))
    assert score[0] == -math.inf


def test_a_label_squeezed_into_one_frame():
    # "a b c" in three frames: each label gets exactly one frame, blank none, whatever blank's probability
    lp = peaky([[0.8, 0.1, 0.05, 0.05], [0.8, 0.05, 0.1, 0.05], [0.8, 0.05, 0.05, 0.1]])[None]
    path, _ = ctc_viterbi(lp, torch.tensor([3]), torch.tensor([[1, 2, 3]]), torch.tensor([3]))
    assert path[0].tolist() == [1, 2, 3]
    assert token_frames(path[0]) == [(1, 0, 1), (2, 1, 2), (3, 2, 3)]


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_brute_force_over_all_alignments(seed):
    g = torch.Generator().manual_seed(seed)
    vocab, frames = 3, 6
    lp = torch.randn(frames, vocab, generator=g).mul(2).log_softmax(-1)
    target = [[1], [1, 2], [2, 2], [1, 2, 1], [1, 1, 2]][seed % 5]
    best, best_path = -math.inf, None
    for labels in itertools.product(range(vocab), repeat=frames):
        if collapse(labels) == target:
            s = path_score(lp, list(labels))
            if s > best:
                best, best_path = s, list(labels)
    path, score = ctc_viterbi(lp[None], torch.tensor([frames]), torch.tensor([target]), torch.tensor([len(target)]))
    assert score[0] == pytest.approx(best, abs=1e-5)
    assert path[0].tolist() == best_path
    assert collapse(tuple(path[0].tolist())) == target


@pytest.mark.parametrize("seed", range(4))
def test_compiled_cpu_search_equals_the_torch_one(seed):
    # ctc_viterbi on the CPU (numba, reachable states only) against the torch code CUDA runs
    from asr.align import ctc_viterbi_torch

    g = torch.Generator().manual_seed(seed)
    vocab, lengths = 7, [60, 23, 8, 41, 5, 2]
    texts = [[1, 2, 3, 3, 4, 1, 1], [5, 1, 2, 2], [2, 2, 2], [1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6], [6], [1, 1]]
    lp = torch.randn(len(lengths), max(lengths), vocab, generator=g).mul(3).log_softmax(-1)
    targets = torch.nn.utils.rnn.pad_sequence([torch.tensor(t) for t in texts], batch_first=True)
    args = (lp, torch.tensor(lengths), targets, torch.tensor([len(t) for t in texts]))
    compiled_path, compiled_score = ctc_viterbi(*args, compiled=True)
    torch_path, torch_score = ctc_viterbi_torch(*args)
    assert compiled_path.tolist() == torch_path.tolist()
    assert compiled_score.tolist() == pytest.approx(torch_score.tolist(), abs=1e-4)
    assert compiled_score[5] == -math.inf  # "a a" in 2 frames cannot fit


def frame_paths(target: list[int], frames: int) -> list[list[int]]:
    """Every state sequence of the frame topology: blank (0) runs optional before, between and
    after the labels, each label at least one frame, repeats needing no blank."""
    paths = []
    for sizes in itertools.product(range(frames + 1), repeat=2 * len(target) + 1):
        if sum(sizes) != frames or any(sizes[i] == 0 for i in range(1, len(sizes), 2)):
            continue
        path = []
        for i, size in enumerate(sizes):
            path += [target[i // 2] if i % 2 else 0] * size
        paths.append(path)
    return paths


@pytest.mark.parametrize("seed", range(5))
def test_frame_topology_agrees_with_brute_force(seed):
    # repeats_need_blank=False: a frame classifier's topology, "a a" may run a a a with no blank
    from asr.align import ctc_viterbi_torch, label_runs

    g = torch.Generator().manual_seed(seed)
    vocab, frames = 3, 6
    lp = torch.randn(frames, vocab, generator=g).mul(2).log_softmax(-1)
    target = [[1], [1, 2], [2, 2], [1, 2, 1], [1, 1, 2]][seed]
    best = max(path_score(lp, p) for p in frame_paths(target, frames))
    args = (lp[None], torch.tensor([frames]), torch.tensor([target]), torch.tensor([len(target)]))
    path, score, states = ctc_viterbi(*args, repeats_need_blank=False, return_states=True)
    assert score[0] == pytest.approx(best, abs=1e-5)
    assert path_score(lp, path[0].tolist()) == pytest.approx(best, abs=1e-5)
    assert [target[i] for i, _, _ in label_runs(states[0])] == target  # every label gets its own frames
    torch_path, torch_score, torch_states = ctc_viterbi_torch(*args, repeats_need_blank=False, return_states=True)
    assert torch_states.tolist() == states.tolist() and torch_score.tolist() == pytest.approx(score.tolist(), abs=1e-5)


def test_frame_topology_fits_repeats_in_as_many_frames_as_labels():
    lp = peaky([[0.1, 0.9], [0.1, 0.9]])[None]
    _, ctc_score = ctc_viterbi(lp, torch.tensor([2]), torch.tensor([[1, 1]]), torch.tensor([2]))
    path, score, states = ctc_viterbi(lp, torch.tensor([2]), torch.tensor([[1, 1]]), torch.tensor([2]), repeats_need_blank=False, return_states=True)
    assert ctc_score[0] == -math.inf and score[0] == pytest.approx(2 * math.log(0.9))
    assert path[0].tolist() == [1, 1] and states[0].tolist() == [1, 3]


def test_frame_head_alignment_leaves_out_separators_and_times_words():
    # "ab a": a frame classifier says a a b b, silence, a a; the space gets no frames of its own
    from asr.align import align_log_probs

    symbols = ["<blank>", " ", "a", "b"]
    said = [2, 2, 3, 3, 0, 0, 2, 2]
    frame_lp = torch.full((1, 8, 4), math.log(0.02))
    frame_lp[0, torch.arange(8), torch.tensor(said)] = math.log(0.94)
    ctc_lp = torch.full((1, 8, 4), math.log(0.25))  # CTC's log-probs, unused for the path
    times = lambda n: ([0.03 * t for t in range(n)], [0.03 * (t + 1) for t in range(n)])  # noqa: E731
    args = (ctc_lp, torch.tensor([8]), torch.tensor([[2, 3, 1, 2]]), torch.tensor([4]), ["u"], symbols, times, " ")
    (alignment,), failed = align_log_probs(*args, frame_log_probs=frame_lp)
    assert failed == []
    assert [(w.text, round(w.start, 2), round(w.end, 2)) for w in alignment.words] == [("ab", 0.0, 0.12), ("a", 0.18, 0.24)]
    assert [t.text for t in alignment.tokens] == ["a", "b", "a"]
    assert alignment.words[0].confidence == pytest.approx(0.94)
    # too few frames for its labels: a named failure, not an exception
    short = (ctc_lp[:, :2], torch.tensor([2]), *args[2:])
    assert align_log_probs(*short, frame_log_probs=frame_lp[:, :2])[1] == [("u", "u: the transcript needs 3 frames (one per label) but the audio has 2")]


def test_batched_equals_one_at_a_time():
    g = torch.Generator().manual_seed(7)
    vocab = 6
    lengths = [40, 17, 9, 30, 12]
    texts = [[1, 2, 3, 3, 4], [5, 1], [2, 2, 2], [1, 2, 3, 4, 5, 1, 2], []]
    lp = torch.randn(len(lengths), max(lengths), vocab, generator=g).mul(3).log_softmax(-1)
    targets = torch.nn.utils.rnn.pad_sequence([torch.tensor(t, dtype=torch.long) for t in texts], batch_first=True)
    path, score = ctc_viterbi(lp, torch.tensor(lengths), targets, torch.tensor([len(t) for t in texts]))
    for b, (n, text) in enumerate(zip(lengths, texts)):
        alone_path, alone_score = ctc_viterbi(lp[b : b + 1, :n], torch.tensor([n]), torch.tensor([text or [0]])[:, : len(text)], torch.tensor([len(text)]))
        assert path[b, :n].tolist() == alone_path[0].tolist()
        assert (path[b, n:] == -1).all()
        assert score[b] == pytest.approx(float(alone_score[0]), abs=1e-5)
        assert collapse(tuple(path[b, :n].tolist())) == text


def test_matches_torchaudio_forced_align():
    functional = pytest.importorskip("torchaudio.functional")
    g = torch.Generator().manual_seed(3)
    for frames, text in [(50, [1, 2, 3, 3, 4, 1]), (20, [2]), (33, [4, 4, 4, 1])]:
        lp = torch.randn(1, frames, 6, generator=g).mul(2).log_softmax(-1)
        target = torch.tensor([text], dtype=torch.int32)
        theirs, their_scores = functional.forced_align(lp, target, blank=0)
        ours, score = ctc_viterbi(lp, torch.tensor([frames]), target.long(), torch.tensor([len(text)]))
        assert ours[0].tolist() == theirs[0].tolist()
        assert float(score[0]) == pytest.approx(float(their_scores[0].sum()), abs=1e-4)


def test_spans_times_and_words():
    # "ab a" over 10 frames of 30 ms: a b | a, with blanks between
    symbols = ["<blank>", " ", "a", "b"]
    labels = [2, 3, 1, 2]
    path = torch.tensor([0, 2, 2, 3, 0, 1, 0, 2, 0, 0])
    states = torch.tensor([0, 1, 1, 3, 4, 5, 6, 7, 8, 8])  # 2i + 1 for label i
    lp = torch.full((10, 4), -5.0)
    lp[torch.arange(10), path] = -0.1
    starts = [0.03 * t for t in range(10)]
    ends = [0.03 * (t + 1) for t in range(10)]
    assert word_index(labels, 1) == [0, 0, -1, 1]
    tokens, words = spans_of(states, labels, lp, symbols, starts, ends, word_index(labels, 1))
    assert [(s.text, round(s.start, 2), round(s.end, 2)) for s in tokens] == [("a", 0.03, 0.09), ("b", 0.09, 0.12), ("a", 0.21, 0.24)]
    assert [(w.text, round(w.start, 2), round(w.end, 2)) for w in words] == [("ab", 0.03, 0.12), ("a", 0.21, 0.24)]
    assert all(s.confidence == pytest.approx(math.exp(-0.1)) for s in tokens)
    # without a word separator (phones) there are no words, and the separator is a token
    tokens, words = spans_of(states, labels, lp, symbols, starts, ends, word_index(labels, None))
    assert words == [] and [s.text for s in tokens] == ["a", "b", " ", "a"]


def test_frame_times_are_centred_on_the_stacked_analysis_frames():
    stacked = FeatureExtractor(FeatureConfig(stack_frames=3, subsample=3))
    starts, ends = stacked.frame_times(3)
    assert stacked.frame_seconds == pytest.approx(0.03)
    # output frame i stacks analysis frames 3i .. 3i+2, centred on samples (3i + 1) * 160
    assert [round((s + e) / 2, 4) for s, e in zip(starts[1:], ends[1:])] == [0.04, 0.07]
    assert starts[0] == 0.0 and ends[0] == pytest.approx(0.025)
    plain = FeatureExtractor(FeatureConfig(stack_frames=1, subsample=1, kaldi_compat=True))
    starts, ends = plain.frame_times(2)  # Kaldi: a frame starts at t * shift, 25 ms long
    assert [round((s + e) / 2, 4) for s, e in zip(starts, ends)] == [0.0125, 0.0225]


def test_long_mode_equals_the_full_viterbi_where_both_fit():
    from asr.align import ctc_viterbi_long

    g = torch.Generator().manual_seed(11)
    vocab, frames, labels = 8, 400, 60
    target = torch.randint(1, vocab, (labels,), generator=g)
    # a peaky model's output that follows the transcript, with noise: the path is clear
    lp = torch.randn(frames, vocab, generator=g)
    lp[:, 0] += 3.0
    at = torch.linspace(5, frames - 5, labels).long()
    lp[at, target] += 8.0
    lp = lp.log_softmax(-1)
    full_path, full_score = ctc_viterbi(lp[None], torch.tensor([frames]), target[None], torch.tensor([labels]))
    for window in (2 * labels + 1, 64, 24):  # all states, then windows far smaller than the transcript
        path, score = ctc_viterbi_long(lp, target, window=window)
        assert path.tolist() == full_path[0].tolist(), window
        assert score == pytest.approx(float(full_score[0]), abs=1e-3)
    # random log-probs: with every state in the window it is the same search
    lp = torch.randn(50, 5, generator=g).mul(2).log_softmax(-1)
    target = torch.tensor([1, 2, 2, 3, 1, 4])
    full_path, full_score = ctc_viterbi(lp[None], torch.tensor([50]), target[None], torch.tensor([6]))
    path, score = ctc_viterbi_long(lp, target, window=13)
    assert path.tolist() == full_path[0].tolist() and score == pytest.approx(float(full_score[0]), abs=1e-4)
    # a transcript longer than the frames can hold has no path
    assert ctc_viterbi_long(lp[:5], target)[1] == -math.inf


def test_segment_confidence_finds_text_that_is_not_in_the_audio():
    from asr.align import ctc_viterbi_long, segment_spans

    # three segments of labels; the audio says the first and the third, nothing of the second
    said = [[1, 2, 3, 4], [5, 6, 7], [2, 4, 1, 3]]
    frames_per_label, gap = 4, 10
    labels, ranges, rows = [], [], []
    for i, seg in enumerate(said):
        ranges.append((len(labels), len(labels) + len(seg)))
        labels += seg
        if i != 1:  # spoken: each label peaks on one frame, blank around it
            for c in seg:
                rows += [0] * (frames_per_label - 1) + [c]
        rows += [0] * gap
    lp = torch.full((len(rows), 8), -9.0)
    lp[torch.arange(len(rows)), torch.tensor(rows)] = -0.01
    path, score = ctc_viterbi_long(lp, torch.tensor(labels), window=20)
    assert score > -math.inf
    full_path, full_score = ctc_viterbi(lp[None], torch.tensor([len(rows)]), torch.tensor([labels]), torch.tensor([len(labels)]))
    assert path.tolist() == full_path[0].tolist()
    # a window too small to hop over the missing segment loses the path, and is doubled until it does not
    small_path, small_score = ctc_viterbi_long(lp, torch.tensor(labels), window=8)
    assert small_path.tolist() == full_path[0].tolist() and small_score == pytest.approx(float(full_score[0]), abs=1e-3)
    starts = [0.03 * t for t in range(len(rows))]
    ends = [0.03 * (t + 1) for t in range(len(rows))]
    segments = segment_spans(path, lp, ["one", "two", "three"], ranges, starts, ends, window=3)
    assert [s.text for s in segments] == ["one", "two", "three"]
    assert segments[0].confidence > 0.9 and segments[2].confidence > 0.9
    assert segments[1].confidence < 1e-3  # squeezed into frames that say blank
    assert segments[0].end <= segments[1].start <= segments[1].end <= segments[2].start


def test_speech_the_transcript_does_not_cover_is_reported():
    from asr.align import ctc_viterbi_long, unaligned_speech

    # "1 2", then 20 frames of speech nobody transcribed (blank improbable, "2" fairly probable
    # all along), then "3 4"; the transcript in two segments, "1 2" and "3 4"
    rows = [0, 1, 0, 2, 0, 0] + [5, 6] * 10 + [0, 0, 3, 0, 4, 0]
    lp = torch.full((len(rows), 8), -9.0)
    lp[torch.arange(len(rows)), torch.tensor(rows)] = -0.01
    lp[6:26, 2] = -3.0
    target = torch.tensor([1, 2, 3, 4])
    free = torch.zeros(9, dtype=torch.bool)
    free[[0, 4, 8]] = True  # the blanks before, between the two segments, after
    gap = torch.zeros(9, dtype=torch.bool)
    gap[[0, 4, 8]] = True
    plain, _ = ctc_viterbi_long(lp, target)
    filled, score, states = ctc_viterbi_long(lp, target, free=free, garbage=math.log(0.1), return_states=True)
    assert (plain[6:26] == 2).all()  # without the filler the speech is taken for a long "2"
    assert (filled[6:26] == 0).all() and filled[3] == 2  # with it, "2" where it was said and the filler after
    assert filled.tolist() == [[0, 1, 0, 2, 0, 3, 0, 4, 0][s] for s in states.tolist()]  # the states spell the labels
    times = [0.03 * t for t in range(len(rows) + 1)]
    in_gap = gap[states]
    assert unaligned_speech(in_gap, lp, times[:-1], times[1:], 5, math.log(0.1)) == [(times[6], times[26])]
    assert unaligned_speech(in_gap, lp, times[:-1], times[1:], 21, math.log(0.1)) == []  # shorter than asked for
    # everything transcribed: nothing to report
    said = torch.tensor([0, 1, 0, 2, 0, 3, 0, 4, 0])
    lp = torch.full((9, 8), -9.0)
    lp[torch.arange(9), said] = -0.01
    _, _, states = ctc_viterbi_long(lp, target, free=free, garbage=math.log(0.1), return_states=True)
    assert unaligned_speech(gap[states], lp, times[:9], times[1:10], 1, math.log(0.1)) == []


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_search_on_cuda_equals_the_cpu():
    g = torch.Generator().manual_seed(5)
    lengths = [70, 33, 12]
    texts = [[1, 2, 3, 3, 4, 1], [5, 5, 1], [2]]
    lp = torch.randn(3, 70, 7, generator=g).mul(3).log_softmax(-1)
    targets = torch.nn.utils.rnn.pad_sequence([torch.tensor(t) for t in texts], batch_first=True)
    args = (torch.tensor(lengths), targets, torch.tensor([len(t) for t in texts]))
    cpu_path, cpu_score = ctc_viterbi(lp, *args)
    gpu_path, gpu_score = ctc_viterbi(lp.cuda(), *(a.cuda() for a in args))  # on CUDA: the torch code
    assert gpu_path.device.type == "cuda"
    assert gpu_path.cpu().tolist() == cpu_path.tolist()
    assert gpu_score.cpu().tolist() == pytest.approx(cpu_score.tolist(), abs=1e-4)


def test_adjacent_runs_of_one_label_share_their_frames_evenly():
    from asr.align import share_repeats

    # labels t t o (as in "at to"): the path gave the first t one frame and the second five;
    # every split of those six frames scores the same, so they are shared 3 / 3
    runs = [(0, 0, 1), (1, 1, 6), (2, 6, 8)]
    assert share_repeats(runs, [5, 5, 7]) == [(0, 0, 3), (1, 3, 6), (2, 6, 8)]
    # a blank between them (a gap in frames) or different labels: left alone
    assert share_repeats([(0, 0, 1), (1, 2, 6)], [5, 5]) == [(0, 0, 1), (1, 2, 6)]
    assert share_repeats(runs, [5, 6, 7]) == runs
    # three in a row over 7 frames: 2 / 3 / 2 or so, each keeps at least one frame
    assert [end - first for _, first, end in share_repeats([(0, 0, 1), (1, 1, 2), (2, 2, 7)], [4, 4, 4])] == [2, 3, 2]
