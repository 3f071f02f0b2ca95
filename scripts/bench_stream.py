"""Streaming: offline and streaming models on the demo's test set (unseen voices), in one run.

    python scripts/bench_stream.py --corpus demo_out/corpus --lm demo_out/lm.arpa \\
        --model offline=runs/bi/best.pt --model lc-4+2=runs/lc/best.pt --model uni=runs/uni/best.pt

Per model (one thread):
  - WER greedy and (with --lm) beam + LM, offline (`decode_dataset`) and, for a streaming model,
    through `Recognizer.stream()` fed in --chunk-ms pieces (which must agree with offline);
  - its algorithmic latency (chunk + right context + feature window, `asr.stream.algorithmic_latency`);
  - the emission delay: where the greedy path emits each word's first label, less the word's start
    (the corpus's eSpeak word times), median and p90 — late spikes of unidirectional CTC;
  - latency measured on the stream fed at real time (simulated clock: each chunk arrives when its
    audio ends, is processed for as long as it took, one after another): per word, from its end
    in the audio to its first appearance in a partial, and to the final result; p50 and p90.
    Each test utterance is one stream with --tail s of silence after it, endpoint rule 2 at
    --rule2 s (sherpa-onnx's default is 1.2 s);
  - real-time factor at one thread, and streams that run in real time at once on this machine
    (--concurrent: N streams, round robin, in one process per core, fed at real time for
    --concurrent-seconds; the most any stream fell behind);
  - memory over a --memory-minutes stream (the test set looped): RSS after each minute of audio.
"""

from __future__ import annotations

import argparse
import difflib
import json
import multiprocessing
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from asr.align import word_index  # noqa: E402
from asr.audio import load_audio  # noqa: E402
from asr.data.manifest import read_manifest  # noqa: E402
from asr.decode.incremental import GreedyStream  # noqa: E402
from asr.inference import Recognizer, decode_dataset  # noqa: E402
from asr.metrics import score_wer  # noqa: E402
from asr.stream import EndpointConfig, EndpointRule, algorithmic_latency  # noqa: E402


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    return score_wer(references, hypotheses).rate


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load(checkpoint: str, lm: str | None, beam: bool) -> Recognizer:
    recognizer = Recognizer.from_checkpoint(checkpoint, device="cpu")
    if beam:
        recognizer.set_decoder(replace(recognizer.config.decode, decoder="beam", lm=lm or ""))
    return recognizer


def offline_wer(recognizer: Recognizer, utterances) -> float:
    result = decode_dataset(recognizer, utterances, batch_size=32)
    return 100 * word_error_rate([r.reference for r in result.recognitions], [r.hypothesis for r in result.recognitions])


def emission_delays(recognizer: Recognizer, utterances) -> list[float]:
    """Greedy first-label frame of each word minus the word's start (s), over utterances whose
    greedy words match the reference one for one."""
    delays = []
    space = recognizer.tokenizer.symbols.index(" ") if " " in recognizer.tokenizer.symbols else None
    for u in utterances:
        word_starts = u.extra.get("word_starts")
        if not word_starts:
            continue
        audio = torch.from_numpy(load_audio(u.audio))
        log_probs, lengths = recognizer.log_probs(audio[None], torch.tensor([len(audio)]))
        greedy = GreedyStream()
        greedy.advance(log_probs[0, : lengths[0]])
        labels, frames = greedy.best()
        first_frame: dict[int, int] = {}  # word -> the frame of its first label
        for word, frame in zip(word_index(labels, space) or [], frames):
            if word >= 0:
                first_frame.setdefault(word, frame)
        if len(first_frame) != len(word_starts):
            continue
        centres = recognizer.features.frame_centres(int(lengths[0]))
        delays += [centres[first_frame[w]] - s for w, s in enumerate(word_starts)]
    return delays


def stream_utterance(recognizer: Recognizer, audio: np.ndarray, chunk: int, tail: float, endpoint: EndpointConfig):
    """One utterance (+ tail silence) through a stream at simulated real time: the events with the
    clock time they came out, and the processing seconds."""
    rate = recognizer.sample_rate
    audio = np.concatenate([audio, np.zeros(int(tail * rate), np.float32)])
    stream = recognizer.stream(endpoint)
    clock, busy, events = 0.0, 0.0, []
    for at in range(0, len(audio), chunk):
        piece = audio[at : at + chunk]
        arrives = (at + len(piece)) / rate
        started = time.perf_counter()
        out = stream.feed(piece, rate)
        spent = time.perf_counter() - started
        busy += spent
        clock = max(clock, arrives) + spent
        events += [(clock, e) for e in out]
    started = time.perf_counter()
    out = stream.close()
    spent = time.perf_counter() - started
    busy += spent
    clock += spent
    events += [(clock, e) for e in out]
    return events, busy


