"""Benchmark: an exported ONNX graph (`asr export`) against its checkpoint in torch, on a test set.

    python scripts/bench_export.py runs/demo/best.pt data/test.jsonl [--batch 16] [--threads 1]

Exports the checkpoint twice (float32 and --int8) into a temporary folder, then runs torch
(`Recognizer.outputs`), the float32 graph and the int8 graph in onnxruntime on the manifest's
utterances, in padded batches (a fixed random order, so lengths mix) and every 10th utterance
alone; prints the largest |log-prob| difference from torch over each utterance's own frames
(and, for scale, torch's own difference when its features are computed in float64), greedy
WER, how many transcripts equal torch's, time and size. All on `--threads` threads.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asr.audio import load_audio
from asr.decode import decode_greedy
from asr.export import export_onnx, padded_batch, run_onnx
from asr.features import FeatureExtractor
from asr.inference import Recognizer
from asr.metrics import score_wer


def largest_difference(reference: torch.Tensor, other: np.ndarray, lengths: list[int]) -> float:
    return max(float(np.abs(other[i, :n] - reference[i, :n].numpy()).max(initial=0.0)) for i, n in enumerate(lengths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("manifest", help="JSON lines with audio (relative to the manifest) and text")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import onnxruntime

    torch.set_num_threads(args.threads)
    recognizer = Recognizer.from_checkpoint(args.checkpoint, device="cpu")
    float64_features = FeatureExtractor(recognizer.config.features).double().eval()
    if recognizer.features.cmvn_mean is not None:
        float64_features.set_cmvn_stats(recognizer.features.cmvn_mean, recognizer.features.cmvn_var)
    root = Path(args.manifest).parent
    utterances = [json.loads(line) for line in open(args.manifest)]
    audios = [load_audio(root / u["audio"], recognizer.sample_rate) for u in utterances]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    with tempfile.TemporaryDirectory() as folder:
        exports = {name: export_onnx(args.checkpoint, Path(folder) / f"{name}.onnx", int8=name == "int8") for name in ("float32", "int8")}
        sessions = {name: onnxruntime.InferenceSession(str(r.path), options, providers=["CPUExecutionProvider"]) for name, r in exports.items()}
        names = ["torch", *sessions]
        texts = {name: [""] * len(audios) for name in names}
        seconds = dict.fromkeys(names, 0.0)
        delta = dict.fromkeys(sessions, 0.0)
        frame_delta, alone_delta, torch_float64_delta = 0.0, 0.0, 0.0
        order = np.random.default_rng(0).permutation(len(audios))
        for at in range(0, len(order), args.batch):
            group = order[at : at + args.batch]
            audio, lengths = padded_batch([audios[i] for i in group])
            start = time.perf_counter()
            log_probs, frame_lengths, frame_log_probs = recognizer.outputs(torch.from_numpy(audio), torch.from_numpy(lengths))
            seconds["torch"] += time.perf_counter() - start
            n = frame_lengths.tolist()
            outputs = {"torch": (log_probs, frame_lengths)}
            for name, session in sessions.items():
                start = time.perf_counter()
                out = run_onnx(session, audio, lengths)
                seconds[name] += time.perf_counter() - start
                assert out["lengths"].tolist() == n
                delta[name] = max(delta[name], largest_difference(log_probs, out["log_probs"], n))
                if name == "float32" and frame_log_probs is not None:
                    frame_delta = max(frame_delta, largest_difference(frame_log_probs, out["frame_log_probs"], n))
                outputs[name] = (torch.from_numpy(out["log_probs"]), torch.from_numpy(out["lengths"]))
            for name, (lp, fl) in outputs.items():
                for i, ids in zip(group, decode_greedy(lp, fl)):
                    texts[name][i] = recognizer.tokenizer.decode(ids)
            with torch.inference_mode():
                feats, _ = float64_features(torch.from_numpy(audio).double(), torch.from_numpy(lengths))
                exact, _ = recognizer.model(feats.float(), frame_lengths)
            torch_float64_delta = max(torch_float64_delta, largest_difference(log_probs, exact.numpy(), n))
        for i in range(0, len(audios), 10):
            audio, lengths = padded_batch([audios[i]])
            log_probs, frame_lengths, _ = recognizer.outputs(torch.from_numpy(audio), torch.from_numpy(lengths))
            alone_delta = max(alone_delta, largest_difference(log_probs, run_onnx(sessions["float32"], audio, lengths)["log_probs"], frame_lengths.tolist()))
    total = sum(len(a) for a in audios) / recognizer.sample_rate
    print(f"{len(audios)} utterances, {total:.0f} s, padded batches of {args.batch}, {args.threads} thread(s)")
    print(f"max |Δ log-prob| vs torch: float32 graph {delta['float32']:.2e} (frame head {frame_delta:.2e}; alone {alone_delta:.2e}), "
          f"int8 graph {delta['int8']:.2e}; torch with float64 features vs float32: {torch_float64_delta:.2e}")
    references = [u["text"] for u in utterances]
    for name in names:
        errors = score_wer(references, texts[name])
        same = sum(a == b for a, b in zip(texts[name], texts["torch"]))
        size = f", {exports[name].size / 2**20:.2f} MiB, exported in {exports[name].seconds:.1f} s" if name in exports else ""
        print(f"{name:8s} greedy WER {errors.rate:.2%}, same text as torch {same}/{len(audios)}, {seconds[name]:.2f} s "
              f"({seconds['torch'] / seconds[name]:.2f}x torch's speed){size}")


if __name__ == "__main__":
    main()
