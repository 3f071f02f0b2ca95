"""The `asr` command. Thin: parse arguments, load config, call the library, print.

    asr synth OUT [--num-utterances N] [--seed S] [--layout manifest|timit|librispeech]
    asr prepare librispeech|timit|kaldi|nemo ROOT OUT_DIR
    asr train CONFIG [key=value ...] [--resume]
    asr transcribe CKPT FILE... [--json]
    asr evaluate CKPT MANIFEST [--output FILE]
    asr demo [--out DIR]
    asr plot RUN_DIR [--output PNG]

Data-parallel training: `torchrun --nproc-per-node N -m asr train CONFIG` (see README).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"


def cmd_synth(args: argparse.Namespace) -> int:
    from asr.data.synth import synthesize_corpus

    if args.layout != "manifest":
        from asr.data import synth_layouts

        write = synth_layouts.write_timit_layout if args.layout == "timit" else synth_layouts.write_librispeech_layout
        root = write(args.out, num_utterances=args.num_utterances, seed=args.seed)
        print(f"{args.layout} layout in {root}; next: asr prepare {args.layout} {root} OUT_DIR")
        return 0
    manifests = synthesize_corpus(args.out, num_utterances=args.num_utterances, seed=args.seed)
    for split, path in manifests.items():
        print(f"{split}\t{path}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from asr.data.corpora import prepare_corpus
    from asr.inference import summary_table

    options = {"include_sa": True} if args.include_sa else {}
    started = time.perf_counter()
    result = prepare_corpus(args.layout, args.root, args.out_dir, **options)
    seconds = time.perf_counter() - started
    for problem in result.problems:
        print(f"warning: {problem}", file=sys.stderr)
    rows = [(split, f"{result.utterances[split]} utterances, {result.hours[split]:.2f} h -> {path}")
            for split, path in result.manifests.items()]  # fmt: skip
    num_files = sum(result.utterances.values())
    rows.append(("problems", f"{len(result.problems)} (listed above)" if result.problems else "0"))
    rows.append(("time", f"{seconds:.1f} s ({num_files / max(seconds, 1e-9):.0f} utterances/s)"))
    print(summary_table(rows))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from asr.config import load_config
    from asr.train import train

    config = load_config(args.config, args.overrides)
    out_dir = train(config, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the group
        print(f"checkpoints and metrics log in {out_dir}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from asr.plot import plot_run

    print(plot_run(args.run_dir, args.output))
    return 0


def cmd_transcribe(args: argparse.Namespace) -> int:
    from asr.inference import Recognizer

    recognizer = Recognizer.from_checkpoint(args.checkpoint, device=args.device)
    num_failed = 0
    for path, text, error in recognizer.transcribe_files(args.files, batch_size=args.batch_size):
        if error is not None:
            num_failed += 1
            if args.json:
                print(json.dumps({"file": path, "error": error}, ensure_ascii=False), flush=True)
            print(f"error: {error}", file=sys.stderr, flush=True)
            continue
        if args.json:
            print(json.dumps({"file": path, "text": text}, ensure_ascii=False), flush=True)
        else:
            print(f"{path}\t{text}", flush=True)
    if num_failed:
        print(f"{num_failed} of {len(args.files)} file(s) failed", file=sys.stderr)
    return 1 if num_failed else 0


def evaluate_manifest(recognizer, manifest: str, output: str, progress: bool = True):
    """Decode `manifest`, write per-utterance results to `output`, return the result."""
    from asr.data.manifest import read_manifest
    from asr.inference import decode_dataset, write_recognitions

    utterances = read_manifest(manifest)
    result = decode_dataset(recognizer, utterances, batch_size=recognizer.config.decode.batch_size, progress=progress)
    write_recognitions(output, result)
    return result


def print_result(result, output: str, title: str) -> None:
    from asr.inference import summary_table

    print(
        summary_table(
            [
                ("set", title),
                ("utterances", str(len(result.recognitions))),
                ("hours", f"{result.hours:.3f}"),
                ("greedy WER", f"{result.wer:.2%} ({result.words.errors}/{result.words.reference_length} words)"),
                ("greedy CER", f"{result.cer:.2%} ({result.chars.errors}/{result.chars.reference_length} chars)"),
                ("failed", str(len(result.failed))),
                ("details", output),
            ]
        )
    )
    if result.phones is not None:
        print_phone_errors(result.phones)
    for utt_id, reason in result.failed:
        print(f"error: {reason}", file=sys.stderr)


def print_phone_errors(phones) -> None:
    """PER on the 39 scoring phones and the per-phone substitution/deletion/insertion counts."""
    total = phones.total
    print(f"PER (39 phones)  {phones.rate:.2%} ({total.errors}/{total.reference_length} phones: "
          f"{total.substitutions} sub, {total.deletions} del, {total.insertions} ins)")  # fmt: skip
    print(f"{'phone':<6}{'ref':>7}{'sub':>6}{'del':>6}{'ins':>6}{'err%':>7}")
    for phone, count, sub, dele, ins in phones.table():
        rate = f"{(sub + dele) / count:.1%}" if count else "-"
        print(f"{phone:<6}{count:>7}{sub:>6}{dele:>6}{ins:>6}{rate:>7}")
    top = sorted(phones.confusions.items(), key=lambda kv: -kv[1])[:10]
    if top:
        print("most frequent substitutions: " + ", ".join(f"{r}->{h} {n}" for (r, h), n in top))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from asr.inference import Recognizer

    recognizer = Recognizer.from_checkpoint(args.checkpoint, device=args.device)
    output = args.output or str(Path(args.checkpoint).with_suffix("")) + f".{Path(args.manifest).stem}.recognitions.jsonl"
    result = evaluate_manifest(recognizer, args.manifest, output)
    print_result(result, output, args.manifest)
    return 1 if result.failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from asr.config import load_config
    from asr.data.manifest import read_manifest
    from asr.data.synth import synthesize_corpus
    from asr.inference import Recognizer
    from asr.train import BEST, train

    started = time.perf_counter()
    out = Path(args.out)
    corpus = out / "corpus"
    config = load_config(args.config, args.overrides)
    print(f"[1/4] synthesizing {args.num_utterances} utterances with eSpeak NG into {corpus}")
    manifests = synthesize_corpus(corpus, num_utterances=args.num_utterances, seed=args.seed)
    config.data.train, config.data.dev, config.data.test = (str(manifests[s]) for s in ("train", "dev", "test"))
    config.train.out_dir = str(out / "run")
    print(f"[2/4] training ({config.model.num_layers}x{config.model.hidden_size} Bi{config.model.cell.upper()}, "
          f"{config.train.epochs} epochs) into {config.train.out_dir}")
    run_dir = train(config)
    checkpoint = run_dir / BEST
    print("[3/4] evaluating on the held-out test set (unseen voices, unseen sentences)")
    recognizer = Recognizer.from_checkpoint(checkpoint)
    output = str(run_dir / "test.recognitions.jsonl")
    result = evaluate_manifest(recognizer, config.data.test, output, progress=False)
    print_result(result, output, "test")
    print("[4/4] transcribing one held-out file")
    utterance = read_manifest(config.data.test)[0]
    [(path, text, error)] = list(recognizer.transcribe_files([utterance.audio]))
    print(f"  file       {path}\n  reference  {recognizer.tokenizer.normalize(utterance.text)}\n  hypothesis {text if error is None else error}")
    print(f"checkpoint: {checkpoint}\nmetrics log: {run_dir / 'metrics.jsonl'}")
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="CTC speech recognition with recurrent networks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write the built-in eSpeak NG corpus")
    p.add_argument("out", help="output folder")
    p.add_argument("--num-utterances", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p.add_argument("--layout", choices=("manifest", "timit", "librispeech"), default="manifest",
                   help="manifest: wav files + JSON-lines manifests; timit / librispeech: that corpus's on-disk layout")  # fmt: skip

    p = sub.add_parser("prepare", help="turn a corpus on disk into manifests")
    p.add_argument("layout", choices=("librispeech", "timit", "kaldi", "nemo"))
    p.add_argument("root", help="corpus folder (Kaldi: the data directory; NeMo: the manifest or its folder)")
    p.add_argument("out_dir", help="folder for the <split>.jsonl manifests")
    p.add_argument("--include-sa", action="store_true", help="TIMIT: keep the SA sentences (left out by default)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt exactly where it stopped")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("transcribe", help="print the text of audio files")
    p.add_argument("checkpoint")
    p.add_argument("files", nargs="+")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("evaluate", help="WER and CER of a checkpoint on a manifest")
    p.add_argument("checkpoint")
    p.add_argument("manifest")
    p.add_argument("--output", help="per-utterance results (JSON lines); default beside the checkpoint")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="synthesize, train, evaluate and transcribe, end to end")
    p.add_argument("--out", default="demo_out", help="folder for the corpus, checkpoints and logs")
    p.add_argument("--config", default=str(DEMO_CONFIG))
    p.add_argument("--num-utterances", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of the demo config")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("plot", help="draw a run's training curves (metrics.jsonl) to a PNG")
    p.add_argument("run_dir", help="train.out_dir of a run")
    p.add_argument("--output", help="PNG path; default RUN_DIR/curves.png")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from asr.audio import AudioError
    from asr.checkpoint import CheckpointError
    from asr.config import ConfigError
    from asr.data.corpora import CorpusError
    from asr.data.manifest import ManifestError
    from asr.plot import PlotError
    from asr.train import TrainingError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (AudioError, CheckpointError, ConfigError, CorpusError, ManifestError, TrainingError, FileNotFoundError) as e:
        print(f"asr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except PlotError as e:
        print(f"asr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
