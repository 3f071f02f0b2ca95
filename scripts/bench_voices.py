"""How a model hears voices it was not trained on: the corpus' test sentences spoken by other
text-to-speech engines (asr/data/engines.py), scored beside the corpus' own test audio.

    python scripts/bench_voices.py --checkpoint demo_out/run/best.pt --corpus demo_out/corpus \
        --lm demo_out/lm.arpa [--sentences 40] [--engines flite,festival] [--threads 1] [--cache DIR]

Trains nothing. 1. reads the first --sentences texts of CORPUS/test.jsonl; 2. speaks them with
every installed engine and every voice of it the model was NOT trained on (the training speakers
come from the training manifest the model's config names, data.train, where that file exists,
else CORPUS/train.jsonl: eSpeak NG voices of the built-in corpus among them are left out);
3. runs the model once over each voice's audio and over the same utterances' own audio files
(the corpus' held-out eSpeak NG voices), and decodes each greedy and by beam search with the
model's decode config and --lm's word LM; 4. prints the command, date, machine and a table:
engine, voice, greedy WER, beam + LM WER, and each engine's pooled WER over its voices.
--checkpoint takes a torch checkpoint or an exported .onnx (asr.runtime.load_recognizer).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from asr.audio import SAMPLE_RATE, load_audio, write_audio  # noqa: E402
from asr.data.engines import ENGINES, Engine, find_engines  # noqa: E402
from asr.data.manifest import read_manifest  # noqa: E402
from asr.metrics import ErrorCounts, score_wer  # noqa: E402
from asr.recognize import RecognizerBase  # noqa: E402

BATCH_SIZE = 16  # utterances per model batch, sorted by length


@dataclass
class Source:
    """One set of the test sentences' audio: a voice of an engine, or the corpus' own files."""

    engine: str
    voice: str
    audio: list[np.ndarray]  # float32 (samples_i,) at SAMPLE_RATE, one per sentence
    log_probs: list = field(default_factory=list)  # (frames_i, vocab) per sentence
    greedy: ErrorCounts | None = None
    beam: ErrorCounts | None = None


@dataclass
class BenchResult:
    sources: list[Source]  # the corpus' own test audio first
    beam_label: str  # "beam + LM" or "beam"
    skipped: list[str]  # one line per engine not installed
    training_manifest: Path | None
    excluded: dict[str, list[str]]  # engine -> voices left out as trained on


def training_speakers(train_manifest: str, corpus: Path) -> tuple[set[str], Path | None]:
    """The `speaker`s of the model's training manifest (`train_manifest`, the config's data.train)
    where that file exists, else of corpus/train.jsonl; and the file read (None where neither
    exists: then no speaker is known). Read as plain JSON lines, so the audio need not exist."""
    for path in (Path(train_manifest) if train_manifest else None, corpus / "train.jsonl"):
        if path is not None and path.is_file():
            with open(path, encoding="utf-8") as f:
                speakers = {json.loads(line).get("speaker") for line in f if line.strip()}
            return {s for s in speakers if s}, path
    return set(), None


def untrained_voices(engine: Engine, trained: set[str]) -> tuple[list[str], list[str]]:
    """The engine's voices whose speaker name (`Engine.speaker`) is not among `trained`, and those that are."""
    voices = engine.voices()
    return [v for v in voices if engine.speaker(v) not in trained], [v for v in voices if engine.speaker(v) in trained]


def speak_all(engine: Engine, voice: str, texts: list[str], cache: Path | None) -> list[np.ndarray]:
    """Each text spoken by `voice`, read from / written to cache/<engine>/<voice>/<hash>.wav where given."""
    audio = []
    for text in texts:
        path = None
        if cache is not None:
            path = cache / engine.name / voice / (hashlib.sha1(text.encode()).hexdigest()[:16] + ".wav")
            if path.is_file():
                audio.append(load_audio(path, SAMPLE_RATE))
                continue
        audio.append(engine.speak(text, voice))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_audio(path, audio[-1], SAMPLE_RATE, subtype="FLOAT")
    return audio


def model_log_probs(recognizer: RecognizerBase, audio: list[np.ndarray]) -> list:
    """The model's log-probs (frames_i, vocab) for each piece of audio, in the given order."""
    order = sorted(range(len(audio)), key=lambda i: -audio[i].size)  # batches of similar length
    out: list = [None] * len(audio)
    for start in range(0, len(order), BATCH_SIZE):
        chunk = order[start : start + BATCH_SIZE]
        log_probs, lengths = recognizer.log_probs(*recognizer.audio_batch([audio[i] for i in chunk]))  # (batch, frames, vocab), (batch,)
        for i, lp, n in zip(chunk, log_probs, lengths.tolist()):
            out[i] = lp[:n]
    return out


