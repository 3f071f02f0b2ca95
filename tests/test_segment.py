"""Long recordings cut into segments (asr/segment.py): runs of speech from VAD probabilities,
the streaming segmenter on signals with known pauses, windows and their stitching, block reading."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import AudioError
from asr.segment import VAD_CHUNK, SegmentError, SegmentOptions, Segmenter, cut_points, hysteresis, read_blocks, speech_runs, stitch

RATE = 16000


def test_speech_runs_join_short_gaps_and_drop_short_bursts():
    speech = np.array([0, 1, 1, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1], bool)
    assert speech_runs(speech, min_pause=2, min_speech=1) == [(1, 6), (9, 10), (14, 17)]
    assert speech_runs(speech, min_pause=2, min_speech=2) == [(1, 6), (14, 17)]
    assert speech_runs(speech, min_pause=4, min_speech=1) == [(1, 10), (14, 17)]
    assert speech_runs(np.zeros(5, bool), 2, 1) == []


def test_hysteresis_holds_speech_until_the_probability_falls_well_below_the_threshold():
    probs = np.array([0.1, 0.6, 0.4, 0.36, 0.34, 0.45, 0.7])
    assert hysteresis(probs, 0.5).tolist() == [False, True, True, True, False, False, True]


def test_cut_points_fall_at_the_quietest_chunks_within_the_limits():
    probs = np.ones(100)
    probs[[30, 55, 80]] = 0.2
    cuts = cut_points(probs, 100, max_len=40, min_len=10)
    assert cuts == [30, 55, 80]
    assert all(b - a <= 40 for a, b in zip([0] + cuts, cuts + [100]))
    assert cut_points(np.ones(30), 30, 40, 10) == []


class EnergyVAD:
    """A stand-in for silero-vad on synthetic signals: speech wherever a chunk has energy."""

    def probabilities(self, audio, before):
        num = -(-len(audio) // VAD_CHUNK)
        padded = np.pad(audio, (0, num * VAD_CHUNK - len(audio)))
        return (np.abs(padded.reshape(num, VAD_CHUNK)).max(axis=1) > 1e-3).astype(np.float32)


def bursts(layout):
    """(kind, seconds) pieces -> noise bursts ("s") and silences ("p"), and the bursts' times."""
    rng = np.random.default_rng(0)
    pieces, truth, t = [], [], 0.0
    for kind, seconds in layout:
        n = int(seconds * RATE)
        pieces.append((0.1 * rng.standard_normal(n)).astype(np.float32) if kind == "s" else np.zeros(n, np.float32))
        if kind == "s":
            truth.append((t, t + n / RATE))
        t += n / RATE
    return np.concatenate(pieces), truth


def segment(audio, block, **options):
    options = SegmentOptions(**{"max_segment": 10.0, "block": block, **options})
    segmenter = Segmenter(options, RATE, frame_step=480, vad=EnergyVAD())
    blocks = (audio[i : i + int(block * RATE)] for i in range(0, len(audio), int(block * RATE)))
    return list(segmenter.segments(blocks))


@pytest.mark.parametrize("block", [20.0, 23.7, 200.0])
def test_segments_are_the_speech_between_known_pauses_whatever_the_block_size(block):
    layout = [("p", 1.0), ("s", 3.0), ("p", 0.5), ("s", 2.0), ("p", 0.25), ("s", 1.5), ("p", 2.0), ("s", 4.0), ("p", 0.8)] * 8
    audio, truth = bursts(layout)
    segments = segment(audio, block, pad=0.1)
    spans = [(s.start / RATE, (s.start + len(s.audio)) / RATE) for s in segments]
    # a 0.25 s pause is shorter than min_pause (0.3 s): those two bursts share a segment
    expected = []
    for i, (a, b) in enumerate(truth):
        if expected and a - expected[-1][1] < 0.3:
            expected[-1] = (expected[-1][0], b)
        else:
            expected.append((a, b))
    assert len(spans) == len(expected)
    for (start, end), (a, b) in zip(spans, expected):
        # padded by 0.1 s (three 32 ms chunks), on the VAD's 32 ms grid, the start down to a 30 ms frame step
        assert a - 0.096 - 0.032 - 0.03 <= start <= a
        assert b <= end <= b + 0.096 + 0.032
    for s in segments:
        assert len(s.windows) == 1 and s.windows[0] == (0, len(s.audio))
        np.testing.assert_array_equal(s.audio, audio[s.start : s.start + len(s.audio)])


def test_a_run_longer_than_max_segment_becomes_overlapping_windows_cut_where_it_is_quietest():
    layout = [("p", 0.5)] + [("s", 2.3), ("p", 0.1)] * 12 + [("p", 1.0)]  # 29 s with no pause of min_pause
    audio, _ = bursts(layout)
    [seg] = segment(audio, 60.0, max_segment=10.0, overlap=1.0)
    assert len(seg.windows) >= 3
    assert seg.windows[0][0] == 0 and seg.windows[-1][1] == len(seg.audio)
    for (a0, a1), (b0, b1), cut in zip(seg.windows, seg.windows[1:], seg.cuts):
        assert a1 - a0 <= 10.0 * RATE and b0 % 480 == 0
        assert b0 < cut < a1  # neighbours overlap around each cut
        assert a1 - cut == pytest.approx(RATE, abs=1) and cut - b0 <= RATE + 480
        quiet = seg.start + cut  # cut in one of the 0.1 s gaps between bursts
        assert np.abs(audio[quiet - 100 : quiet + 100]).max() < 1e-3 or np.abs(audio[quiet : quiet + 1]).max() == 0


