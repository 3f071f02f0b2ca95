"""`asr export --streaming` against `EncoderStream` and the offline model, in one run.

    python scripts/bench_export_stream.py --checkpoint demo_stream/run/best.pt --corpus demo_stream/corpus [--limit N]

1. exports the step graph fp32 and int8 (`export_step_onnx`, with its own check);
2. for every test utterance: the features as `FeatureStream` gives them (the whole audio in one
   piece, then `finish`), then `EncoderStream` (torch), the offline model (`CTCModel.forward`),
   and both step graphs driven window by window through onnxruntime (states carried in numpy);
   max |Δ log-prob| (CTC head and frame head) of each against `EncoderStream`;
3. the time per window of one stream (min over --repeats passes of the test set, one thread):
   torch (`_run_stack` as `EncoderStream.drain` calls it) vs onnxruntime fp32 and int8, and the ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from asr.audio import load_audio  # noqa: E402
from asr.data.manifest import read_manifest  # noqa: E402
from asr.export_stream import export_step_onnx, run_step_stream, stream_windows, zero_states  # noqa: E402
from asr.feature_stream import FeatureStream  # noqa: E402
from asr.inference import Recognizer  # noqa: E402
from asr.models.encoder import EncoderStream, _run_stack, _streaming  # noqa: E402
from asr.onnx_meta import STATE_OUT, STEP_INPUTS  # noqa: E402


def stream_features(recognizer: Recognizer, audio: np.ndarray) -> torch.Tensor:
    stream = FeatureStream(recognizer.features)
    return torch.cat([stream.accept(torch.from_numpy(audio)), stream.finish()])  # (frames, feat_dim)


def torch_stream(model, feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    stream = EncoderStream(model)
    stream.push(feats)
    parts = list(zip(stream.drain(), stream.finish()))
    log_probs = torch.cat(parts[0]).numpy()
    return log_probs, (torch.cat(parts[1]).numpy() if parts[1][0] is not None else None)


def time_torch(model, feats_list: list[torch.Tensor], chunk: int, right: int) -> tuple[float, int]:
    """Seconds and windows of one pass of every stream through `_run_stack`, window by window."""
    seconds, count = 0.0, 0
    with torch.inference_mode(), _streaming(model):
        for feats in feats_list:
            states = [None] * len(model.layers)
            for start, end, main in stream_windows(len(feats), chunk, right):
                x = feats[None, start:end]
                started = time.perf_counter()
                _, _, states = _run_stack(model, x, main if chunk else None, states)
                seconds += time.perf_counter() - started
                count += 1
    return seconds, count


def time_onnx(session, metadata, feats_list: list[np.ndarray]) -> float:
    names = [o.name for o in session.get_outputs()]
    seconds = 0.0
    for feats in feats_list:
        states = zero_states(metadata)
        for start, end, main in stream_windows(len(feats), metadata.chunk_frames, metadata.right_context_frames):
            feed = {STEP_INPUTS[0]: feats[None, start:end], STEP_INPUTS[1]: np.array(main, np.int64), **states}
            started = time.perf_counter()
            values = dict(zip(names, session.run(names, feed)))
            seconds += time.perf_counter() - started
            states = {name: values[name + STATE_OUT] for name in states}
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--corpus", required=True, help="a corpus directory with test.jsonl")
    parser.add_argument("--limit", type=int, default=0, help="only the first N test utterances (0: all)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import onnxruntime

    recognizer = Recognizer.from_checkpoint(args.checkpoint, device="cpu")
    model = recognizer.model.eval()
    recognizer.features.eval()
    utterances = read_manifest(Path(args.corpus) / "test.jsonl")
    if args.limit:
        utterances = utterances[: args.limit]
    feats_list = [stream_features(recognizer, load_audio(u.audio, recognizer.sample_rate)) for u in utterances]
    print(f"{len(utterances)} test utterances, {sum(len(f) for f in feats_list)} model frames")

    sessions, metadata = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("fp32", "int8"):
            path = Path(tmp) / f"step-{kind}.onnx"
            report = export_step_onnx(args.checkpoint, path, int8=kind == "int8")
            metadata = report.metadata
            print(f"export {kind}: {report.size / 2**20:.2f} MiB in {report.seconds:.1f} s, its check: fp32 {report.max_delta:.2e}"
                  + (f", int8 {report.int8_delta:.2e}" if report.int8_delta is not None else ""))
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            sessions[kind] = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        worst = {name: [0.0, 0.0] for name in ("offline", "fp32", "int8")}
        with torch.inference_mode():
            for feats in feats_list:
                reference = torch_stream(model, feats)
                offline = model(feats[None], torch.tensor([len(feats)]), frames=True)
                outputs = {"offline": (offline[0][0].numpy(), None if offline[2] is None else offline[2][0].numpy())}
                for kind, session in sessions.items():
                    out = run_step_stream(session, feats.numpy(), metadata)
                    outputs[kind] = (out["log_probs"], out.get("frame_log_probs"))
                for name, (log_probs, frame_log_probs) in outputs.items():
                    worst[name][0] = max(worst[name][0], float(np.abs(log_probs - reference[0]).max()))
                    if frame_log_probs is not None and reference[1] is not None:
                        worst[name][1] = max(worst[name][1], float(np.abs(frame_log_probs - reference[1]).max()))
        for name, (ctc, frame) in worst.items():
            print(f"max |Δ log-prob| vs EncoderStream, {name}: {ctc:.2e} (frame head {frame:.2e})")

        chunk, right = metadata.chunk_frames, metadata.right_context_frames
        numpy_feats = [f.numpy() for f in feats_list]
        best = {"torch": float("inf"), "fp32": float("inf"), "int8": float("inf")}
        for _ in range(args.repeats):
            seconds, count = time_torch(model, feats_list, chunk, right)
            best["torch"] = min(best["torch"], seconds)
            for kind, session in sessions.items():
                best[kind] = min(best[kind], time_onnx(session, metadata, numpy_feats))
        print(f"time per window ({count} windows of {chunk} + {right} frames, one stream, one thread, best of {args.repeats}):")
        for name, seconds in best.items():
            print(f"  {name:5s} {1e3 * seconds / count:.3f} ms  ({best['torch'] / seconds:.2f}x torch)")


if __name__ == "__main__":
    main()
