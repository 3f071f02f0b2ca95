"""Long recordings: `asr transcribe` on a corpus's test utterances joined into long files, against
the same model on the utterances one by one, and pocketsphinx 5 on the same files, in one run.

    python scripts/bench_long.py --checkpoint demo_out/run/best.pt --corpus demo_out/corpus \\
        --lm demo_out/lm.arpa --minutes 10,60 [--no-pause 0.3] [--pocketsphinx]

Per file length it joins test.jsonl's utterances (asr/data/joined.py: pauses drawn from
--pause, and a --no-pause share of the joins with none, the utterances trimmed to their words),
then for greedy and (with --lm) beam + LM decoding prints: the WER of the utterances decoded one
by one (the same utterances, in the file's order), the WER of `asr transcribe` on the file, the
difference, `asr transcribe`'s wall time and real-time factor (one thread, model loading
included) and its peak RSS (the child process's, from wait4). --pocketsphinx adds pocketsphinx's
RTF and WER on the shortest file (one thread; its wheel ships an en-us model) and the speed ratio;
--vad-check, silero-vad against webrtcvad (why asr/segment.py uses silero).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asr.data.joined import join_utterances  # noqa: E402


def peak_rss_of(command: list[str]) -> tuple[str, float, float]:
    """Run `command` on one thread: its stdout, wall seconds and peak RSS (MB). The RSS comes from
    /usr/bin/time, which forks a process of its own: wait4 on a child of this (large) process
    would also count the pages the child shared with it between fork and exec."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    with tempfile.NamedTemporaryFile("r") as rss_file, tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        timed = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *command] if os.path.exists("/usr/bin/time") else command
        started = time.perf_counter()
        code = subprocess.run(timed, stdout=out, stderr=err, text=True, env=env).returncode
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if code:
            raise RuntimeError(f"{' '.join(command)} failed:\n{err.read()[-2000:]}")
        rss = float(rss_file.read().split()[-1]) / 1024 if timed is not command else float("nan")
        return out.read(), wall, rss


def transcribe_long(checkpoint: str, wav: Path, decoder: list[str]) -> tuple[str, float, float, list[str]]:
    """`asr transcribe --json` on one file: its text, wall s, peak RSS MB, warnings."""
    stdout, wall, rss = peak_rss_of([sys.executable, "-m", "asr", "transcribe", checkpoint, str(wav), "--json", "--no-progress", "--device", "cpu", *decoder])
    record = json.loads(stdout.splitlines()[-1])
    if "error" in record:
        raise RuntimeError(f"{wav}: {record['error']}")
    return record["text"], wall, rss, record.get("warnings", [])


POCKETSPHINX = """
import sys, wave
from pocketsphinx import Decoder
decoder = Decoder(samprate=16000)  # the en-us acoustic model, dictionary and LM its wheel ships
with wave.open(sys.argv[1], "rb") as f:
    data = f.readframes(f.getnframes())
decoder.start_utt()
for i in range(0, len(data), 32000):  # one second at a time, as from a stream
    decoder.process_raw(data[i : i + 32000], False, False)
decoder.end_utt()
print(decoder.hyp().hypstr if decoder.hyp() else "")
"""


