"""CUDA paths: run on a GPU when one is lent (skipped elsewhere by conftest)."""

import pytest
import torch

from asr.config import load_config
from asr.ctc import ctc_loss
from asr.train import LAST, train
from conftest import TINY_OVERRIDES

pytestmark = pytest.mark.cuda


def test_ctc_loss_runs_on_the_gpu_and_matches_cpu():
    torch.manual_seed(0)
    log_probs = torch.randn(4, 50, 12).log_softmax(-1)
    targets = torch.randint(1, 12, (4, 20))
    lengths, target_lengths = torch.tensor([50, 40, 30, 9]), torch.tensor([20, 15, 10, 20])
    cpu, cpu_ok = ctc_loss(log_probs, lengths, targets, target_lengths)
    gpu, gpu_ok = ctc_loss(log_probs.cuda(), lengths.cuda(), targets.cuda(), target_lengths.cuda())
    assert gpu.device.type == "cuda"
    assert gpu_ok.tolist() == cpu_ok.tolist() == [True, True, True, False]
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-3)


def test_training_step_on_cuda_with_bf16(noise_corpus, tmp_path):
    config = load_config(
        "configs/demo.yaml",
        [*TINY_OVERRIDES, f"data.train={noise_corpus['train']}", f"data.dev={noise_corpus['dev']}",
         f"train.out_dir={tmp_path}", "train.device=cuda", "train.amp=true", "train.epochs=1"],
    )
    train(config, show_progress=False)
    from asr.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / LAST)
    assert state["training_state"]["progress"]["step"] > 0
    assert all(torch.isfinite(v).all() for v in state["model"].values())
