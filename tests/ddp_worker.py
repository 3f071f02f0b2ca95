"""Run by tests/test_distributed.py under torchrun: `asr train` exactly as the CLI runs it,
with two observers installed first, so the test can see what each rank did.

- every batch a rank trains on is recorded (its utterance ids);
- the model each rank built is kept, and after training its weights are saved.

Usage: python -m torch.distributed.run ... tests/ddp_worker.py REPORT_DIR CONFIG [overrides...] [--resume]
"""

import json
import os
import sys
from pathlib import Path

import torch

import asr.train
from asr.cli import main

report_dir, argv = Path(sys.argv[1]), sys.argv[2:]
rank = int(os.environ["RANK"])
seen: list[list[str]] = []
built: list[torch.nn.Module] = []

compute_loss, build_model = asr.train.compute_loss, asr.train.build_model


def observed_compute_loss(model, features, batch, *args, **kwargs):
    seen.append(list(batch.ids))
    return compute_loss(model, features, batch, *args, **kwargs)


def observed_build_model(*args, **kwargs):
    built.append(build_model(*args, **kwargs))
    return built[-1]


asr.train.compute_loss, asr.train.build_model = observed_compute_loss, observed_build_model
code = main(["train", *argv])
report_dir.mkdir(parents=True, exist_ok=True)
(report_dir / f"rank{rank}.json").write_text(json.dumps({"code": code, "batches": seen, "threads": torch.get_num_threads()}))
torch.save({k: v.detach().cpu() for k, v in built[0].state_dict().items()}, report_dir / f"rank{rank}.pt")
sys.exit(code)
