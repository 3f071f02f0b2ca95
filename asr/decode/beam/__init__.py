"""CTC prefix beam search with optional n-gram LM fusion, over a batch.

The search keeps, per utterance, up to `beam_size` distinct label prefixes, each with two log
probabilities: p_b (all alignments of the prefix that end in blank) and p_nb (end in its last
label) (Graves 2012, ch. 7; Hannun et al. 2014, "First-pass LVCSR with CTC", alg. 1). At each
frame a prefix either stays (blank, or its last label repeated without a blank between) or
grows by one of the frame's candidate labels; a repeat of the last label only grows the prefix
from p_b, because without a blank between them two equal labels are one. A grown prefix that
equals another prefix still in the beam (l + c == l') is merged into it. Scores: log P_ctc(prefix)
+ lm_weight * ln P_lm(words) + word_bonus * num_words, the LM's part decided by a fusion object
(`asr.decode.fusion`).

One module per layout of that search, the dispatcher above them:

    search.py         decode_beam: checks the options, skips blank frames, picks a layout;
                      search_options: a decode config's options as decode_beam takes them
    flat.py           a flat list of live hypotheses, in torch ops: the reference
    dense.py          a fixed (utterance, beam) grid, a frame step replayed as a CUDA graph
    numba_loop.py     the flat list's search compiled by numba, a loop per utterance (CPU
                      default; numpy arrays in, no torch)
    triton_kernel.py  the dense grid's search as one Triton kernel (GPU)
    common.py         what they all share: options, Hypothesis; frame skipping and candidates
                      on numpy arrays
    common_torch.py   what the torch layouts share: the same frame selection in torch ops,
                      final scores of a grid

The layouts import `common`, `common_torch` (the torch ones) and `asr.decode.fusion`, never
`search` or each other. This package and `search` import no torch: a torch layout is imported
when it is asked for (or picked for tensors).
"""

from asr.decode.beam.common import Hypothesis
from asr.decode.beam.search import LAYOUTS, decode_beam, search_options, skip_blank_frames

__all__ = ["LAYOUTS", "Hypothesis", "decode_beam", "search_options", "skip_blank_frames"]
