"""Checkpoints: one file holds weights, the resolved config, the tokenizer and training state.

Written with `torch.save` to a temporary name and renamed (a kill never leaves half a file);
read with `torch.load(..., weights_only=True)`, so loading never unpickles arbitrary objects:
everything inside is tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from asr.config import Config, config_from_dict, config_to_dict
from asr.fileio import atomic_path
from asr.text import CharTokenizer, tokenizer_from_dict

FORMAT = "asr-checkpoint-v1"


class CheckpointError(ValueError):
    """A file that is not a loadable asr checkpoint; the message names it."""


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    config: Config,
    tokenizer: CharTokenizer,
    training_state: dict[str, Any] | None = None,
    label_log_prior: torch.Tensor | None = None,
    train_max_duration: float | None = None,
    cmvn_stats: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically. `training_state` (optimizer, scheduler, RNG, progress) is
    what `--resume` needs; a checkpoint without it still transcribes and evaluates.
    `label_log_prior` (vocab,): the label prior of a model trained with one (asr.ctc.LabelPrior).
    `train_max_duration` (s): the longest utterance it was trained on (speed perturbation
    included), from which long recordings' segment length is set. `cmvn_stats`: {"mean", "var"}
    (static_dim,) and "frames" (how many made them), the training set's statistics that
    features.cmvn "global" and "running" normalize with (asr.features.compute_cmvn_stats)."""
    state = {
        "format": FORMAT,
        "config": config_to_dict(config),
        "tokenizer": tokenizer.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if training_state is not None:
        state["training_state"] = training_state
    if label_log_prior is not None:
        state["label_log_prior"] = label_log_prior.detach().float().cpu()
    if train_max_duration is not None:
        state["train_max_duration"] = float(train_max_duration)
    if cmvn_stats is not None:
        state["cmvn_stats"] = {
            "mean": cmvn_stats["mean"].detach().float().cpu(),
            "var": cmvn_stats["var"].detach().float().cpu(),
            "frames": int(cmvn_stats["frames"]),
        }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with weights_only=True; `config` and `tokenizer` come back as objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or a pickle with arbitrary objects
        raise CheckpointError(f"{path}: not a loadable checkpoint: {e}".splitlines()[0]) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an {FORMAT} file")
    state["config"] = config_from_dict(state["config"])
    state["tokenizer"] = tokenizer_from_dict(state["tokenizer"])
    return state
