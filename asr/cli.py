"""The `asr` command. Thin: parse arguments, load config, call the library, print.

    asr synth OUT [--num-utterances N] [--seed S] [--layout manifest|timit|librispeech]
    asr prepare librispeech|timit|kaldi|nemo ROOT OUT_DIR
    asr train CONFIG [key=value ...] [--resume]
    asr stream CKPT FILE|- [--realtime] [--json] [--sample-rate RATE] [--mic] [--decoder beam --lm LM.arpa]
    asr serve CKPT [--stream-checkpoint CKPT] [--host 127.0.0.1] [--port 8000] [--max-streams N] ...
    asr transcribe CKPT FILE... [--json] [--word-timestamps] [--output-dir DIR --output-format srt,...] [--nbest N] [--decoder beam --lm LM.arpa ...]
    asr evaluate CKPT MANIFEST [--output FILE] [--decoder beam --lm LM.arpa ...] [--tune-lm]
    asr align CKPT MANIFEST|AUDIO [--text T | --text-file LINES] --output-dir DIR [--textgrid] [--plot N]
    asr lm build TEXT -o LM.arpa [--order N] [--unit word|char|phone]
    asr lm compile LM.arpa[.gz] -o LM.bin
    asr export CKPT -o MODEL.onnx [--int8] [--opset 17] [--streaming]
    asr demo [--out DIR]
    asr plot RUN_DIR [--output PNG]

Data-parallel training: `torchrun --nproc-per-node N -m asr train CONFIG` (see README).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from asr.data.voices import VOICE_SETS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
DEFAULT_VOICES = "both"
VOICES_HELP = ("who speaks train (dev and test: eSpeak's held-out stock voices): stock = eSpeak's 12 English variants; "
               "drawn = a new procedural voice (vocal tract, voice source, accent) per 10 utterances; both (default)")  # fmt: skip


def cmd_synth(args: argparse.Namespace) -> int:
    from asr.config import ConfigError
    from asr.data.synth import synthesize_corpus

    if args.layout != "manifest":
        from asr.data import synth_layouts

        if args.voices not in (None, "stock"):
            raise ConfigError(f"--layout {args.layout} writes eSpeak's stock voices as the corpus's speakers; --voices {args.voices} needs --layout manifest")

        write = synth_layouts.write_timit_layout if args.layout == "timit" else synth_layouts.write_librispeech_layout
        root = write(args.out, num_utterances=args.num_utterances, seed=args.seed)
        print(f"{args.layout} layout in {root}; next: asr prepare {args.layout} {root} OUT_DIR")
        return 0
    manifests = synthesize_corpus(args.out, num_utterances=args.num_utterances, seed=args.seed, voices=args.voices or DEFAULT_VOICES)
    for split, path in manifests.items():
        print(f"{split}\t{path}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from asr.data.corpora import prepare_corpus
    from asr.recognize import summary_table

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
    from asr.config import ConfigError
    from asr.runtime import load_recognizer
    from asr.segment import SegmentOptions
    from asr.writers import SubtitleOptions, span_records, transcript_record, write_transcript

    if args.nbest < 1:
        raise ConfigError(f"--nbest must be at least 1, not {args.nbest}")
    if args.nbest > 1 and args.decoder == "greedy":
        raise ConfigError("--nbest needs beam search, not --decoder greedy")
    formats = args.output_format.split(",")
    if args.output_dir:
        stems: dict[str, str] = {}
        for f in args.files:
            if Path(f).stem in stems:
                raise ConfigError(f"{stems[Path(f).stem]} and {f} would write the same files in {args.output_dir}: rename one")
            stems[Path(f).stem] = f
        os.makedirs(args.output_dir, exist_ok=True)
    word_timestamps = args.word_timestamps or (bool(args.output_dir) and "ctm" in formats)
    try:
        subtitles = SubtitleOptions(args.max_line_width, args.max_line_count, args.max_words_per_line, args.max_gap)
    except ValueError as e:
        raise ConfigError(f"--{str(e).replace('_', '-')}") from e
    segmenting = SegmentOptions(max_segment=args.max_segment, min_pause=args.min_pause, threshold=args.vad_threshold)
    recognizer = load_recognizer(args.checkpoint, device=args.device, threads=args.threads)
    apply_decoder_options(recognizer, args)
    num_failed = 0
    as_json = args.json or args.word_timestamps
    results = recognizer.transcribe_files(
        args.files, batch_size=args.batch_size, nbest=args.nbest, word_timestamps=word_timestamps, segmenting=segmenting,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    for result in results:
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        if result.error is not None:
            num_failed += 1
            if as_json and not args.output_dir:
                print(json.dumps({"file": result.path, "error": result.error}, ensure_ascii=False), flush=True)
            print(f"error: {result.error}", file=sys.stderr, flush=True)
            continue
        if args.output_dir:
            paths = write_transcript(result, args.output_dir, formats, subtitles)
            print(f"{result.path}\t" + " ".join(str(p) for p in paths), flush=True)
        elif as_json:
            record = transcript_record(result)
            if args.nbest > 1:
                record["nbest"] = [{"text": a.text, "score": a.score, "acoustic": a.acoustic, "lm": a.lm, "words": a.num_words} for a in result.nbest]
            if result.words is not None:
                record["words"] = span_records(result.words)
            print(json.dumps(record, ensure_ascii=False), flush=True)
        elif args.nbest > 1:  # one line per alternative: file, rank, score, text
            for rank, a in enumerate(result.nbest, start=1):
                print(f"{result.path}\t{rank}\t{a.score:.3f}\t{a.text}", flush=True)
        else:
            print(f"{result.path}\t{result.text}", flush=True)
    if num_failed:
        print(f"{num_failed} of {len(args.files)} file(s) failed", file=sys.stderr)
    return 1 if num_failed else 0


def cmd_align(args: argparse.Namespace) -> int:
    from asr.config import ConfigError
    from asr.data.manifest import Utterance, read_manifest
    from asr.inference import align_dataset
    from asr.writers import write_alignment_files, write_textgrid

    started = time.perf_counter()
    if args.textgrid:
        try:
            import praatio  # noqa: F401
        except ImportError:
            raise ConfigError("--textgrid needs praatio: pip install 'asr[align]'") from None
    if args.text_file is not None:
        return align_long_recording(args, started)
    if args.input.endswith(".jsonl"):
        if args.text is not None:
            raise ConfigError("--text aligns one audio file; a manifest carries its own transcripts")
        utterances = read_manifest(args.input)
    else:
        if args.text is None:
            raise ConfigError(f"{args.input}: give its transcript with --text (or a .jsonl manifest)")
        from asr.audio import audio_duration

        path = Path(args.input)
        utterances = [Utterance(path.stem, str(path.resolve()), audio_duration(path), args.text, phones=args.text)]
    recognizer = load_aligner(args)
    result = align_dataset(recognizer, utterances, batch_size=args.batch_size, progress=True)
    out = Path(args.output_dir)
    write_alignment_files(out, result.alignments, result.failed)
    durations = {u.id: u.duration for u in utterances}
    if args.textgrid:
        for alignment in result.alignments:
            write_textgrid(out / "textgrid" / f"{alignment.id}.TextGrid", alignment, durations[alignment.id])
    if args.plot:
        from asr.plot import plot_alignment

        by_id = {u.id: u for u in utterances}
        for alignment in result.alignments[: args.plot]:
            plot_alignment(recognizer, by_id[alignment.id], alignment, out / "plots" / f"{alignment.id}.png")
    from asr.recognize import summary_table

    aligned = result.alignments
    confidence = sum(s.confidence for a in aligned for s in a.tokens) / max(sum(len(a.tokens) for a in aligned), 1)
    print(summary_table([
        ("utterances", f"{len(aligned)} aligned, {len(result.failed)} failed"),
        ("audio", f"{sum(durations[a.id] for a in aligned) / 3600:.3f} h"),
        ("words / tokens", f"{sum(len(a.words) for a in aligned)} / {sum(len(a.tokens) for a in aligned)}"),
        ("mean token confidence", f"{confidence:.3f}"),
        ("aligned on", "the frame head" if recognizer.align_with_frame_head else "CTC's posteriors"),
        ("written", f"{out}/words.ctm, tokens.ctm, alignments.jsonl" + (", textgrid/" if args.textgrid else "") + (", plots/" if args.plot else "")),
        ("wall time", f"{time.perf_counter() - started:.1f} s"),
    ]))  # fmt: skip
    for _, reason in result.failed:
        print(f"error: {reason}", file=sys.stderr)
    return 1 if result.failed else 0


def load_aligner(args: argparse.Namespace):
    """The checkpoint's Recognizer, with --on-unknown-char over its tokenizer's choice."""
    from asr.inference import Recognizer

    recognizer = Recognizer.from_checkpoint(args.checkpoint, device=args.device)
    if args.on_unknown_char is not None and recognizer.tokenizer.kind == "char":
        recognizer.tokenizer.on_unknown = args.on_unknown_char
    recognizer.align_with_frame_head &= not args.ctc
    return recognizer


def align_long_recording(args: argparse.Namespace, started: float) -> int:
    """`asr align CKPT AUDIO --text-file TEXT`: one long recording, its transcript one segment per
    line; writes segments.tsv (id, start, end, confidence, text) besides the CTM files, and
    warns of segments whose confidence is under --min-confidence (text not found in the audio)."""
    import torch

    from asr.align import AlignmentError
    from asr.audio import load_audio
    from asr.config import ConfigError
    from asr.fileio import atomic_write
    from asr.recognize import summary_table
    from asr.tokens import TokenizerError
    from asr.writers import write_alignment_files, write_textgrid

    path = Path(args.input)
    try:
        texts = [line.strip() for line in Path(args.text_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{args.text_file}: {e}") from e
    recognizer = load_aligner(args)
    audio = torch.from_numpy(load_audio(path, recognizer.sample_rate))
    try:
        alignment, segments, untranscribed = recognizer.align_long(audio, texts, name=path.stem, window=args.window)
    except (AlignmentError, TokenizerError) as e:
        print(f"asr align: error: {e}", file=sys.stderr)
        return 1
    out = Path(args.output_dir)
    write_alignment_files(out, [alignment])
    with atomic_write(out / "segments.tsv") as f:
        for i, seg in enumerate(segments):
            f.write(f"{path.stem}-{i + 1:04d}\t{seg.start:.2f}\t{seg.end:.2f}\t{seg.confidence:.3f}\t{seg.text}\n")
    if args.textgrid:
        write_textgrid(out / "textgrid" / f"{path.stem}.TextGrid", alignment, len(audio) / recognizer.sample_rate)
    with atomic_write(out / "untranscribed.tsv") as f:
        for start, end in untranscribed:
            f.write(f"{start:.2f}\t{end:.2f}\n")
    doubtful = [(i, seg) for i, seg in enumerate(segments) if seg.confidence < args.min_confidence]
    print(summary_table([
        ("recording", f"{path} ({len(audio) / recognizer.sample_rate / 60:.1f} min)"),
        ("segments", f"{len(segments)} aligned, {len(doubtful)} under confidence {args.min_confidence}"),
        ("untranscribed speech", f"{len(untranscribed)} stretch(es), {sum(e - s for s, e in untranscribed):.1f} s"),
        ("words / tokens", f"{len(alignment.words)} / {len(alignment.tokens)}"),
        ("written", f"{out}/segments.tsv, untranscribed.tsv, words.ctm, tokens.ctm, alignments.jsonl" + (", textgrid/" if args.textgrid else "")),
        ("wall time", f"{time.perf_counter() - started:.1f} s"),
    ]))  # fmt: skip
    for start, end in untranscribed:
        print(f"warning: speech at {start:.2f}-{end:.2f} s is not in the transcript", file=sys.stderr)
    for i, seg in doubtful:
        print(f"warning: segment {i + 1} ({seg.start:.2f}-{seg.end:.2f} s, confidence {seg.confidence:.3f}) may not be in the audio: {seg.text[:80]}", file=sys.stderr)
    return 0


def evaluate_manifest(recognizer, manifest: str, output: str, progress: bool = True):
    """Decode `manifest`, write per-utterance results to `output`, return the result."""
    from asr.data.manifest import read_manifest
    from asr.recognize import decode_dataset, write_recognitions

    utterances = read_manifest(manifest)
    result = decode_dataset(recognizer, utterances, batch_size=recognizer.config.decode.batch_size, progress=progress)
    write_recognitions(output, result)
    return result


def print_result(result, output: str, title: str, decoder: str = "greedy") -> None:
    from asr.recognize import summary_table

    rows = [("set", title), ("utterances", str(len(result.recognitions))), ("hours", f"{result.hours:.3f}")]
    if result.phones is None:
        rows += [
            (f"{decoder} WER", f"{result.wer:.2%} ({result.words.errors}/{result.words.reference_length} words)"),
            (f"{decoder} CER", f"{result.cer:.2%} ({result.chars.errors}/{result.chars.reference_length} chars)"),
        ]
    else:  # phone models: the "words" are the training phones; the 39-phone PER follows the table
        rows.append((f"{decoder} error", f"{result.wer:.2%} ({result.words.errors}/{result.words.reference_length} training-set phones)"))
    rows += [("failed", str(len(result.failed))), ("details", output)]
    print(summary_table(rows))
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
    from asr.runtime import load_recognizer

    recognizer = load_recognizer(args.checkpoint, device=args.device, threads=args.threads)
    decode = apply_decoder_options(recognizer, args)
    if args.tune_lm:
        tune_lm_weights(recognizer, args)
        decode = recognizer.config.decode
    output = args.output or str(Path(args.checkpoint).with_suffix("")) + f".{Path(args.manifest).stem}.recognitions.jsonl"
    result = evaluate_manifest(recognizer, args.manifest, output)
    print_result(result, output, args.manifest, decoder_name(decode))
    return 1 if result.failed else 0


def decoder_name(decode) -> str:
    return decode.decoder if decode.decoder == "greedy" else f"beam {decode.beam_size}" + (" + LM" if decode.lm else "")


def apply_decoder_options(recognizer, args: argparse.Namespace):
    """Decoder flags over the checkpoint's decode config; returns the config in force."""
    from dataclasses import replace

    decode = recognizer.config.decode
    changes = {
        "decoder": args.decoder, "beam_size": args.beam_size, "token_top_k": args.top_k, "lm": args.lm,
        "token_min_logp": args.token_min_logp, "token_cum_prob": args.token_cum_prob, "beam_threshold": args.beam_threshold,
        "lm_unit": args.lm_unit, "lm_weight": args.lm_weight, "word_bonus": args.word_bonus,
        "oov_penalty": args.oov_penalty, "lm_lookahead": args.lm_lookahead,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if args.decoder is None and (args.lm or getattr(args, "nbest", 1) > 1):
        changes["decoder"] = "beam"  # an LM, or an n-best list, only makes sense with beam search
    decode = replace(decode, **changes)
    recognizer.set_decoder(decode)
    return decode


def tune_lm_weights(recognizer, args: argparse.Namespace) -> None:
    """Grid search of (lm_weight, word_bonus) on the manifest; leaves the best pair in force."""
    from dataclasses import replace

    from asr.config import ConfigError
    from asr.data.manifest import ManifestError, read_manifest
    from asr.recognize import collect_log_probs, summary_table, tune_lm

    decode = recognizer.config.decode
    if decode.decoder != "beam" or not decode.lm:
        raise ConfigError("--tune-lm needs --lm (and beam decoding)")
    weights = [float(x) for x in args.lm_weights.split(",")]
    bonuses = [float(x) for x in args.word_bonuses.split(",")]
    log_probs = collect_log_probs(recognizer, read_manifest(args.manifest), batch_size=decode.batch_size)
    for _, reason in log_probs.failed:
        print(f"--tune-lm: skipping {reason}", file=sys.stderr)
    if not log_probs.log_probs:
        raise ManifestError(f"{args.manifest}: no utterance could be decoded, nothing to tune --lm-weight on")
    results = tune_lm(recognizer, log_probs, weights, bonuses, progress=True)
    print(summary_table([("lm_weight  word_bonus", "WER")] + [(f"{a:<10} {b}", f"{w:.2%}") for a, b, w in results[:10]]))
    alpha, beta, wer = results[0]
    print(f"best: --lm-weight {alpha} --word-bonus {beta} (WER {wer:.2%} on {args.manifest}, "
          f"{len(log_probs.log_probs)} utterances, {len(results)} pairs tried)\n")
    recognizer.set_decoder(replace(decode, lm_weight=alpha, word_bonus=beta))


def build_lm(text: str, output: str | Path, order: int, unit: str = "word", phone_set: int = 48) -> str:
    """Estimate a modified Kneser-Ney n-gram from a text file or manifest, write it as ARPA
    (atomically), and return a one-line summary."""
    from asr.decode.kn import estimate_kneser_ney
    from asr.decode.arpa import write_arpa
    from asr.decode.lm import sentences_from_file
    from asr.text import normalize_text

    if unit == "phone":  # a phone n-gram for token-level fusion with phone models
        sentences = phone_sentences(text, phone_set)
    else:
        sentences = [normalize_text(line).split() for line in sentences_from_file(text)]
    if unit == "char":  # one LM word per character, "|" for the space between words
        sentences = [list("|".join(words)) for words in sentences]
    arpa = estimate_kneser_ney([s for s in sentences if s], order)
    write_arpa(output, arpa)
    counts = ", ".join(f"{n}-grams {len(t)}" for n, t in enumerate(arpa.ngrams, start=1))
    return f"{output}: order {order}, {counts}"


def cmd_lm_build(args: argparse.Namespace) -> int:
    print(build_lm(args.text, args.output, args.order, args.unit, args.phone_set))
    return 0


def cmd_lm_compile(args: argparse.Namespace) -> int:
    """ARPA (plain or compressed) -> the decoder's tables, saved to load in a moment (`NGramLM.save`)."""
    import time

    from asr.decode.lm import NGramLM

    start = time.perf_counter()
    lm = NGramLM.from_file(args.arpa)
    loaded = time.perf_counter() - start
    lm.save(args.output)
    size = Path(args.output).stat().st_size
    print(f"{args.output}: order {lm.order}, {lm.num_ngrams} n-grams, {len(lm.words)} words, {size / 2**20:.1f} MiB "
          f"(reading {args.arpa} took {loaded:.1f} s; `--lm {args.output}` maps it in instead)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from asr.export import MAX_CHECK_DELTA, export_onnx

    import torch

    torch.set_num_threads(args.threads)
    if args.streaming:
        from asr.export_stream import export_step_onnx

        report = export_step_onnx(args.checkpoint, args.output, int8=args.int8, opset=args.opset, check=not args.no_check)
        checked = "EncoderStream on 3 random-length signals' features, streamed window by window"
        meta = report.metadata
        window = f"windows of {meta.chunk_frames} + {meta.right_context_frames} frames" if meta.chunk_frames else "any number of frames"
        graph = f"step graph, {window}, states {', '.join(f'{k} {v}' for k, v in meta.states.items())}; "
    else:
        report = export_onnx(args.checkpoint, args.output, int8=args.int8, opset=args.opset, check=not args.no_check)
        checked = "torch on 3 random-length signals in one padded batch"
        graph = ""
    kind = "int8 weights" if report.metadata.int8 else "float32"
    print(f"{report.path}: {report.size / 2**20:.2f} MiB ({graph}{kind}, opset {args.opset}), exported in {report.seconds:.1f} s")
    if report.max_delta is None:
        print("not checked against torch (--no-check, or onnxruntime not installed: pip install onnxruntime)")
    else:
        print(f"max |Δ log-prob| vs {checked}: {report.max_delta:.2e} (float32 graph; at most {MAX_CHECK_DELTA:g} passes)")
    if report.int8_delta is not None:
        print(f"int8 graph: max |Δ log-prob| vs {'EncoderStream' if args.streaming else 'torch'} {report.int8_delta:.2e} (quantization error)")
    return 0


def phone_sentences(manifest: str, phone_set: int) -> list[list[str]]:
    """The `phones` of every utterance of a manifest, folded onto `phone_set` (what a phone model's
    tokenizer emits), one LM sentence each."""
    from asr.data.manifest import ManifestError, read_manifest
    from asr.phones import PhoneError, fold_phones

    if not str(manifest).endswith(".jsonl"):
        raise ManifestError(f"{manifest}: --unit phone reads the `phones` of a JSON-lines manifest")
    sentences = []
    for u in read_manifest(manifest):
        if not u.phones:
            raise ManifestError(f"{manifest}: utterance {u.id} has no `phones`")
        try:
            sentences.append(fold_phones(u.phones.split(), phone_set, where=f"{manifest}: {u.id}"))
        except PhoneError as e:
            raise ManifestError(str(e)) from e
    return sentences


def add_endpoint_options(p: argparse.ArgumentParser) -> None:
    """sherpa-onnx's endpoint rules, for `asr stream` and `asr serve`."""
    p.add_argument("--rule1-min-trailing-silence", type=float, default=2.4, help="endpoint after this much silence with nothing decoded, s (default 2.4)")
    p.add_argument("--rule2-min-trailing-silence", type=float, default=1.2, help="endpoint after this much silence after speech, s (default 1.2)")
    p.add_argument("--rule3-min-utterance-length", type=float, default=20.0, help="endpoint when an utterance is this long, s (default 20)")
    p.add_argument("--no-endpoint", action="store_true", help="no endpoints: one final result at the end")


def add_decoder_options(p: argparse.ArgumentParser) -> None:
    """Flags that override the checkpoint's `decode` config section (unset = keep it)."""
    p.add_argument("--decoder", choices=["greedy", "beam"], help="default: the checkpoint's (greedy), beam when --lm is given")
    p.add_argument("--beam-size", type=int, help="prefixes kept per utterance (default 16)")
    p.add_argument("--top-k", type=int, help="labels tried per frame (default 8)")
    p.add_argument("--token-min-logp", type=float, help="and only labels with at least this log probability (default -10)")
    p.add_argument("--token-cum-prob", type=float, help="and only the most probable labels (blank included) whose probabilities first add up to this (default 1: all)")
    p.add_argument("--beam-threshold", type=float, help="drop prefixes scoring more than this below the utterance's best (default 15)")
    p.add_argument("--lm", help="n-gram LM for shallow fusion: an ARPA file (plain or .gz/.bz2/.xz; see `asr lm build`) or `asr lm compile`'s output")
    p.add_argument("--lm-unit", choices=["auto", "word", "token"], help="word: scored at spaces (char models); token: one LM word per label")
    p.add_argument("--lm-weight", type=float, help="alpha, the weight of ln P_lm")
    p.add_argument("--word-bonus", type=float, help="beta, added per word")
    p.add_argument("--oov-penalty", type=float, help="word LM: what a word the LM does not list pays, in ln units (default -10)")
    p.add_argument("--lm-lookahead", action=argparse.BooleanOptionalAction, help="word LM: unfinished words carry the best unigram they can become (default on)")


def cmd_demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from asr.config import load_config
    from asr.data.manifest import read_manifest
    from asr.data.synth import synthesize_corpus
    from asr.inference import Recognizer
    from asr.train import BEST, train
    from asr.train_log import METRICS

    started = time.perf_counter()
    out = Path(args.out)
    corpus = out / "corpus"
    config = load_config(args.config, args.overrides)
    print(f"[1/5] synthesizing {args.num_utterances} utterances with eSpeak NG ({args.voices} voices) into {corpus}")
    manifests = synthesize_corpus(corpus, num_utterances=args.num_utterances, seed=args.seed, voices=args.voices)
    config.data.train, config.data.dev, config.data.test = (str(manifests[s]) for s in ("train", "dev", "test"))
    config.train.out_dir = str(out / "run")
    kind = {"bidirectional": "Bi", "unidirectional": "unidirectional ", "latency_controlled": "latency-controlled Bi"}.get(config.model.direction, "")
    print(f"[2/5] training ({config.model.num_layers}x{config.model.hidden_size} {kind}{config.model.cell.upper()}, "
          f"{config.train.epochs} epochs) into {config.train.out_dir}")
    run_dir = train(config)
    checkpoint = run_dir / BEST
    print("[3/5] evaluating on the held-out test set (unseen voices, unseen sentences), greedy decoding")
    recognizer = Recognizer.from_checkpoint(checkpoint)
    output = str(run_dir / "test.recognitions.jsonl")
    greedy = evaluate_manifest(recognizer, config.data.test, output, progress=False)
    print_result(greedy, output, "test")
    lm_path = out / "lm.arpa"
    print(f"[4/5] beam search + a word 3-gram LM estimated from the training transcripts ({lm_path})")
    print("  " + build_lm(config.data.train, lm_path, order=3))
    decode = replace(recognizer.config.decode, decoder="beam", lm=str(lm_path))
    recognizer.set_decoder(decode)
    output = str(run_dir / "test.beam_lm.recognitions.jsonl")
    beam = evaluate_manifest(recognizer, config.data.test, output, progress=False)
    print_result(beam, output, "test", decoder_name(decode))
    print(f"  test WER: greedy {greedy.wer:.2%} -> {decoder_name(decode)} {beam.wer:.2%} "
          f"(lm_weight {decode.lm_weight}, word_bonus {decode.word_bonus})")
    utterance = read_manifest(config.data.test)[0]
    if config.model.direction == "bidirectional":
        print("[5/5] transcribing one held-out file (beam + LM)")
        [result] = list(recognizer.transcribe_files([utterance.audio]))
        text = result.text if result.error is None else result.error
    else:
        print("[5/5] streaming one held-out file in 100 ms chunks (beam + LM): partial results as they came")
        text = stream_file(recognizer, utterance.audio)
    print(f"  file       {utterance.audio}\n  reference  {recognizer.tokenizer.normalize(utterance.text)}\n  hypothesis {text}")
    print(f"checkpoint: {checkpoint}\nmetrics log: {run_dir / METRICS}")
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0


def stream_sources(args: argparse.Namespace) -> Iterator[tuple[np.ndarray, int]]:
    """(samples float32 mono, sample rate) blocks of --chunk-ms from a file, stdin's raw 16-bit PCM
    or the microphone."""
    from asr.config import ConfigError

    if args.mic:
        try:
            import sounddevice
        except (ImportError, OSError) as e:  # an optional extra (pip install 'asr[mic]'), over PortAudio (OSError when missing)
            raise ConfigError(f"--mic records through the optional sounddevice package and PortAudio: pip install 'asr[mic]', "
                              f"apt install libportaudio2 ({e})") from e
        rate = args.sample_rate or 16000
        block = max(1, rate * args.chunk_ms // 1000)
        try:
            with sounddevice.InputStream(samplerate=rate, channels=1, dtype="float32", blocksize=block) as mic:
                while True:
                    data, _ = mic.read(block)
                    yield data[:, 0].copy(), rate
        except sounddevice.PortAudioError as e:
            raise ConfigError(f"--mic: no microphone to record from ({e})") from e
    elif args.source == "-":
        if not args.sample_rate:
            raise ConfigError("reading raw 16-bit PCM from stdin needs its rate: --sample-rate (e.g. 16000)")
        block_bytes = 2 * max(1, args.sample_rate * args.chunk_ms // 1000)
        pending = b""
        while True:
            data = sys.stdin.buffer.read(block_bytes)
            if not data:
                break
            data, pending = pending + data, b""
            if len(data) % 2:  # half a sample: keep it for the next read
                data, pending = data[:-1], data[-1:]
            yield np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, args.sample_rate
    else:
        import soundfile

        from asr.audio import AudioError, check_audio_path

        check_audio_path(args.source)
        try:
            info = soundfile.info(args.source)
            block = max(1, info.samplerate * args.chunk_ms // 1000)
            for data in soundfile.blocks(args.source, blocksize=block, dtype="float32", always_2d=True):
                yield data.mean(axis=1), info.samplerate
        except (RuntimeError, soundfile.LibsndfileError) as e:
            raise AudioError(f"{args.source}: cannot read audio: {e}") from e


def cmd_stream(args: argparse.Namespace) -> int:
    from asr.config import ConfigError
    from asr.inference import Recognizer
    from asr.stream import algorithmic_latency

    if not args.mic and args.source is None:
        raise ConfigError("give an audio file, - (raw 16-bit PCM on stdin, with --sample-rate) or --mic")
    if args.chunk_ms < 1:
        raise ConfigError(f"--chunk-ms must be at least 1, not {args.chunk_ms}")
    recognizer = Recognizer.from_checkpoint(args.checkpoint, device=args.device)
    apply_decoder_options(recognizer, args)
    stream = recognizer.stream(endpoint_config(args))
    terminal = sys.stdout.isatty() and not args.json
    if not args.json:
        latency = algorithmic_latency(recognizer.features, recognizer.config.model)
        print(f"# {recognizer.config.model.direction} model, algorithmic latency {latency * 1000:.0f} ms", file=sys.stderr)

    def show(events) -> None:
        for event in events:
            if args.json:
                print(json.dumps(event.event()), flush=True)
            elif event.final:
                print(("\r\033[K" if terminal else "") + f"[{event.start:8.2f} -> {event.end:8.2f}] {event.text}", flush=True)
            elif terminal:
                print("\r\033[K" + event.text[-(shutil.get_terminal_size().columns - 1):], end="", flush=True)

    started = time.perf_counter()
    heard = 0.0  # s of audio fed so far
    for samples, rate in stream_sources(args):
        heard += len(samples) / rate
        if args.realtime:  # the speed of speech: a chunk is there once its last sample would have been recorded
            time.sleep(max(0.0, started + heard - time.perf_counter()))
        try:
            show(stream.feed(samples, rate))
        except ValueError as e:  # StreamError: the chunk is dropped, the stream goes on
            print(f"asr stream: warning: {e}", file=sys.stderr)
    show(stream.close())
    return 0


def endpoint_config(args: argparse.Namespace):
    """The endpoint rules from `asr stream` / `asr serve` flags."""
    from asr.stream import EndpointConfig, EndpointRule

    return EndpointConfig(
        rule1=EndpointRule(False, args.rule1_min_trailing_silence, 0.0),
        rule2=EndpointRule(True, args.rule2_min_trailing_silence, 0.0),
        rule3=EndpointRule(False, 0.0, args.rule3_min_utterance_length),
        enabled=not args.no_endpoint,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from asr.config import ConfigError
    from asr.inference import Recognizer

    try:
        from asr.serve import ServeConfig, create_app, run_server
        from asr.serve.app import SERVER
    except ImportError as e:
        raise ConfigError(f"asr serve needs the serve extra: pip install 'asr[serve]' ({e})") from e
    for name in ("max_upload_mb", "max_stream_minutes", "max_lead_seconds", "step_ms"):
        if not getattr(args, name) >= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, not {getattr(args, name)}")
    for name in ("max_streams", "max_pending_requests", "threads"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    import torch

    torch.set_num_threads(args.threads)
    recognizer = Recognizer.from_checkpoint(args.checkpoint, device=args.device)
    apply_decoder_options(recognizer, args)
    stream_recognizer = None
    if args.stream_checkpoint:
        stream_recognizer = Recognizer.from_checkpoint(args.stream_checkpoint, device=args.device)
        apply_decoder_options(stream_recognizer, args)
    config = ServeConfig(
        max_upload_mb=args.max_upload_mb, max_pending_requests=args.max_pending_requests, max_streams=args.max_streams,
        max_stream_seconds=args.max_stream_minutes * 60, max_lead_seconds=args.max_lead_seconds, batch=not args.no_batch,
        step_interval=args.step_ms / 1000,
        endpoint=endpoint_config(args),
    )
    app = create_app(recognizer, config, stream_recognizer, name=Path(args.checkpoint).stem)
    server = app[SERVER]
    if server.engine is None:
        print(f"asr serve: warning: no streaming (/v1/stream answers with an error): {server.not_streamable}", file=sys.stderr)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def ready(addresses) -> None:
        for host, port, *_ in addresses:
            print(f"asr serve: listening on http://{host if ':' not in host else f'[{host}]'}:{port}", flush=True)

    run_server(app, args.host, args.port, ready)
    return 0


def stream_file(recognizer, path: str, chunk_ms: int = 100) -> str:
    """Feed a file through `recognizer.stream()` in chunks, printing each new partial; the final text."""
    from asr.audio import load_audio

    audio = load_audio(path, recognizer.sample_rate)
    stream = recognizer.stream()
    block = recognizer.sample_rate * chunk_ms // 1000
    finals = []
    for at in range(0, len(audio), block):
        for event in stream.feed(audio[at : at + block], recognizer.sample_rate):
            print(f"  {'final  ' if event.final else 'partial'} {(at + block) / recognizer.sample_rate:5.2f} s  {event.text}")
            if event.final:
                finals.append(event.text)
    finals += [event.text for event in stream.close()]
    return " ".join(finals)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="CTC speech recognition with recurrent networks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write the built-in eSpeak NG corpus",
                       description="Write the built-in eSpeak NG corpus: generated sentences, 90 % train, 5 % each dev and test. "
                                   "Voices: docs/recipes.md#the-built-in-corpus-and-its-voices; training-time augmentation (noise, rooms, "
                                   "channels, VTLP: augment.* in the training config): docs/recipes.md#augmentation-other-voices-rooms-and-channels")  # fmt: skip
    p.add_argument("out", help="output folder")
    p.add_argument("--num-utterances", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--voices", choices=VOICE_SETS, help=VOICES_HELP + "; the timit and librispeech layouts: stock only")
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
    p.add_argument("--threads", type=int, help="CPU threads for the model (torch, or onnxruntime for an .onnx model; default: theirs)")
    p.add_argument("--nbest", type=int, default=1, help="print each file's N best transcripts with their scores (beam search; default 1)")
    p.add_argument("--word-timestamps", action="store_true", help="each word's start, end (s) and confidence (the transcript force-aligned): in JSON lines on stdout, "
                   "or in json and ctm with --output-dir, where subtitles are then cut by the options below")
    p.add_argument("--output-dir", help="write OUTPUT_DIR/<file stem>.<format> for each file instead of lines on stdout")
    p.add_argument("--output-format", default="txt", help="with --output-dir: txt, json, tsv, srt, vtt, ctm (needs word times: turns them on), "
                   "several comma-separated, or all (default txt)")
    p.add_argument("--max-line-width", type=int, help="subtitles: characters per line (with --word-timestamps)")
    p.add_argument("--max-line-count", type=int, help="subtitles: lines per cue (with --word-timestamps)")
    p.add_argument("--max-words-per-line", type=int, help="subtitles: words per line (with --word-timestamps)")
    p.add_argument("--max-gap", type=float, default=1.0, help="subtitles: a pause between words longer than this (s) starts a new cue (default 1)")
    p.add_argument("--max-segment", type=float, help="long files: the longest piece run through the model at once, s (default: the model's longest training utterance)")
    p.add_argument("--min-pause", type=float, default=0.3, help="long files: a pause at least this long (s) ends a segment (default 0.3)")
    p.add_argument("--vad-threshold", type=float, default=0.5, help="long files: silero-vad's speech probability that starts speech (default 0.5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown on a terminal only)")
    add_decoder_options(p)
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("evaluate", help="WER and CER of a checkpoint on a manifest")
    p.add_argument("checkpoint")
    p.add_argument("manifest")
    p.add_argument("--output", help="per-utterance results (JSON lines); default beside the checkpoint")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="CPU threads for the model (torch, or onnxruntime for an .onnx model; default: theirs)")
    add_decoder_options(p)
    p.add_argument("--tune-lm", action="store_true", help="grid-search --lm-weight and --word-bonus on MANIFEST (a dev set), then evaluate with the best pair")
    p.add_argument("--lm-weights", default="0.3,0.5,0.8,1.2,1.6", help="alphas for --tune-lm")
    p.add_argument("--word-bonuses", default="0,1,2,3,4", help="betas for --tune-lm")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("align", help="forced alignment: when each word and token of a transcript was spoken")
    p.add_argument("checkpoint")
    p.add_argument("input", help="a JSON-lines manifest (its transcripts; phones for a phone model), or one audio file with --text")
    p.add_argument("--text", help="the transcript of the one audio file")
    p.add_argument("--text-file", help="a long recording's transcript, one segment per line: where each line is, in memory that grows with the audio only")
    p.add_argument("--window", type=int, default=2048, help="long recordings: transcript states alive at a time (default 2048, about 1000 characters of slack)")
    p.add_argument("--min-confidence", type=float, default=0.1, help="long recordings: warn of segments under this confidence (not in the audio?)")
    p.add_argument("--output-dir", required=True, help="folder for words.ctm, tokens.ctm, alignments.jsonl (and textgrid/, plots/)")
    p.add_argument("--textgrid", action="store_true", help="also one Praat TextGrid per utterance (words and tokens tiers)")
    p.add_argument("--plot", type=int, default=0, metavar="N", help="also PNGs of the first N utterances: spectrogram, posteriorgram, aligned tokens and words")
    p.add_argument("--on-unknown-char", choices=("error", "drop"), help="characters outside the vocabulary: fail the utterance (default) or drop them")
    p.add_argument("--ctc", action="store_true", help="align on CTC's posteriors even where the model has a frame head (model.frame_head)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("lm", help="n-gram language models")
    lm_sub = p.add_subparsers(dest="lm_command", required=True)
    q = lm_sub.add_parser("build", help="estimate a modified Kneser-Ney n-gram model, written as ARPA")
    q.add_argument("text", help="text file (one sentence per line) or a JSON-lines manifest (its `text` fields)")
    q.add_argument("-o", "--output", required=True, help="ARPA file to write")
    q.add_argument("--order", type=int, default=3)
    q.add_argument("--unit", choices=["word", "char", "phone"], default="word",
                   help="char: characters as LM words, '|' between words (token-level fusion); "
                        "phone: a manifest's `phones`, folded to --phone-set (for phone models)")
    q.add_argument("--phone-set", type=int, choices=[61, 48, 39], default=48, help="with --unit phone: the model's phone set")
    q.set_defaults(func=cmd_lm_build)
    q = lm_sub.add_parser("compile", help="turn an ARPA file (plain, .gz, .bz2, .xz) into the decoder's tables, which --lm loads in a moment")
    q.add_argument("arpa", help="ARPA file, plain or compressed")
    q.add_argument("-o", "--output", required=True, help="file to write (e.g. lm.bin); --lm takes it wherever it takes an ARPA file")
    q.set_defaults(func=cmd_lm_compile)

    p = sub.add_parser("export", help="write one ONNX graph from raw audio to log-probs (features inside), checked against torch")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--int8", action="store_true", help="quantize LSTM/GRU and MatMul weights to int8 (onnxruntime's dynamic quantization)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip running torch and onnxruntime on test signals and comparing")
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (default 1)")
    p.add_argument("--streaming", action="store_true",
                   help="a streaming model's step graph instead: feature frames and states in, log-probs and states out (docs/export.md)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("stream", help="recognize as the audio comes: partial results, then a final one at each endpoint")
    p.add_argument("checkpoint", help="a streaming model (model.direction latency_controlled or unidirectional)")
    p.add_argument("source", nargs="?", help="an audio file, or - for raw 16-bit little-endian mono PCM on stdin (with --sample-rate)")
    p.add_argument("--sample-rate", type=int, help="stdin's (and --mic's) sample rate, Hz; a file says its own")
    p.add_argument("--mic", action="store_true", help="record from the default microphone (the optional sounddevice extra: pip install 'asr[mic]')")
    p.add_argument("--realtime", action="store_true", help="feed a file at the speed of speech")
    p.add_argument("--json", action="store_true", help='one JSON line per event: {"type": "partial" | "final", "text", "start", "end", "words"}')
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per read, ms (default 100)")
    p.add_argument("--device", default="cpu")
    add_endpoint_options(p)
    add_decoder_options(p)
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("serve", help="an HTTP and WebSocket recognition server with a web page (the serve extra)")
    p.add_argument("checkpoint", help="the model for uploads (POST /v1/audio/transcriptions), and for streams if it can stream")
    p.add_argument("--stream-checkpoint", help="a streaming model for /v1/stream and the page's microphone (default: CHECKPOINT)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one, printed)")
    p.add_argument("--max-upload-mb", type=float, default=200.0, help="largest upload, MB (default 200); larger: 413")
    p.add_argument("--max-pending-requests", type=int, default=8, help="transcriptions queued or running at once (default 8); more: 503")
    p.add_argument("--max-streams", type=int, default=32, help="WebSocket streams at once (default 32); more: an error event")
    p.add_argument("--max-stream-minutes", type=float, default=240.0, help="audio in one stream, minutes (default 240)")
    p.add_argument("--max-lead-seconds", type=float, default=10.0, help="how far a stream's audio may run ahead of real time, s (default 10; 0: no limit)")
    p.add_argument("--no-batch", action="store_true", help="run each stream's model windows alone (to compare)")
    p.add_argument("--step-ms", type=float, default=40.0, help="the stream engine steps at most every this many ms, so that under load windows gather into batches (default 40; 0: at every arrival)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1: the stream engine and the uploads each take a core)")
    p.add_argument("--device", default="cpu")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request and stream")
    add_endpoint_options(p)
    add_decoder_options(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="synthesize, train, evaluate and transcribe, end to end")
    p.add_argument("--out", default="demo_out", help="folder for the corpus, checkpoints and logs")
    p.add_argument("--config", default=str(DEMO_CONFIG))
    p.add_argument("--num-utterances", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--voices", choices=VOICE_SETS, default=DEFAULT_VOICES, help=VOICES_HELP)
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of the demo config")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("plot", help="draw a run's training curves (metrics.jsonl) to a PNG")
    p.add_argument("run_dir", help="train.out_dir of a run")
    p.add_argument("--output", help="PNG path; default RUN_DIR/curves.png")
    p.set_defaults(func=cmd_plot)
    return parser


def user_errors() -> tuple[type[Exception], ...]:
    """The errors a user can cause (bad file, bad option), reported in one line instead of a
    traceback. Where torch is not installed, those of the modules that need it are left out:
    nothing there can raise them."""
    from asr.audio import AudioError
    from asr.config import ConfigError
    from asr.data.corpora import CorpusError
    from asr.data.manifest import ManifestError
    from asr.decode.arpa import ArpaError
    from asr.decode.kn import LMBuildError
    from asr.runtime import ModelFileError

    errors = (AudioError, ConfigError, CorpusError, ManifestError, ArpaError, LMBuildError, ModelFileError, FileNotFoundError)
    try:
        from asr.checkpoint import CheckpointError
        from asr.export import ExportError
        from asr.plot import PlotError  # (its metrics log's module asks torch.distributed for the rank)
        from asr.train import TrainingError
    except ImportError:  # no torch
        return errors
    return (*errors, CheckpointError, ExportError, PlotError, TrainingError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except user_errors() as e:
        print(f"asr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # an optional dependency the command needs (torch, onnxruntime, aiohttp, ...)
        hint = "needs torch: pip install torch (the CPU build: torch==2.13.0), then 'asr[train]'" if e.name == "torch" else str(e)
        print(f"asr {args.command}: error: {hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