def test_silence_gives_no_segments_and_options_are_checked():
    assert segment(np.zeros(30 * RATE, np.float32), 20.0) == []
    with pytest.raises(SegmentError, match="max_segment"):
        SegmentOptions(max_segment=3.0, overlap=1.0).check()
    with pytest.raises(SegmentError, match="threshold"):
        SegmentOptions(max_segment=10.0, threshold=1.5).check()


def one_hot(labels, vocab=5, floor=-20.0):
    """A (frames, vocab) log-prob matrix whose best label per frame is `labels`."""
    lp = torch.full((len(labels), vocab), floor)
    lp[torch.arange(len(labels)), torch.tensor(labels)] = 0.0
    return lp


def test_stitch_hands_over_at_a_boundary_both_windows_agree_on():
    # blank 0, word separator 4; the whole segment's best path, and two windows over it that
    # disagree near their edges (where each has the least context)
    whole = [0, 1, 0, 2, 0, 0, 4, 0, 0, 3, 0, 1, 0, 0, 4, 0, 0, 2, 2, 0]
    a = whole[:14] + [3, 3]  # window 1: frames 0-15, wrong over its last two
    b = [1, 1] + whole[10:]  # window 2: frames 8-19, wrong over its first two
    joined, extra, used = stitch([(0, one_hot(a)), (8, one_hot(b))], cuts=[12], num_frames=20, quiet=[0, 4], extra=[one_hot(a) - 1, one_hot(b) - 1])
    assert joined.argmax(-1).tolist() == whole
    assert 10 <= used[0] <= 14
    assert torch.equal(extra, joined - 1)  # the frame head's log-probs joined at the same frame


def test_stitch_keeps_the_planned_cut_without_a_shared_boundary():
    a, b = [1] * 10, [2] * 8
    joined, _, used = stitch([(0, one_hot(a)), (2, one_hot(b))], cuts=[6], num_frames=10, quiet=[0], extra=None)
    assert used == [6]
    assert joined.argmax(-1).tolist() == [1] * 6 + [2] * 4


def write_wav(path, seconds, rate=RATE, channels=1, seed=0):
    samples = (0.1 * np.random.default_rng(seed).standard_normal((int(seconds * rate), channels))).astype(np.float32)
    sf.write(path, samples, rate, subtype="PCM_16")
    return samples


def test_read_blocks_resamples_and_downmixes_like_reading_the_whole_file(tmp_path):
    import soxr

    samples = write_wav(tmp_path / "a.wav", 7.3, rate=44100, channels=2)
    warnings = []
    blocks = list(read_blocks(tmp_path / "a.wav", RATE, 2.0, warnings))
    assert len(blocks) >= 4 and not warnings
    whole = soxr.resample(sf.read(tmp_path / "a.wav", dtype="float32")[0].mean(axis=1), 44100, RATE)
    joined = np.concatenate(blocks)
    assert abs(len(joined) - len(whole)) <= 2
    n = min(len(joined), len(whole))
    assert np.abs(joined[100 : n - 100] - whole[100 : n - 100]).max() < 1e-3
    assert samples.shape == (int(7.3 * 44100), 2)


def test_read_blocks_keeps_what_a_cut_off_file_holds_and_warns_naming_it(tmp_path):
    write_wav(tmp_path / "cut.wav", 10.0)
    data = (tmp_path / "cut.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])  # the header still promises 10 s
    warnings = []
    joined = np.concatenate(list(read_blocks(tmp_path / "cut.wav", RATE, 3.0, warnings)))
    assert 4.9 < len(joined) / RATE < 5.1
    assert len(warnings) == 1 and "cut.wav" in warnings[0] and "cut off" in warnings[0]


def test_read_blocks_refuses_what_cannot_be_read(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 10)
    for name, message in (("empty.wav", "empty file"), ("junk.wav", "unreadable"), ("missing.wav", "no such file")):
        with pytest.raises(AudioError, match=message):
            list(read_blocks(tmp_path / name, RATE, 1.0, []))


def test_silero_finds_the_pauses_between_spoken_sentences(tmp_path):
    """silero-vad itself on eSpeak speech joined with known pauses: one segment per sentence."""
    from asr.data.joined import join_utterances
    from asr.data.synth import synthesize_corpus

    manifests = synthesize_corpus(tmp_path / "corpus", num_utterances=40, seed=0, progress=False, num_workers=1)
    joined = join_utterances(manifests["train"], tmp_path / "long.wav", 60.0, pause=(0.5, 1.2), seed=0)
    audio = sf.read(tmp_path / "long.wav", dtype="float32")[0]
    segmenter = Segmenter(SegmentOptions(max_segment=15.0, block=30.0), RATE, frame_step=480)
    blocks = (audio[i : i + 30 * RATE] for i in range(0, len(audio), 30 * RATE))
    spans = [(s.start / RATE, (s.start + len(s.audio)) / RATE) for s in segmenter.segments(blocks)]
    assert len(spans) == len(joined.times)
    for (start, end), (a, b) in zip(spans, joined.times):
        assert start <= a + 0.05 and end >= b - 0.05  # the words are inside their segment
        assert start >= a - 0.5 and end <= b + 0.5
    assert json.dumps(spans)  # plain floats
