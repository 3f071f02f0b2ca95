"""`asr export` against the torch checkpoint it came from, in one run: accuracy, size, speed.

    python scripts/bench_export.py --checkpoint demo_out/run/best.pt --corpus demo_out/corpus \
        --lm demo_out/lm.arpa [--minutes 10] [--pocketsphinx] [--install-sizes]

1. exports fp32 and int8 (`asr export`), timing each and printing the sizes;
2. runs the test set through torch (eager, fp32), onnxruntime fp32 and onnxruntime int8, the
   same batches of the same audio (read once), one thread each: max |Δ log-prob| against torch
   over every valid frame, and the model's time per batch (min of --repeats passes);
3. decodes each one's log-probs greedy and with beam + LM (the checkpoint's decode config):
   WER, and how many transcripts differ from torch's;
4. --minutes: the test set joined into one long file (asr/data/joined.py), `asr transcribe` on
   it with the checkpoint and with the int8 model, one thread, wall time with loading, real-time
   factor; --pocketsphinx adds pocketsphinx 5 on the same file (bench_long.py's runner);
5. --install-sizes: two fresh venvs, `pip install .[onnx]` (the torch-free runtime) and
   `pip install torch==2.13.0 .[train,onnx]` (everything), and the size of each one's
   site-packages; checks that `import torch` fails in the first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from asr.audio import load_audio  # noqa: E402
from asr.data.manifest import read_manifest  # noqa: E402
from asr.metrics import score_wer  # noqa: E402
from asr.runtime import load_recognizer  # noqa: E402


def export(checkpoint: str, out: Path, int8: bool) -> float:
    started = time.perf_counter()
    command = [sys.executable, "-m", "asr", "export", checkpoint, "-o", str(out)] + (["--int8"] if int8 else [])
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return time.perf_counter() - started


def model_pass(recognizer, batches: list[list[np.ndarray]], repeats: int) -> tuple[list[np.ndarray], float]:
    """Each utterance's log-probs (frames, vocab) as numpy, and the fastest pass's model seconds."""
    best, outputs = float("inf"), []
    for _ in range(repeats):
        outputs, seconds = [], 0.0
        for pieces in batches:
            audio, lengths = recognizer.audio_batch(pieces)
            started = time.perf_counter()
            log_probs, frame_lengths = recognizer.log_probs(audio, lengths)
            seconds += time.perf_counter() - started
            log_probs = log_probs.numpy() if isinstance(log_probs, torch.Tensor) else log_probs
            outputs += [lp[:n] for lp, n in zip(log_probs, frame_lengths.tolist())]
        best = min(best, seconds)
    return outputs, best


def site_packages_mb(venv: Path) -> float:
    site = next((venv / "lib").glob("python*/site-packages"))
    return int(subprocess.run(["du", "-sb", str(site)], capture_output=True, text=True, check=True).stdout.split()[0]) / 1e6


def install_sizes(folder: Path) -> None:
    light, full = folder / "venv-onnx", folder / "venv-full"
    for venv, packages in ((light, [f"{ROOT}[onnx]"]), (full, ["torch==2.13.0", f"{ROOT}[train,onnx]"])):
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if venv is full:
            subprocess.run(pip + [packages[0]], check=True)
            packages = packages[1:]
        subprocess.run(pip + packages, check=True)
    no_torch = subprocess.run([str(light / "bin" / "python"), "-c", "import torch"], capture_output=True).returncode != 0
    a, b = site_packages_mb(light), site_packages_mb(full)
    print(f"install: torch-free runtime (.[onnx]) {a:.0f} MB, everything (torch + .[train,onnx]) {b:.0f} MB: {b / a:.1f}x; "
          f"torch {'absent' if no_torch else 'PRESENT'} in the first")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--corpus", required=True, help="folder with test.jsonl")
    parser.add_argument("--lm", help="ARPA LM for the beam + LM rows (default: none: beam rows without LM)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=0, help="join the test set into a file this long for the RTF rows (0: skip)")
    parser.add_argument("--pocketsphinx", action="store_true")
    parser.add_argument("--install-sizes", action="store_true")
    parser.add_argument("--keep", help="folder for the exported models (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(args.keep or tempfile.mkdtemp(prefix="bench_export_"))
    folder.mkdir(parents=True, exist_ok=True)
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    seconds = [export(args.checkpoint, fp32, False), export(args.checkpoint, int8, True)]
    ckpt_mb, fp32_mb, int8_mb = (os.path.getsize(p) / 1e6 for p in (args.checkpoint, fp32, int8))
    print(f"export: fp32 {fp32_mb:.2f} MB in {seconds[0]:.1f} s, int8 {int8_mb:.2f} MB in {seconds[1]:.1f} s "
          f"(int8/fp32 {int8_mb / fp32_mb:.3f}); the checkpoint {ckpt_mb:.2f} MB (with optimizer state)")

    recognizers = {"torch eager fp32": load_recognizer(args.checkpoint, device="cpu"),
                   "onnxruntime fp32": load_recognizer(fp32, threads=1), "onnxruntime int8": load_recognizer(int8, threads=1)}  # fmt: skip
    utterances = read_manifest(Path(args.corpus) / "test.jsonl")
    rate = recognizers["torch eager fp32"].sample_rate
    audio = [load_audio(u.audio, rate) for u in utterances]
    order = sorted(range(len(audio)), key=lambda i: -len(audio[i]))  # batches of similar length, as transcribe_files makes them
    batches = [[audio[i] for i in order[b : b + args.batch_size]] for b in range(0, len(order), args.batch_size)]
    references = [recognizers["torch eager fp32"].tokenizer.normalize(utterances[i].text) for i in order]
    hours = sum(len(a) for a in audio) / rate / 3600
    print(f"{len(audio)} test utterances, {hours * 60:.1f} min, batches of {args.batch_size}, one thread, min of {args.repeats} passes")

    results = {}
    for name, recognizer in recognizers.items():
        results[name] = model_pass(recognizer, batches, args.repeats)
    reference_lp = results["torch eager fp32"][0]
    torch_seconds = results["torch eager fp32"][1]
    base = recognizers["torch eager fp32"].config.decode
    from dataclasses import replace

    decoders = {"greedy": replace(base, decoder="greedy", lm=None)}
    decoders["beam + LM" if args.lm else "beam"] = replace(base, decoder="beam", lm=args.lm)
    hyps: dict[tuple[str, str], list[str]] = {}
    print(f"{'model':<18} {'max |Δ lp|':>10} {'model s':>8} {'x torch':>7} " + " ".join(f"{d + ' WER':>14} {'≠ torch':>7}" for d in decoders))
    for name, recognizer in recognizers.items():
        log_probs, model_seconds = results[name]
        delta = max(float(np.abs(a - b).max()) for a, b in zip(log_probs, reference_lp))
        convert = torch.from_numpy if name.startswith("torch") else (lambda x: x)
        row = f"{name:<18} {delta:>10.2e} {model_seconds:>8.2f} {torch_seconds / model_seconds:>7.2f} "
        for decoder, config in decoders.items():
            recognizer.set_decoder(config)
            hyps[name, decoder] = recognizer.decode_each([convert(x) for x in log_probs])
            wer = score_wer(references, hyps[name, decoder]).rate
            differ = sum(a != b for a, b in zip(hyps[name, decoder], hyps.get(("torch eager fp32", decoder), hyps[name, decoder])))
            row += f"{wer:>14.2%} {differ:>7d} "
        print(row, flush=True)

    if args.minutes:
        from bench_long import POCKETSPHINX, peak_rss_of, transcribe_long

        from asr.data.joined import join_utterances
        from asr.text import normalize_text

        wav = folder / f"joined_{args.minutes:g}min.wav"
        joined = join_utterances(Path(args.corpus) / "test.jsonl", wav, args.minutes * 60, (0.2, 1.5), 0.3, seed=0)
        reference = normalize_text(joined.text)
        print(f"long file: {joined.duration / 60:.1f} min; `asr transcribe --threads 1` greedy, wall time with loading")
        walls = {}
        for name, model in (("torch checkpoint", args.checkpoint), ("onnxruntime fp32", str(fp32)), ("onnxruntime int8", str(int8))):
            text, wall, rss, _ = transcribe_long(model, wav, ["--threads", "1", "--decoder", "greedy"])
            walls[name] = wall
            print(f"  {name:<18} WER {score_wer([reference], [normalize_text(text)]).rate:6.2%}  wall {wall:6.1f} s  RTF {wall / joined.duration:.4f}  peak RSS {rss:.0f} MB", flush=True)
        if args.pocketsphinx:
            stdout, wall, rss = peak_rss_of([sys.executable, "-c", POCKETSPHINX, str(wav)])
            print(f"  {'pocketsphinx 5':<18} WER {score_wer([reference], [normalize_text(stdout.strip())]).rate:6.2%}  wall {wall:6.1f} s  "
                  f"RTF {wall / joined.duration:.4f}  peak RSS {rss:.0f} MB: int8 runs {wall / walls['onnxruntime int8']:.1f}x pocketsphinx's speed")
    if args.install_sizes:
        install_sizes(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
