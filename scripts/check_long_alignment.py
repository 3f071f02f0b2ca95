"""A long recording whose transcript and audio disagree, aligned with `asr align --text-file`,
against the truth the built-in corpus knows.

    python scripts/check_long_alignment.py --checkpoint demo_out/run/best.pt --corpus demo_out/corpus

Joins the first --count test utterances (0.5 s of silence between), leaves one utterance's audio
out but keeps its line (text not in the audio) and keeps another's audio but leaves its line out
(audio not in the text), runs `asr align`, and prints: the missing line's confidence and which
lines were warned of, the untranscribed speech found against where the extra audio is, and the
error of every other line's start and end against the truth (`word_starts`, `word_ends`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--corpus", required=True, help="a built-in corpus with word times (test.jsonl)")
    parser.add_argument("--count", type=int, default=40, help="test utterances joined")
    parser.add_argument("--drop-audio", type=int, default=10, help="this utterance's line is kept, its audio left out")
    parser.add_argument("--drop-text", type=int, default=20, help="this utterance's audio is kept, its line left out")
    args = parser.parse_args()
    corpus = Path(args.corpus)
    rows = [json.loads(line) for line in (corpus / "test.jsonl").read_text().splitlines()][: args.count]
    audio, lines, truth, extra, t = [], [], {}, None, 0.0
    for i, row in enumerate(rows):
        if i != args.drop_audio:
            samples, rate = sf.read(corpus / row["audio"], dtype="float32")
            audio += [samples, np.zeros(rate // 2, np.float32)]
            if i == args.drop_text:
                extra = (t + row["word_starts"][0], t + row["word_ends"][-1])
            else:
                truth[len(lines)] = (t + row["word_starts"][0], t + row["word_ends"][-1])
            t += len(samples) / rate + 0.5
        if i != args.drop_text:
            lines.append(row["text"])
    missing = lines.index(rows[args.drop_audio]["text"])
    with tempfile.TemporaryDirectory() as tmp:
        wav, text, out = Path(tmp) / "long.wav", Path(tmp) / "long.txt", Path(tmp) / "out"
        sf.write(wav, np.concatenate(audio), 16000)
        text.write_text("\n".join(lines) + "\n")
        run = subprocess.run([sys.executable, "-m", "asr", "align", args.checkpoint, str(wav), "--text-file", str(text), "--output-dir", str(out)],
                             capture_output=True, text=True)  # fmt: skip
        print(run.stdout)
        segments = [line.split("\t") for line in (out / "segments.tsv").read_text().splitlines()]
        untranscribed = [tuple(map(float, line.split())) for line in (out / "untranscribed.tsv").read_text().splitlines()]
    warned = [i for i, s in enumerate(segments) if float(s[3]) < 0.1]  # what asr align warns of (--min-confidence)
    print(f"{t / 60:.1f} min, {len(lines)} lines; line {missing} is not in the audio: confidence {float(segments[missing][3]):.3f}")
    print(f"lines warned of (confidence < 0.1, counted from 0): {warned} ({len([i for i in warned if i != missing])} of them are in the audio)")
    print(f"untranscribed speech found: {untranscribed}; the extra audio is at {extra[0]:.2f}-{extra[1]:.2f} s")
    errors = np.array([abs(float(segments[i][k]) - truth[i][k - 1]) for i in truth for k in (1, 2)])
    print(f"line starts and ends of the other lines: {np.mean(errors <= 0.05):.1%} within 50 ms, mean error {1000 * errors.mean():.0f} ms, worst {errors.max():.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
