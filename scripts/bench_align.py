"""Forced alignment: how close to the truth, how fast, in how much memory; ours beside its peers.

    python scripts/bench_align.py --checkpoint demo_out/run/best.pt --corpus demo_out/corpus

Accuracy. The built-in corpus knows when eSpeak spoke each word (`word_starts`, `word_ends` in
its manifests) and phone (`phone_times`, `phone_ends`), so alignments are scored against exact
truth on the test set (voices unseen in training): the share of word starts and ends within 20
and 50 ms of the truth, and the mean absolute error; with --phone-checkpoint and a phone
manifest, the same for phone boundaries (TIMIT's measure: within 20 ms).

Speed, on the same log-probs (the model is run once), one thread each: ours batched
(`asr.align.ctc_viterbi`, the whole set in batches of --batch-size), ours one at a time in the
long-recording mode (`ctc_viterbi_long`), torchaudio's `forced_align` (batch 1; where torchaudio
imports: it needs its own venv here, see docs/alignment.md) and ctc-segmentation (PyPI
`ctc-segmentation`, where it imports).

Memory, on one long recording (--long-minutes of the test set's log-probs, joined with a second
of blank between utterances, and their transcripts joined): each aligner in a fresh process,
its peak resident memory above what the process held after loading the log-probs.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from asr.align import ctc_viterbi, ctc_viterbi_long, ctc_viterbi_torch
from asr.data.manifest import read_manifest
from asr.inference import Recognizer, align_dataset, collect_log_probs
from asr.tokens import BLANK_ID

# -------------------------------------------------------------------------------------- accuracy


def boundary_errors(alignments, utterances) -> dict[str, list[float]]:
    """Per kind of boundary (word starts, word ends), |ours - truth| in seconds, over every word
    of every aligned utterance whose manifest row has word times."""
    truth = {u.id: u for u in utterances}
    errors: dict[str, list[float]] = {"word start": [], "word end": []}
    for a in alignments:
        u = truth[a.id]
        starts, ends = u.extra.get("word_starts"), u.extra.get("word_ends")
        if starts is None or ends is None or len(starts) != len(a.words):
            continue
        offset = u.extra.get("offset", 0.0)  # times are from the start of the utterance's audio
        for w, s, e in zip(a.words, starts, ends):
            errors["word start"].append(abs(w.start - (s - offset)))
            errors["word end"].append(abs(w.end - (e - offset)))
    return errors


def phone_boundary_errors(alignments, utterances) -> list[float]:
    """|ours - truth| in seconds of every phone boundary (the start of each phone but the first),
    for a phone model, where the aligned phones are the manifest's."""
    truth = {u.id: u for u in utterances}
    errors = []
    for a in alignments:
        times = truth[a.id].extra.get("phone_times")
        if times is None or len(times) != len(a.tokens):
            continue
        errors += [abs(t.start - s) for t, s in zip(a.tokens[1:], times[1:])]
    return errors


def summarize(errors: list[float]) -> str:
    if not errors:
        return "no truth to compare with"
    n = len(errors)
    within = lambda ms: sum(e <= ms / 1000 for e in errors) / n  # noqa: E731
    return f"{within(20):6.1%} within 20 ms, {within(50):6.1%} within 50 ms, mean error {1000 * sum(errors) / n:5.1f} ms ({n} boundaries)"


# ----------------------------------------------------------------------------------------- speed


def targets_of(recognizer, data) -> list[torch.Tensor]:
    return [torch.tensor(recognizer.tokenizer.encode(ref), dtype=torch.long) for ref in data.references]


def time_ours_batched(search, log_probs, targets, batch_size: int) -> float:
    """`search` (ctc_viterbi or ctc_viterbi_torch) over the set in padded batches."""
    started = time.perf_counter()
    for i in range(0, len(log_probs), batch_size):
        lp, tg = log_probs[i : i + batch_size], targets[i : i + batch_size]
        pad = torch.nn.utils.rnn.pad_sequence
        search(pad(lp, batch_first=True), torch.tensor([len(x) for x in lp]), pad(tg, batch_first=True), torch.tensor([len(t) for t in tg]))
    return time.perf_counter() - started


def time_ours_long(log_probs, targets) -> float:
    started = time.perf_counter()
    for lp, tg in zip(log_probs, targets):
        ctc_viterbi_long(lp, tg)
    return time.perf_counter() - started


