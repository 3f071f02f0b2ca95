"""The one device decision: which torch device the model, features, loss and decoding run on."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """The one device decision: "auto" is CUDA when there is one, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