def vad_check(wav: Path, joined, min_pause: float = 0.3) -> None:
    """silero-vad (as asr.segment runs it) against webrtcvad on one joined file and on a minute
    of white noise: pauses found, cuts inside utterances, share of noise heard as speech, RTF."""
    import numpy as np
    import soundfile as sf
    import webrtcvad

    from asr.segment import VAD_CHUNK, VoiceActivity, hysteresis, speech_runs

    audio = sf.read(wav, dtype="float32")[0]
    noise = (0.05 * np.random.default_rng(0).standard_normal(60 * 16000)).astype(np.float32)
    pauses = [(a[1], b[0]) for a, b in zip(joined.times, joined.times[1:]) if b[0] - a[1] >= min_pause + 0.05]
    inside = joined.times

    def report(name, speech_of, frame):  # speech_of(samples) -> bool per `frame` samples
        started = time.perf_counter()
        speech = speech_of(audio)
        seconds = time.perf_counter() - started
        runs = [(a * frame / 16000, b * frame / 16000) for a, b in speech_runs(speech, max(round(min_pause * 16000 / frame), 1), 1)]
        gaps = [(a[1], b[0]) for a, b in zip(runs, runs[1:])]
        found = sum(any(g0 <= p1 and g1 >= p0 for g0, g1 in gaps) for p0, p1 in pauses)
        cuts = sum(any(u0 + 0.05 < g0 and g1 < u1 - 0.05 for u0, u1 in inside) for g0, g1 in gaps)
        heard = speech_of(noise).mean()
        print(f"  {name:<10} pauses >= {min_pause + 0.05:.2f} s found {found}/{len(pauses)}, cuts inside an utterance {cuts}, "
              f"noise heard as speech {heard:.0%}, RTF {seconds / (len(audio) / 16000):.5f}")

    vad = VoiceActivity()
    report("silero", lambda x: hysteresis(vad.probabilities(x, np.zeros(0, np.float32)), 0.5), VAD_CHUNK)
    detector = webrtcvad.Vad(2)

    def webrtc(x):
        pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16).tobytes()
        return np.array([detector.is_speech(pcm[i : i + 960], 16000) for i in range(0, len(pcm) - 959, 960)])

    report("webrtcvad", webrtc, 480)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--corpus", required=True, help="folder with test.jsonl (the built-in corpus: word times for --no-pause)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--lm", help="ARPA LM: also beam + LM (the checkpoint's lm_weight and word_bonus)")
    parser.add_argument("--minutes", default="10,60", help="file lengths, comma-separated")
    parser.add_argument("--pause", default="0.2,1.5", help="pauses drawn uniformly from this range, s")
    parser.add_argument("--no-pause", type=float, default=0.3, help="share of the joins with no pause at all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pocketsphinx", action="store_true", help="also pocketsphinx 5 on the first (shortest) file (pip install pocketsphinx)")
    parser.add_argument("--keep", help="folder to keep the joined files in (default: a temporary one)")
    parser.add_argument("--vad-check", action="store_true", help="also silero-vad against webrtcvad on each file (pip install webrtcvad-wheels)")
    args = parser.parse_args()

    import torch

    from asr.inference import Recognizer
    from asr.metrics import score_wer

    torch.set_num_threads(1)
    manifest = Path(args.corpus) / f"{args.split}.jsonl"
    rows = {json.loads(line)["text"]: json.loads(line) for line in manifest.read_text().splitlines() if line.strip()}
    recognizer = Recognizer.from_checkpoint(args.checkpoint, device="cpu")
    normalize = recognizer.tokenizer.normalize
    decoders = {"greedy": ["--decoder", "greedy"]}
    if args.lm:
        decoders["beam+LM"] = ["--decoder", "beam", "--lm", args.lm]
    # the utterances one by one, with each decoder (the per-utterance baseline)
    audio_of = {text: str(Path(args.corpus) / row["audio"]) for text, row in rows.items()}
    single: dict[str, dict[str, str]] = {}
    base = recognizer.config.decode
    for name in decoders:
        recognizer.set_decoder(replace(base, decoder="greedy", lm=None) if name == "greedy" else replace(base, decoder="beam", lm=args.lm))
        texts = list(audio_of)
        single[name] = {t: r.text for t, r in zip(texts, recognizer.transcribe_files([audio_of[t] for t in texts]))}
        recognizer.set_decoder(base)
    pause = tuple(float(x) for x in args.pause.split(","))
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_long_"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"model {args.checkpoint}; {len(rows)} {args.split} utterances; pauses {pause[0]}-{pause[1]} s, {args.no_pause:.0%} of joins without one; one thread")
    print(f"{'file':<24} {'decoder':<8} {'per-utt WER':>11} {'long WER':>9} {'diff':>6} {'wall s':>7} {'RTF':>7} {'peak RSS MB':>11}  warnings")
    for minutes in [float(m) for m in args.minutes.split(",")]:
        wav = folder / f"joined_{minutes:g}min.wav"
        joined = join_utterances(manifest, wav, minutes * 60, pause, args.no_pause, seed=args.seed)
        reference = normalize(joined.text)
        if args.vad_check:
            vad_check(wav, joined)
        label = f"{minutes:g} min ({len(joined.texts)} utts, {joined.num_no_pause} joins w/o pause)"
        for name, options in decoders.items():
            per_utt = score_wer([reference], [" ".join(single[name][t] for t in joined.texts)]).rate
            text, wall, rss, warnings = transcribe_long(args.checkpoint, wav, options)
            long = score_wer([reference], [text]).rate
            print(f"{label:<24} {name:<8} {per_utt:>11.2%} {long:>9.2%} {100 * (long - per_utt):>+6.2f} {wall:>7.1f} {wall / joined.duration:>7.4f} {rss:>11.0f}  {len(warnings)}", flush=True)
            label = ""
        if args.pocketsphinx and minutes == min(float(m) for m in args.minutes.split(",")):
            stdout, wall, rss = peak_rss_of([sys.executable, "-c", POCKETSPHINX, str(wav)])
            wer = score_wer([reference], [normalize(stdout.strip())]).rate
            ours = decoders["greedy"]
            _, ours_wall, _, _ = transcribe_long(args.checkpoint, wav, ours)
            print(f"{'':<24} {'pocketsphinx 5':<14} WER {wer:.2%}, wall {wall:.1f} s, RTF {wall / joined.duration:.4f}, peak RSS {rss:.0f} MB; "
                  f"asr greedy (rerun) RTF {ours_wall / joined.duration:.4f}: {wall / ours_wall:.1f}x pocketsphinx's speed", flush=True)
        if not args.keep:
            wav.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
