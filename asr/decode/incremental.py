"""Streaming decoding (issue 21): log-probs arrive a chunk of frames at a time and the decoder
keeps its state across chunks, so that the best hypothesis so far can be read after every
chunk and the final one at the end of the utterance.

Both decoders share one interface: `advance(log_probs)` with the next frames, `best()` and
`finish()` (labels, and the frame each was emitted at), `reset()` for the next utterance, and
`num_frames` / `trailing_blanks` for endpoint rules.

    GreedyStream  best path (`asr.decode.greedy`), one argmax run at a time
    BeamStream    the prefix beam search with optional LM fusion, as the numba layout runs it
                  (`asr.decode.beam.numba_loop`): its live hypotheses carry over from chunk to
                  chunk, its back-pointers gather in a buffer that grows by doubling

Over a whole utterance, any chunking gives exactly the offline decoder's labels: greedy's
`decode_greedy`, and for the beam `decode_beam(..., layout="numba", blank_skip=1.0)` (frames
are never skipped: whether a frame is skippable depends on the one before it, and the search
is the same either way, only cheaper).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from asr.config import DecodeConfig
from asr.decode.beam.common import NEG_INF, BeamOptions
from asr.decode.beam.common_torch import frame_candidates
from asr.decode.beam.search import check_options, search_options
from asr.decode.fusion import Fusion
from asr.tokens import BLANK_ID

HISTORY_FRAMES = 256  # back-pointer frames a BeamStream holds before it first grows the buffer


class GreedyStream:
    """Best path, incremental: argmax per frame, repeats merged, blanks dropped; a label's
    emission frame is the first frame of its run."""

    def __init__(self, blank: int = BLANK_ID):
        self.blank = blank
        self.reset()

    def reset(self) -> None:
        """A new utterance: every per-utterance state dropped."""
        self.num_frames = 0  # frames advanced since reset
        self.trailing_blanks = 0  # frames since the last one whose argmax was not blank
        self._last = -1  # the previous frame's argmax (-1: none yet, so the first frame starts a run)
        self._labels: list[int] = []
        self._frames: list[int] = []

    @torch.inference_mode()
    def advance(self, log_probs: torch.Tensor) -> None:
        """The next frames of the utterance: log_probs (frames, vocab), frames >= 0."""
        if log_probs.shape[0] == 0:
            return
        best = log_probs.argmax(dim=-1).tolist()  # (frames,)
        for t, c in enumerate(best, start=self.num_frames):
            if c != self._last and c != self.blank:
                self._labels.append(c)
                self._frames.append(t)
            self._last = c
        self.trailing_blanks = _trailing_blanks(best, self.blank, self.trailing_blanks)
        self.num_frames += len(best)

    def best(self) -> tuple[list[int], list[int]]:
        """The labels so far and, for each, the frame (from the utterance's start) it was emitted at."""
        return list(self._labels), list(self._frames)

    def finish(self) -> tuple[list[int], list[int]]:
        """The final labels and their frames (greedy has no end-of-utterance terms: `best()`)."""
        return self.best()


class BeamStream:
    """The prefix beam search (`decode_beam`'s options, fusion included), incremental, as the
    numba layout runs it: the live hypotheses stay between chunks, and a label's emission frame
    is the frame where the best hypothesis's back-pointer path added it. That is the frame its
    prefix entered the beam (a later grow into a live prefix joins it), so with no
    beam_threshold an unlikely early entry that survives dates its label early.

    The search's tables are made at the first frames (they depend on the vocabulary) and kept
    across `reset`; the back-pointers are per utterance: (history_capacity, 1, beam) int32
    buffers, doubled when full, back to HISTORY_FRAMES at reset.
    """

    def __init__(
        self,
        beam_size: int = 16,
        token_top_k: int = 16,
        token_min_logp: float = NEG_INF,
        token_cum_prob: float = 1.0,
        beam_threshold: float = math.inf,
        fusion: Fusion | None = None,
        lm_weight: float = 0.5,
        word_bonus: float = 0.0,
        merge: str = "sum",
        blank: int = BLANK_ID,
    ):
        check_options(beam_size, token_top_k, token_cum_prob, beam_threshold, merge, "numba")
        try:
            import asr.decode.beam.numba_loop as numba_loop
        except ImportError as err:
            raise ValueError(f"streaming beam search runs the numba layout: install numba ({err})") from err
        self._search = numba_loop
        self.fusion = fusion
        self.options = BeamOptions(beam_size, token_top_k, token_min_logp, token_cum_prob, beam_threshold, lm_weight, word_bonus, 1, merge, blank)
        self._setup = None  # numba_loop.SearchSetup, at the first frames
        self._vocab = 0
        self.reset()

    def reset(self) -> None:
        """A new utterance: every per-utterance state dropped (the hypotheses, the back-pointers)."""
        self.num_frames = 0  # frames advanced since reset
        self.trailing_blanks = 0  # frames since the last one whose argmax was not blank
        beam = self.options.beam_size
        self._parent = np.empty((HISTORY_FRAMES, 1, beam), np.int32)  # (capacity, 1, beam) back-pointers: parent slot
        self._label = np.empty((HISTORY_FRAMES, 1, beam), np.int32)  # ... and the label added, -1 for none
        self._hypotheses = None if self._setup is None else self._search.start_hypotheses(1, self._setup)

    @property
    def history_capacity(self) -> int:
        """Frames the back-pointer buffers hold before they grow again."""
        return self._parent.shape[0]

    @torch.inference_mode()
    def advance(self, log_probs: torch.Tensor) -> None:
        """The next frames of the utterance: log_probs (frames, vocab) float32 log-softmax, frames >= 0."""
        frames, vocab = log_probs.shape
        if frames == 0:
            return
        if log_probs.device.type != "cpu":
            raise ValueError(f"streaming beam search runs on the CPU, not on {log_probs.device.type}")
        if self._setup is None:
            self._setup = self._search.search_setup(self.fusion, self.options, vocab)
            self._vocab = vocab
            self._hypotheses = self._search.start_hypotheses(1, self._setup)
        elif vocab != self._vocab:
            raise ValueError(f"log-probs of {vocab} labels, after chunks of {self._vocab}")
        start, end = self.num_frames, self.num_frames + frames
        if end > self.history_capacity:
            self._grow_history(end)
        log_probs = log_probs.float().contiguous()[None]  # (1, frames, vocab)
        lengths = torch.tensor([frames])
        o = self.options
        candidates = tuple(c.numpy() for c in frame_candidates(log_probs, lengths, o.token_top_k, o.token_min_logp, o.blank, o.token_cum_prob))
        self._search.search_frames(log_probs.numpy(), lengths.numpy(), self._hypotheses, self._parent[start:end], self._label[start:end], self._setup, candidates)
        self.trailing_blanks = _trailing_blanks(log_probs[0].argmax(dim=-1).tolist(), o.blank, self.trailing_blanks)
        self.num_frames = end

    def _grow_history(self, frames: int) -> None:
        """Room for `frames` frames of back-pointers, at least double the old (amortized O(1) a frame)."""
        capacity = max(frames, 2 * self.history_capacity)
        for name in ("_parent", "_label"):
            old = getattr(self, name)
            new = np.empty((capacity,) + old.shape[1:], old.dtype)
            new[: self.num_frames] = old[: self.num_frames]
            setattr(self, name, new)

    def best(self) -> tuple[list[int], list[int]]:
        """The best hypothesis so far by its current score (acoustic + lm_weight * ln P_lm +
        word_bonus * words, without the end-of-sentence LM terms): its labels and, for each,
        the frame (from the utterance's start) that added it. The search keeps its live
        hypotheses best first by that score, so it is the first."""
        if self._hypotheses is None or self._hypotheses[2][0] == 0:
            return [], []
        return self._search.trace_path(self._parent[: self.num_frames], self._label[: self.num_frames], 0)

    @torch.inference_mode()
    def finish(self) -> tuple[list[int], list[int]]:
        """The final best: the live hypotheses scored as `decode_beam` scores them at the end
        (the fusion's final LM terms added), labels and frames as in `best()`. Changes nothing:
        calling it again, or advancing after it, is as if it had not been called."""
        if self._hypotheses is None:
            return [], []
        scores = self._search.final_scores(self._hypotheses, self._setup)[0][0]  # (beam,)
        slot = int(np.argsort(-scores, kind="stable")[0])  # (decode_beam's order: ties to the earlier slot)
        if not scores[slot] > NEG_INF:
            return [], []
        return self._search.trace_path(self._parent[: self.num_frames], self._label[: self.num_frames], slot)


def _trailing_blanks(best: list[int], blank: int, before: int) -> int:
    """Frames since the last non-blank one, after frames whose argmax labels are `best`, given
    `before` such frames ahead of them."""
    for back, c in enumerate(reversed(best)):
        if c != blank:
            return back
    return before + len(best)


def make_stream_decoder(decode: DecodeConfig, fusion: Fusion | None = None, blank: int = BLANK_ID, nbest: int = 1) -> GreedyStream | BeamStream:
    """The streaming decoder a decode config asks for: GreedyStream for decoder="greedy",
    BeamStream for "beam" with the options `Recognizer.decode_nbest` gives `decode_beam`, less
    blank_skip and beam_layout (streaming searches every frame, in the numba layout). One best
    hypothesis only: nbest > 1 is a ValueError, as is a beam decoder without numba."""
    if nbest != 1:
        raise ValueError(f"streaming decoders keep one best hypothesis, not nbest={nbest}")
    if decode.decoder == "greedy":
        return GreedyStream(blank)
    if decode.decoder != "beam":
        raise ValueError(f"decoder must be 'greedy' or 'beam', not {decode.decoder!r}")
    return BeamStream(fusion=fusion, blank=blank, **search_options(decode))