def word_latencies(events, reference: list[str], word_ends: list[float]) -> tuple[list[float], list[float], str]:
    """Per reference word: first partial that has it (matched in order by difflib) - its end; the
    final's time - the last word's end; and the streamed text."""
    first_seen: dict[int, float] = {}
    finals, final_times = [], []
    for clock, event in events:
        words = event.text.split()
        if event.final:
            finals.append(event.text)
            final_times.append(clock)
        for block in difflib.SequenceMatcher(a=reference, b=words, autojunk=False).get_matching_blocks():
            for i in range(block.a, block.a + block.size):
                first_seen.setdefault(i, clock)
    partial = [first_seen[i] - word_ends[i] for i in range(len(reference)) if i in first_seen]
    final = [final_times[-1] - word_ends[-1]] if final_times else []
    return partial, final, " ".join(finals)


def concurrent_worker(checkpoint: str, audio: np.ndarray, streams: int, seconds: float, chunk_ms: int, queue) -> None:
    """`streams` streams, round robin, each fed a chunk per period at real time, after a second of
    warm-up (first calls, a first final); how far behind the audio clock the rounds fell (s): the worst, and the
    last (a set of streams that keeps up ends within one chunk)."""
    torch.set_num_threads(1)
    recognizer = Recognizer.from_checkpoint(checkpoint, device="cpu")
    rate = recognizer.sample_rate
    chunk = rate * chunk_ms // 1000
    group = [recognizer.stream(EndpointConfig()) for _ in range(streams)]
    offsets = [(i * len(audio)) // streams for i in range(streams)]
    for stream, offset in zip(group, offsets):
        stream.feed(audio[offset : offset + rate], rate)
    group[0].result()  # the first final loads the aligner's compiled code (~0.5 s, once per process)
    group[0].reset()
    started, lags, at = time.perf_counter(), [], rate
    while (at - rate) / rate < seconds:
        due = started + (at - rate + chunk) / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        for stream, offset in zip(group, offsets):
            begin = (offset + at) % (len(audio) - chunk)
            stream.feed(audio[begin : begin + chunk], rate)
        lags.append(time.perf_counter() - due)
        at += chunk
    queue.put((max(lags), lags[-1], float(np.percentile(lags, 99))))


def concurrent(checkpoint: str, audio: np.ndarray, total: int, seconds: float, chunk_ms: int) -> tuple[float, float, float]:
    """`total` streams over one process per core: the worst, last and p99 lag of any process (s)."""
    processes = min(total, os.cpu_count() or 1)
    queue = multiprocessing.get_context("spawn").Queue()
    workers = [
        multiprocessing.get_context("spawn").Process(target=concurrent_worker, args=(checkpoint, audio, total // processes + (i < total % processes), seconds, chunk_ms, queue))
        for i in range(processes)
    ]
    for w in workers:
        w.start()
    lags = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    return max(w for w, _, _ in lags), max(last for _, last, _ in lags), max(p for _, _, p in lags)


def memory_run(recognizer: Recognizer, audios: list[np.ndarray], minutes: float, gap: float) -> list[float]:
    """One stream fed the utterances looped (gap s of silence between) for `minutes` of audio, as
    fast as it goes; RSS (MB) after each minute."""
    rate = recognizer.sample_rate
    stream = recognizer.stream(EndpointConfig())
    silence = np.zeros(int(gap * rate), np.float32)
    chunk = rate // 10
    fed, next_mark, marks, i = 0, 60 * rate, [], 0
    while fed < minutes * 60 * rate:
        piece = np.concatenate([audios[i % len(audios)], silence])
        for at in range(0, len(piece), chunk):
            stream.feed(piece[at : at + chunk], rate)
        fed += len(piece)
        i += 1
        if fed >= next_mark:
            marks.append(rss_mb())
            next_mark += 60 * rate
    stream.close()
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="the demo corpus (test.jsonl, with word times)")
    parser.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT, repeatable")
    parser.add_argument("--lm", help="word n-gram for beam + LM rows")
    parser.add_argument("--limit", type=int, default=0, help="first N test utterances (0 = all)")
    parser.add_argument("--chunk-ms", type=int, default=20, help="audio per feed, ms")
    parser.add_argument("--tail", type=float, default=1.5, help="s of silence after each utterance when streamed")
    parser.add_argument("--rule2", type=float, default=0.3, help="endpoint rule 2's trailing silence, s, for the latency rows")
    parser.add_argument("--concurrent", type=lambda v: [int(n) for n in v.split(",")], default=[], help="streams at once, e.g. 16,24,32 (default: skip)")
    parser.add_argument("--concurrent-seconds", type=float, default=30.0)
    parser.add_argument("--memory-minutes", type=float, default=0.0, help="minutes of audio for the memory run (0 = skip)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    utterances = read_manifest(Path(args.corpus) / "test.jsonl")
    utterances = utterances[: args.limit] if args.limit else utterances
    audios = [load_audio(u.audio) for u in utterances]
    endpoint = replace(EndpointConfig(), rule2=EndpointRule(True, args.rule2, 0.0))
    rows = []
    for spec in args.model:
        name, checkpoint = spec.split("=", 1)
        recognizer = load(checkpoint, args.lm, beam=False)
        config = recognizer.config
        streaming = config.model.direction != "bidirectional"
        row = {"model": name, "direction": config.model.direction, "latency_ms": round(1000 * algorithmic_latency(recognizer.features, config.model)) if streaming else None}
        row["greedy_wer"] = offline_wer(recognizer, utterances)
        delays = emission_delays(recognizer, utterances)
        row["emission_delay_p50_ms"], row["emission_delay_p90_ms"] = 1000 * percentile(delays, 50), 1000 * percentile(delays, 90)
        decoders = [("greedy", recognizer)]
        if args.lm:
            beam = load(checkpoint, args.lm, beam=True)
            row["beam_lm_wer"] = offline_wer(beam, utterances)
            decoders.append(("beam_lm", beam))
        if streaming:
            chunk = recognizer.sample_rate * args.chunk_ms // 1000
            for label, rec in decoders:
                partial, final, hyps, busy = [], [], [], 0.0
                for u, audio in zip(utterances, audios):
                    events, spent = stream_utterance(rec, audio, chunk, args.tail, endpoint)
                    busy += spent
                    p, f, text = word_latencies(events, rec.tokenizer.normalize(u.text).split(), u.extra.get("word_ends") or [u.duration])
                    partial += p
                    final += f
                    hyps.append(text)
                refs = [rec.tokenizer.normalize(u.text) for u in utterances]
                row[f"{label}_stream_wer"] = 100 * word_error_rate(refs, hyps)
                row[f"{label}_partial_p50_ms"], row[f"{label}_partial_p90_ms"] = 1000 * percentile(partial, 50), 1000 * percentile(partial, 90)
                row[f"{label}_final_p50_ms"], row[f"{label}_final_p90_ms"] = 1000 * percentile(final, 50), 1000 * percentile(final, 90)
                row[f"{label}_rtf"] = busy / sum(len(a) / rec.sample_rate for a in audios) + 0.0
            if args.concurrent:
                for total in args.concurrent:
                    worst, last, p99 = concurrent(checkpoint, np.concatenate(audios), total, args.concurrent_seconds, 100)
                    row[f"streams_{total}_lag_ms"] = {"worst": round(1000 * worst), "p99": round(1000 * p99), "last": round(1000 * last)}
            if args.memory_minutes:
                marks = memory_run(decoders[-1][1], audios, args.memory_minutes, gap=1.0)
                row["rss_mb_by_minute"] = [round(m, 1) for m in marks]
                row["rss_growth_after_minute_1_mb"] = round(marks[-1] - marks[0], 1) if marks else None
        rows.append(row)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    print()
    print("| model | direction | latency ms | greedy WER | beam+LM WER | streamed greedy / beam WER | emission delay p50 / p90 ms | partial p50 / p90 ms | final p50 / p90 ms | RTF greedy / beam |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def pair(a, b, fmt="{:.0f}"):
            return " / ".join(fmt.format(r[k]) if r.get(k) is not None else "-" for k in (a, b))
        last = "beam_lm" if args.lm else "greedy"
        print(f"| {r['model']} | {r['direction']} | {r['latency_ms'] or '-'} | {r['greedy_wer']:.2f} % | {r.get('beam_lm_wer', float('nan')):.2f} % "
              f"| {pair('greedy_stream_wer', 'beam_lm_stream_wer', '{:.2f} %')} | {pair('emission_delay_p50_ms', 'emission_delay_p90_ms')} "
              f"| {pair(last + '_partial_p50_ms', last + '_partial_p90_ms')} | {pair(last + '_final_p50_ms', last + '_final_p90_ms')} "
              f"| {pair('greedy_rtf', 'beam_lm_rtf', '{:.4f}')} |")


if __name__ == "__main__":
    main()
