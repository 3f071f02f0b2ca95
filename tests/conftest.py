import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

# Without a GPU, Triton's kernels (asr.decode.beam.triton_kernel) run on CPU tensors through its
# interpreter, which `triton.jit` picks when TRITON_INTERPRET=1 is set as triton (its own
# library functions included) and the kernel module are imported: so it is set here, before
# any test imports either. On a GPU machine the kernel runs compiled, in the CUDA tests.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def write_noise_corpus(root: Path, num_train: int = 16, num_dev: int = 4, seed: int = 0) -> dict[str, Path]:
    """Manifests over short noise bursts with fixed texts: enough to drive the training loop."""
    rng = np.random.default_rng(seed)
    texts = ["hello world", "a cat sat", "no", "it is good"]
    manifests = {}
    for split, count in (("train", num_train), ("dev", num_dev)):
        lines = []
        for i in range(count):
            duration = float(rng.uniform(0.6, 1.4))
            samples = (0.1 * rng.standard_normal(int(duration * 16000))).astype(np.float32)
            path = root / "wav" / f"{split}{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, samples, 16000)
            lines.append({"id": f"{split}{i}", "audio": f"wav/{split}{i}.wav", "duration": duration, "text": texts[i % 4]})
        manifests[split] = root / f"{split}.jsonl"
        manifests[split].write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifests


@pytest.fixture
def noise_corpus(tmp_path):
    return write_noise_corpus(tmp_path)


TINY_OVERRIDES = [
    "model.hidden_size=16",
    "model.num_layers=2",
    "features.num_mel_bins=20",
    "features.stack_frames=2",
    "features.subsample=2",
    "data.batch_seconds=4",
    "optim.warmup_steps=2",
    "train.log_every=2",
    "train.epochs=2",
    "model.frame_head=false",  # configs/demo.yaml has one; these corpora carry no word times to train it
]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
