"""`decode_beam`: the prefix beam search's one entry point. It checks the options, skips blank
frames, and hands the batch to one of the layouts, which all run the same search:

    flat     a flat list of live hypotheses, in torch ops: the reference (`flat.py`)
    dense    a fixed (utterance, beam) grid, one frame step replayed as a CUDA graph (`dense.py`)
    triton   the dense grid's search as one Triton kernel, a program per utterance (`triton_kernel.py`)
    numba    the flat list's search compiled by numba, a loop per utterance (`numba_loop.py`)

numpy log-probs go to the numba layout, which imports no torch; torch tensors go to any layout
(the torch ones are imported only then).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from asr.arrays import is_tensor, to_numpy
from asr.config import DecodeConfig
from asr.decode.beam import common
from asr.decode.beam.common import NEG_INF, BeamOptions, Hypothesis
from asr.decode.fusion import Fusion
from asr.tokens import BLANK_ID

LAYOUTS = ("auto", "flat", "dense", "triton", "numba")  # decode_beam's layout (see its docstring)


def decode_beam(
    log_probs,
    lengths,
    beam_size: int = 16,
    token_top_k: int = 16,
    token_min_logp: float = NEG_INF,
    token_cum_prob: float = 1.0,
    beam_threshold: float = math.inf,
    blank_skip: float = 1.0,
    fusion: Fusion | None = None,
    lm_weight: float = 0.5,
    word_bonus: float = 0.0,
    nbest: int = 1,
    merge: str = "sum",
    blank: int = BLANK_ID,
    layout: str = "auto",
) -> list[list[Hypothesis]]:
    """Prefix beam search over a batch; returns the `nbest` best hypotheses per utterance, best first.

    log_probs (batch, frames, vocab) log-softmax output, lengths (batch,): numpy arrays (decoded
    by the numba layout, without torch) or torch tensors (any layout, on their device).
    token_top_k: labels tried per frame (the frame's most probable non-blank labels);
    token_min_logp: and only those with log prob at least this;
    token_cum_prob: and only the frame's most probable labels (blank included) whose probabilities
    first add up to this (ctcdecode's cutoff_prob; 1.0 = all);
    beam_threshold: drop prefixes whose score is more than this below the utterance's best;
    blank_skip: frames whose blank probability exceeds it are skipped after the first of a run
    (1.0 = never); merge: "sum" adds the probabilities of alignments of the same prefix (prefix
    search), "max" keeps the best one (Viterbi; with beam 1 and no LM this is exactly greedy);
    layout: "flat" (a list of live hypotheses, in torch ops: `asr.decode.beam.flat`), "dense"
    (the same search on a fixed (utterance, beam) grid, replayed as a CUDA graph on a GPU:
    `asr.decode.beam.dense`), "triton" (the dense grid's search as one Triton kernel, a program
    per utterance: CUDA only, or Triton's interpreter; `asr.decode.beam.triton_kernel`), "numba"
    (the flat list's search compiled by numba, a loop per utterance: CPU only;
    `asr.decode.beam.numba_loop`), or "auto": dense on CUDA, numba on the CPU and for numpy
    arrays (the flat list where numba does not import, for tensors).
    """
    check_options(beam_size, token_top_k, token_cum_prob, beam_threshold, merge, layout)
    options = BeamOptions(beam_size, token_top_k, token_min_logp, token_cum_prob, beam_threshold, lm_weight, word_bonus, nbest, merge, blank)
    if not is_tensor(log_probs):
        if layout in ("auto", "numba"):
            return _decode_numba(np.asarray(log_probs), to_numpy(lengths), blank_skip, fusion, options)
        import torch  # a torch layout asked for by name: the arrays as tensors

        log_probs, lengths = torch.from_numpy(np.asarray(log_probs)), torch.from_numpy(to_numpy(lengths))
    if log_probs.shape[0] == 0:
        return []
    return _decode_tensors(log_probs, lengths, blank_skip, fusion, options, pick_layout(layout, log_probs.device.type))


def _decode_numba(log_probs: np.ndarray, lengths: np.ndarray, blank_skip: float, fusion: Fusion | None, options: BeamOptions) -> list[list[Hypothesis]]:
    """decode_beam on numpy arrays: the numba layout, the frames skipped and their candidates
    picked on numpy arrays too."""
    if log_probs.shape[0] == 0:
        return []
    log_probs, lengths = np.ascontiguousarray(log_probs, dtype=np.float32), np.ascontiguousarray(lengths, dtype=np.int64)
    if blank_skip < 1.0:
        log_probs, lengths = common.skip_blank_frames(log_probs, lengths, blank_skip, options.blank)
    return _numba_search()(log_probs, lengths, fusion, options)


def _decode_tensors(log_probs, lengths, blank_skip: float, fusion: Fusion | None, options: BeamOptions, layout: str) -> list[list[Hypothesis]]:
    """decode_beam on torch tensors: frames skipped on their device, then a torch layout (flat,
    dense, triton), or the numba layout with the frames' candidates picked in torch."""
    import torch

    from asr.decode.beam import common_torch

    with torch.inference_mode():
        log_probs = log_probs.float()
        lengths = lengths.to(log_probs.device)
        if blank_skip < 1.0:
            log_probs, lengths = common_torch.skip_blank_frames(log_probs, lengths, blank_skip, options.blank)
        if layout != "numba":
            return torch_layout_search(layout)(log_probs, lengths, fusion, options)
        if log_probs.device.type != "cpu":
            raise ValueError(f"the numba layout runs on the CPU, not on {log_probs.device.type}")
        search = _numba_search()
        candidates = common_torch.frame_candidates(log_probs, lengths, options.token_top_k, options.token_min_logp, options.blank, options.token_cum_prob)
        return search(to_numpy(log_probs), to_numpy(lengths, np.int64), fusion, options, tuple(to_numpy(c) for c in candidates))


def _numba_search() -> Callable[..., list[list[Hypothesis]]]:
    """The numba layout's search (`numba_loop.decode_beam_numba`): an ImportError says numba is missing."""
    try:
        from asr.decode.beam.numba_loop import decode_beam_numba
    except ImportError as e:
        raise ImportError(f"the numba layout of the beam search needs numba: pip install numba ({e})") from e
    return decode_beam_numba


def skip_blank_frames(log_probs, lengths, threshold: float, blank: int = BLANK_ID):
    """Drop frames whose blank probability exceeds `threshold` when the frame before did too
    (the first of each run is kept, so a label repeated across the run still reads as two).
    log_probs (batch, frames, vocab), lengths (batch,) -> compacted copies of both: numpy arrays
    (`common.skip_blank_frames`), or torch tensors on their device (`common_torch.skip_blank_frames`)."""
    if is_tensor(log_probs):
        from asr.decode.beam.common_torch import skip_blank_frames as skip_tensors

        return skip_tensors(log_probs, lengths.to(log_probs.device), threshold, blank)
    return common.skip_blank_frames(np.asarray(log_probs), to_numpy(lengths), threshold, blank)


def check_options(beam_size: int, token_top_k: int, token_cum_prob: float, beam_threshold: float, merge: str, layout: str) -> None:
    """ValueError naming the first of decode_beam's options that is out of range."""
    if merge not in ("sum", "max"):
        raise ValueError(f"merge must be 'sum' or 'max', not {merge!r}")
    if not 0.0 < token_cum_prob <= 1.0:
        raise ValueError(f"token_cum_prob must be in (0, 1], not {token_cum_prob}")
    if beam_size < 1 or token_top_k < 1:
        raise ValueError("beam_size and token_top_k must be at least 1")
    if not beam_threshold > 0:
        raise ValueError(f"beam_threshold must be positive, not {beam_threshold}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")


def search_options(decode: DecodeConfig) -> dict:
    """The search options a decode config sets, as `decode_beam` (and the streaming
    `asr.decode.incremental.BeamStream`) take them as keywords: the one mapping of the two."""
    return {
        "beam_size": decode.beam_size, "token_top_k": decode.token_top_k, "token_min_logp": decode.token_min_logp,
        "token_cum_prob": decode.token_cum_prob, "beam_threshold": decode.beam_threshold,
        "lm_weight": decode.lm_weight, "word_bonus": decode.word_bonus,
    }


def pick_layout(layout: str, device_type: str) -> str:
    """The layout "auto" means for tensors on a device of this type: dense on CUDA, numba on the
    CPU, the flat list where numba does not import; any other layout is itself."""
    if layout != "auto":
        return layout
    return "dense" if device_type == "cuda" else ("numba" if _have_numba() else "flat")


def torch_layout_search(layout: str) -> Callable[..., list[list[Hypothesis]]]:
    """The search function of a torch layout (flat, dense, triton), imported when asked for:
    triton's ImportError then says that it is missing."""
    if layout == "triton":
        from asr.decode.beam.triton_kernel import decode_beam_triton

        return decode_beam_triton
    if layout == "dense":
        from asr.decode.beam.dense import decode_beam_dense

        return decode_beam_dense
    from asr.decode.beam.flat import decode_beam_flat

    return decode_beam_flat


def _have_numba() -> bool:
    """Whether numba imports (it compiles the CPU layout; without it, the flat list runs)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True