def time_torchaudio(log_probs, targets) -> float | None:
    try:
        from torchaudio.functional import forced_align
    except ImportError:
        return None
    started = time.perf_counter()
    for lp, tg in zip(log_probs, targets):
        forced_align(lp[None], tg[None].int(), blank=BLANK_ID)
    return time.perf_counter() - started


def ctc_segmentation_config(recognizer):
    import ctc_segmentation as cs

    config = cs.CtcSegmentationParameters()
    config.char_list = list(recognizer.tokenizer.symbols)
    config.index_duration = recognizer.features.frame_seconds
    config.blank = BLANK_ID
    return cs, config


def time_ctc_segmentation(recognizer, log_probs, targets) -> float | None:
    """ctc-segmentation on each utterance as its README does it: the label list prepared by
    `prepare_token_list`, then `ctc_segmentation` (its table of frames x labels, in Cython)."""
    try:
        cs, config = ctc_segmentation_config(recognizer)
    except ImportError:
        return None
    started = time.perf_counter()
    for lp, tg in zip(log_probs, targets):
        ground_truth, _ = cs.prepare_token_list(config, [tg.numpy()])
        cs.ctc_segmentation(config, lp.numpy(), ground_truth)
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------- memory

MEMORY_CHILD = r"""
import resource, sys, time, torch
torch.set_num_threads(1)
data = torch.load(sys.argv[2], weights_only=True)
lp, target = data["log_probs"], data["target"]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
which = sys.argv[1]
if which == "ours":
    from asr.align import ctc_viterbi_long
    path, score = ctc_viterbi_long(lp, target)
    ok = score > float("-inf")
elif which == "ours-full":
    from asr.align import ctc_viterbi
    path, score = ctc_viterbi(lp[None], torch.tensor([len(lp)]), target[None], torch.tensor([len(target)]))
    ok = bool(score[0] > float("-inf"))
elif which == "torchaudio":
    from torchaudio.functional import forced_align
    forced_align(lp[None], target[None].int(), blank=0)
    ok = True
print(f"{(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024:.1f} {time.perf_counter() - started:.2f} {ok}")
"""


def long_recording(log_probs, targets, minutes: float, frame_seconds: float, blank_frames: int):
    """The test set's log-probs joined (round and round) into `minutes` of frames, a run of
    certain-blank frames between utterances, and the transcripts joined the same way."""
    vocab = log_probs[0].shape[1]
    gap = torch.full((blank_frames, vocab), -30.0)
    gap[:, BLANK_ID] = 0.0
    frames, pieces, labels = 0, [], []
    i = 0
    while frames * frame_seconds < minutes * 60:
        lp, tg = log_probs[i % len(log_probs)], targets[i % len(targets)]
        pieces += [lp, gap]
        labels.append(tg)
        frames += len(lp) + blank_frames
        i += 1
    return torch.cat(pieces), torch.cat(labels)


