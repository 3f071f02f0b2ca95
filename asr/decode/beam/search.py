"""`decode_beam`: the prefix beam search's one entry point. It checks the options, skips blank
frames, and hands the batch to one of the layouts, which all run the same search:

    flat     a flat list of live hypotheses, in torch ops: the reference (`flat.py`)
    dense    a fixed (utterance, beam) grid, one frame step replayed as a CUDA graph (`dense.py`)
    triton   the dense grid's search as one Triton kernel, a program per utterance (`triton_kernel.py`)
    numba    the flat list's search compiled by numba, a loop per utterance (`numba_loop.py`)
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from asr.config import DecodeConfig
from asr.decode.beam.common import NEG_INF, BeamOptions, Hypothesis, skip_blank_frames
from asr.decode.beam.dense import decode_beam_dense
from asr.decode.beam.flat import decode_beam_flat
from asr.decode.fusion import Fusion
from asr.tokens import BLANK_ID

LAYOUTS = ("auto", "flat", "dense", "triton", "numba")  # decode_beam's layout (see its docstring)


@torch.inference_mode()
def decode_beam(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
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

    log_probs (batch, frames, vocab) log-softmax output, lengths (batch,).
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
    `asr.decode.beam.numba_loop`), or "auto":
    dense on CUDA, numba on the CPU (the flat list where numba does not import).
    """
    check_options(beam_size, token_top_k, token_cum_prob, beam_threshold, merge, layout)
    if log_probs.shape[0] == 0:
        return []
    log_probs = log_probs.float()
    lengths = lengths.to(log_probs.device)
    if blank_skip < 1.0:
        log_probs, lengths = skip_blank_frames(log_probs, lengths, blank_skip, blank)
    options = BeamOptions(beam_size, token_top_k, token_min_logp, token_cum_prob, beam_threshold, lm_weight, word_bonus, nbest, merge, blank)
    return layout_search(layout, log_probs.device)(log_probs, lengths, fusion, options)


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


def layout_search(layout: str, device: torch.device) -> Callable[..., list[list[Hypothesis]]]:
    """The search function of a layout ("auto": dense on CUDA, numba on the CPU, the flat list
    where numba does not import). numba and triton are imported only when asked for: an
    ImportError then says which is missing."""
    if layout == "auto":
        layout = "dense" if device.type == "cuda" else ("numba" if _have_numba() else "flat")
    if layout == "triton":
        from asr.decode.beam.triton_kernel import decode_beam_triton

        return decode_beam_triton
    if layout == "numba":
        from asr.decode.beam.numba_loop import decode_beam_numba

        return decode_beam_numba
    return decode_beam_dense if layout == "dense" else decode_beam_flat


def _have_numba() -> bool:
    """Whether numba imports (it compiles the CPU layout; without it, the flat list runs)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True
