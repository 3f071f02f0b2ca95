"""Benchmark: asr.features against kaldi-native-fbank on the same audio, in the same run.

    python scripts/bench_features.py --seconds 10 --repeats 20 --batch 16

Times (median over repeats) our `compute_fbank` on one utterance, our `FeatureExtractor` on a
padded batch, and kaldi-native-fbank (Kaldi fbank in C++) on the same samples, all with
Kaldi-compatible options (25 ms / 10 ms, 80 bins, Povey window, dither 0); prints the speed
ratio and the largest log-mel difference. Torch uses its default thread count.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch

from asr.config import FeatureConfig
from asr.features import FeatureExtractor, compute_fbank

SAMPLE_RATE = 16000  # Hz


def synthesize_audio(num_samples: int, seed: int) -> np.ndarray:
    """Speech-like int16-quantized audio in [-1, 1]: harmonics of a gliding f0 at a syllable
    rate, noise bursts and low-level background noise. (samples,) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / SAMPLE_RATE  # s
    f0 = 120.0 + 40.0 * np.sin(2 * np.pi * 0.9 * t)  # Hz
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30))
    syllables = np.clip(np.sin(2 * np.pi * 3.0 * t), 0.0, None)
    bursts = (np.sin(2 * np.pi * 3.0 * t + 2.5) > 0.7) * rng.standard_normal(num_samples)
    signal = 0.2 * voiced * syllables + 0.05 * bursts + 3e-4 * rng.standard_normal(num_samples)
    return (np.round(np.clip(signal, -1.0, 1.0) * 32767.0) / 32768.0).astype(np.float32)


def kaldi_native_fbank(samples: np.ndarray) -> np.ndarray:
    """(samples,) float in [-1, 1] -> (frames, 80) log-mel, via kaldi-native-fbank."""
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = 80
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(SAMPLE_RATE, samples * 32768.0)  # Kaldi reads int16-scale samples
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: allocations, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def ratio(ours_ms: float, peer_ms: float) -> str:
    return f"{peer_ms / ours_ms:.2f}x faster" if ours_ms <= peer_ms else f"{ours_ms / peer_ms:.2f}x slower"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per utterance, s")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per measurement")
    parser.add_argument("--batch", type=int, default=16, help="utterances in the batched measurement")
    args = parser.parse_args()

    config = FeatureConfig(kaldi_compat=True, num_mel_bins=80, low_freq=20.0, high_freq=0.0, dither=0.0, cmvn="none")
    num_samples = int(args.seconds * SAMPLE_RATE)
    # Batch of lengths from half to all of `seconds`, padded, as a length-bucketed loader would not quite give.
    lengths = torch.linspace(num_samples // 2, num_samples, args.batch).long()  # (batch,)
    utterances = [synthesize_audio(int(n), seed=i) for i, n in enumerate(lengths)]
    audio = torch.zeros(args.batch, num_samples)  # (batch, samples)
    for i, utterance in enumerate(utterances):
        audio[i, : len(utterance)] = torch.from_numpy(utterance)
    single = audio[-1]  # (samples,), the full-length utterance
    extractor = FeatureExtractor(config).eval()

    with torch.inference_mode():
        ours = compute_fbank(single, config).numpy()
        reference = kaldi_native_fbank(single.numpy())
        ours_single_ms = median_ms(lambda: compute_fbank(single, config), args.repeats)
        ours_batch_ms = median_ms(lambda: extractor(audio, lengths), args.repeats)
    peer_single_ms = median_ms(lambda: kaldi_native_fbank(single.numpy()), args.repeats)
    peer_batch_ms = median_ms(lambda: [kaldi_native_fbank(u) for u in utterances], max(1, args.repeats // 4))

    difference = np.abs(ours - reference)
    batch_seconds = float(lengths.sum()) / SAMPLE_RATE
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats} runs")
    print(f"single utterance, {args.seconds:g} s ({ours.shape[0]} frames x {ours.shape[1]} bins):")
    print(f"  asr compute_fbank      {ours_single_ms:8.2f} ms")
    print(f"  kaldi-native-fbank     {peer_single_ms:8.2f} ms")
    print(f"  asr is {ratio(ours_single_ms, peer_single_ms)}")
    print(f"batch of {args.batch} ({batch_seconds:.0f} s of audio, padded to {args.seconds:g} s):")
    print(f"  asr FeatureExtractor   {ours_batch_ms:8.2f} ms")
    print(f"  kaldi-native-fbank     {peer_batch_ms:8.2f} ms (one utterance at a time)")
    print(f"  asr is {ratio(ours_batch_ms, peer_batch_ms)}")
    print(
        f"log-mel |asr - kaldi-native-fbank|: max {difference.max():.2e}, "
        f"99.9th percentile {np.percentile(difference, 99.9):.2e}, mean {difference.mean():.2e}"
    )


if __name__ == "__main__":
    main()