def peak_memory(which: str, data_path: str, limit_gb: float) -> str:
    """Run one aligner on the long recording in a fresh process, address space limited to
    `limit_gb`: 'peak MiB above the loaded log-probs, seconds', or why it did not finish."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (int(limit_gb * 2**30), int(limit_gb * 2**30)))

    result = subprocess.run([sys.executable, "-c", MEMORY_CHILD, which, data_path], capture_output=True, text=True, preexec_fn=limit, timeout=3600)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        return f"failed within {limit_gb:.0f} GiB of address space: {last[:100]}"
    mib, seconds, ok = result.stdout.split()
    return f"+{float(mib):.0f} MiB, {float(seconds):.1f} s" + ("" if ok == "True" else " (no path)")


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a character model (e.g. demo_out/run/best.pt)")
    parser.add_argument("--corpus", required=True, help="folder with test.jsonl (with word_starts/word_ends: the built-in corpus)")
    parser.add_argument("--phone-checkpoint", help="a phone model, for phone-boundary accuracy")
    parser.add_argument("--phone-manifest", help="its test manifest (phones and phone_times)")
    parser.add_argument("--ctc", action="store_true", help="align on CTC's log-probs even where the model has a frame head")
    parser.add_argument("--accuracy-only", action="store_true", help="measure accuracy only (no speed or memory runs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per aligner; the fastest counts")
    parser.add_argument("--long-minutes", type=float, default=60.0, help="length of the long recording for the memory comparison (0: skip)")
    parser.add_argument("--memory-limit-gb", type=float, default=16.0, help="address-space limit of each memory run")
    parser.add_argument("--memory-aligners", default="ours,torchaudio,ours-full", help="which to run on the long recording (ours-full: ctc_viterbi, frames x states back-pointers)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    recognizer = Recognizer.from_checkpoint(args.checkpoint, device="cpu")
    recognizer.align_with_frame_head &= not args.ctc
    utterances = read_manifest(Path(args.corpus) / "test.jsonl")
    on = "the frame head" if recognizer.align_with_frame_head else "CTC"
    print(f"accuracy: {len(utterances)} test utterances (voices unseen in training), {args.checkpoint}, aligned on {on}")
    result = align_dataset(recognizer, utterances, batch_size=args.batch_size)
    for kind, errors in boundary_errors(result.alignments, utterances).items():
        print(f"  {kind:<11} {summarize(errors)}")
    if args.phone_checkpoint and args.phone_manifest:
        phone_recognizer = Recognizer.from_checkpoint(args.phone_checkpoint, device="cpu")
        phone_recognizer.align_with_frame_head &= not args.ctc
        phone_utts = read_manifest(args.phone_manifest)
        phones = align_dataset(phone_recognizer, phone_utts, batch_size=args.batch_size)
        print(f"  phone boundaries {summarize(phone_boundary_errors(phones.alignments, phone_utts))}")
    if args.accuracy_only:
        return 0

    data = collect_log_probs(recognizer, utterances)
    log_probs = [lp.cpu().contiguous() for lp in data.log_probs]
    targets = targets_of(recognizer, data)
    seconds_of_audio = sum(len(lp) for lp in log_probs) * recognizer.features.frame_seconds
    print(f"speed: {len(log_probs)} utterances ({seconds_of_audio / 60:.1f} min of audio), same log-probs, 1 thread, best of {args.repeats}")
    rows = [
        ("ours (ctc_viterbi: compiled on the CPU)", lambda: time_ours_batched(ctc_viterbi, log_probs, targets, args.batch_size)),
        ("ours, torch ops (ctc_viterbi_torch: the CUDA code)", lambda: time_ours_batched(ctc_viterbi_torch, log_probs, targets, args.batch_size)),
        ("ours, long mode one at a time (ctc_viterbi_long)", lambda: time_ours_long(log_probs, targets)),
        ("torchaudio forced_align, batch 1", lambda: time_torchaudio(log_probs, targets)),
        ("ctc-segmentation", lambda: time_ctc_segmentation(recognizer, log_probs, targets)),
    ]
    ours = None
    for name, run in rows:
        times = [run() for _ in range(args.repeats)]
        if times[0] is None:
            print(f"  {name:<52} not installed")
            continue
        rate = len(log_probs) / min(times)
        ours = ours or rate
        print(f"  {name:<52} {rate:9.1f} alignments/s   ours / this: {ours / rate:5.2f}x")

    try:  # the same answer as torchaudio on the model's own log-probs
        from torchaudio.functional import forced_align

        ours_paths, _ = ctc_viterbi(*[torch.nn.utils.rnn.pad_sequence(x, batch_first=True) for x in (log_probs,)], torch.tensor([len(x) for x in log_probs]),
                                    torch.nn.utils.rnn.pad_sequence(targets, batch_first=True), torch.tensor([len(t) for t in targets]))  # fmt: skip
        same = sum(
            ours_paths[i, : len(lp)].tolist() == forced_align(lp[None], tg[None].int(), blank=BLANK_ID)[0][0].tolist()
            for i, (lp, tg) in enumerate(zip(log_probs, targets))
        )
        print(f"  paths equal to torchaudio's: {same} of {len(log_probs)} utterances")
    except ImportError:
        pass

    if args.long_minutes > 0:
        lp, target = long_recording(log_probs, targets, args.long_minutes, recognizer.features.frame_seconds, blank_frames=33)
        print(f"memory: one recording of {len(lp) * recognizer.features.frame_seconds / 60:.0f} min ({len(lp)} frames, {len(target)} labels), "
              f"peak above the loaded log-probs, each in its own process")  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "long.pt")
            torch.save({"log_probs": lp, "target": target}, path)
            for which in args.memory_aligners.split(","):
                if which == "torchaudio" and importlib.util.find_spec("torchaudio") is None:
                    print(f"  {which:<12} not installed")
                    continue
                print(f"  {which:<12} {peak_memory(which, path, args.memory_limit_gb)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
