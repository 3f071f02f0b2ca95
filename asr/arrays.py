"""numpy arrays or torch tensors: telling them apart without importing torch, so that the code
paths that run on numpy (the decoders of a runtime without torch) never import it."""

from __future__ import annotations

import sys

import numpy as np


def is_tensor(x) -> bool:
    """Whether x is a torch tensor. Asks torch only if something imported it already: without
    torch in the process, nothing can be a tensor."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(x, dtype=None) -> np.ndarray:
    """x (an array, a CPU tensor, a list) as a C-contiguous numpy array of `dtype` (its own if
    None), sharing memory where it can. A tensor on another device is a ValueError: moving it
    is the caller's decision."""
    if is_tensor(x):
        if x.device.type != "cpu":
            raise ValueError(f"expected CPU data, not a tensor on {x.device}")
        x = x.detach().numpy()
    return np.ascontiguousarray(x, dtype=dtype)