def run_bench(
    recognizer: RecognizerBase,
    corpus: str | os.PathLike,
    num_sentences: int = 40,
    engine_names: list[str] | None = None,
    lm: str | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> BenchResult:
    """Speak the first `num_sentences` of corpus/test.jsonl with every untrained voice of every
    installed engine among `engine_names` (default all), and score each voice's greedy and
    beam (+ `lm`, else the decode config's LM, if any) transcripts; the corpus' own audio of
    the same utterances is the first source."""
    corpus = Path(corpus)
    utterances = read_manifest(corpus / "test.jsonl")[:num_sentences]
    texts = [u.text for u in utterances]
    references = [recognizer.tokenizer.normalize(t) for t in texts]
    trained, manifest = training_speakers(recognizer.config.data.train, corpus)
    own_voices = ", ".join(sorted({u.speaker or "?" for u in utterances}))
    sources = [Source("corpus", f"test.jsonl ({own_voices})", [load_audio(u.audio, SAMPLE_RATE) for u in utterances])]
    engines, skipped = find_engines(engine_names)
    excluded = {}
    plan = []
    for engine in engines:
        voices, excluded[engine.name] = untrained_voices(engine, trained)
        plan += [(engine, voice) for voice in voices]
    for engine, voice in tqdm(plan, desc="speak", unit="voice", disable=not progress):
        sources.append(Source(engine.name, voice, speak_all(engine, voice, texts, Path(cache) if cache else None)))
    for source in tqdm(sources, desc="model", unit="voice", disable=not progress):
        source.log_probs = model_log_probs(recognizer, source.audio)

    base = recognizer.config.decode
    recognizer.set_decoder(replace(base, decoder="greedy"))
    for source in sources:
        source.greedy = score_wer(references, recognizer.decode_each(source.log_probs))
    recognizer.set_decoder(replace(base, decoder="beam", lm=lm or base.lm))
    for source in tqdm(sources, desc="beam", unit="voice", disable=not progress):
        source.beam = score_wer(references, recognizer.decode_each(source.log_probs))
    recognizer.set_decoder(base)
    return BenchResult(sources, "beam + LM" if (lm or base.lm) else "beam", skipped, manifest, excluded)


def pooled(counts: list[ErrorCounts]) -> ErrorCounts:
    return ErrorCounts(*(sum(getattr(c, k) for c in counts) for k in ("substitutions", "deletions", "insertions", "reference_length")))


def format_table(result: BenchResult) -> str:
    """engine | voice | audio minutes | greedy WER | beam WER: each engine's voices, then its
    WER pooled over them (errors summed over the voices, over their words summed)."""
    rows = [("engine", "voice", "audio min", "greedy WER", f"{result.beam_label} WER")]
    engines = list(dict.fromkeys(s.engine for s in result.sources))
    for name in engines:
        mine = [s for s in result.sources if s.engine == name]
        for s in mine:
            minutes = sum(a.size for a in s.audio) / SAMPLE_RATE / 60
            rows.append((name, s.voice, f"{minutes:.1f}", f"{s.greedy.rate:.2%}", f"{s.beam.rate:.2%}"))
        if len(mine) > 1:
            greedy, beam = pooled([s.greedy for s in mine]), pooled([s.beam for s in mine])
            rows.append((name, f"all {len(mine)} voices", "", f"{greedy.rate:.2%}", f"{beam.rate:.2%}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a torch checkpoint or an exported .onnx")
    parser.add_argument("--corpus", required=True, help="folder with test.jsonl (and train.jsonl)")
    parser.add_argument("--lm", help="word ARPA LM for the beam rows (default: the model's decode.lm, if any)")
    parser.add_argument("--sentences", type=int, default=40, help="the first N sentences of test.jsonl")
    parser.add_argument("--engines", help="comma-separated engines (default: every one asr.data.engines knows)")
    parser.add_argument("--threads", type=int, default=1, help="the model's CPU threads")
    parser.add_argument("--cache", help="folder to keep the synthesized audio in (reused when it is there)")
    args = parser.parse_args()
    names = [n.strip() for n in args.engines.split(",") if n.strip()] if args.engines else None
    if unknown := [n for n in names or [] if n not in ENGINES]:
        parser.error(f"--engines: unknown {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from asr.runtime import load_recognizer

    recognizer = load_recognizer(args.checkpoint, device="cpu", threads=args.threads)
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; machine: {platform.machine()}, "
          f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}; model threads: {args.threads}")  # fmt: skip
    result = run_bench(recognizer, args.corpus, args.sentences, names, args.lm, args.cache)
    for line in result.skipped:
        print(line)
    print(f"training speakers from {result.training_manifest or 'nowhere (no training manifest found): no voice left out'}")
    for engine, voices in result.excluded.items():
        if voices:
            print(f"{engine}: left out {len(voices)} voices trained on: {', '.join(voices)}")
    n = len(result.sources[0].audio)
    print(f"{n} test sentences each, the model once per voice, decoded greedy and {result.beam_label} (decode config of the model)")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
