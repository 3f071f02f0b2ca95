import math
import random

import numpy as np
import pytest
import torch

from asr.config import DecodeConfig
from asr.decode import decode_greedy
from asr.decode.arpa import write_arpa
from asr.decode.beam import decode_beam
from asr.decode.fusion import TokenLMFusion, make_fusion
from asr.decode.incremental import HISTORY_FRAMES, BeamStream, GreedyStream, make_stream_decoder
from asr.decode.kn import estimate_kneser_ney
from asr.text import CharTokenizer

numba = pytest.importorskip("numba", reason="BeamStream runs the numba layout")

OPTIONS = dict(beam_size=8, token_top_k=4, token_min_logp=-8.0, beam_threshold=8.0, lm_weight=0.9, word_bonus=0.6)


@pytest.fixture(scope="module")
def arpa(tmp_path_factory):
    """A word 3-gram over a few made-up sentences in the letters a-f (as test_beam.py builds them)."""
    rng = random.Random(3)
    words = ["".join(rng.choice("abcdef") for _ in range(rng.randint(1, 4))) for _ in range(40)]
    path = tmp_path_factory.mktemp("lm") / "w.arpa"
    write_arpa(path, estimate_kneser_ney([[rng.choice(words) for _ in range(rng.randint(2, 6))] for _ in range(80)], 3))
    return str(path)


def fusion_for(arpa, unit):
    tok = CharTokenizer()
    if unit is None:
        return None
    fusion = make_fusion(arpa, tok, unit=unit.split("-")[0])
    return TokenLMFusion(fusion.lm, tok.symbols, table_limit=0) if unit == "token-no-table" else fusion


def peaky_log_probs(seed, frames, vocab=CharTokenizer().vocab_size):
    """(frames, vocab) log-probs as a trained CTC model's: blank wins most frames, with long blank runs."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(frames, vocab, generator=g) * 3.0
    logits[:, 7:] -= 3.0  # the letters a-f (1 is the space) are the likely ones, as the LM's words are
    logits[:, 0] += 4.0 * (torch.rand(frames, generator=g) < 0.6)
    start = int(torch.randint(0, frames, (1,), generator=g))
    logits[start : start + frames // 4, 0] += 30.0  # a pause
    return logits.log_softmax(-1)


def chunked(log_probs, seed):
    """log_probs cut into random chunks of 0 to 10 frames, some of 0 and 1."""
    rng = random.Random(seed)
    at = 0
    while at < log_probs.shape[0]:
        size = rng.choice([0, 1, 1, 2, 4, 7, 10])
        yield log_probs[at : at + size]
        at += size


def offline_beam(log_probs, fusion):
    """decode_beam's best over the whole of log_probs (frames, vocab), in the layout BeamStream runs."""
    hyps = decode_beam(log_probs[None], torch.tensor([log_probs.shape[0]]), layout="numba", blank_skip=1.0, fusion=fusion, **OPTIONS)[0]
    return hyps[0].ids if hyps else []


def check_frames(ids, at_frame, num_frames):
    assert len(ids) == len(at_frame)
    assert at_frame == sorted(at_frame)
    assert all(0 <= t < num_frames for t in at_frame)


@pytest.mark.parametrize("unit", [None, "word", "token", "token-no-table"])
@pytest.mark.parametrize("seed", range(3))
def test_beam_stream_in_any_chunks_is_the_offline_search(arpa, unit, seed):
    # after every chunk the stream's live hypotheses are those of the offline search over the
    # frames so far, so finish() there is decode_beam over that prefix; at the end, over all
    fusion = fusion_for(arpa, unit)
    lp = peaky_log_probs(seed, 90)
    stream = BeamStream(fusion=fusion, **OPTIONS)
    for chunk in chunked(lp, seed):
        stream.advance(chunk)
        ids, at_frame = stream.finish()
        assert ids == offline_beam(lp[: stream.num_frames], fusion)
        check_frames(ids, at_frame, stream.num_frames)
        check_frames(*stream.best(), stream.num_frames)
    assert stream.num_frames == lp.shape[0]
    assert stream.finish() == stream.finish()
    assert stream.finish()[0] == offline_beam(lp, fusion)


@pytest.mark.parametrize("seed", range(3))
def test_beam_stream_best_without_lm_is_the_offline_best_so_far(seed):
    # without an LM there are no end-of-sentence terms: best() is the offline search's best
    lp = peaky_log_probs(seed + 10, 70)
    stream = BeamStream(**OPTIONS)
    for chunk in chunked(lp, seed):
        stream.advance(chunk)
        assert stream.best()[0] == offline_beam(lp[: stream.num_frames], None)
        assert stream.best() == stream.finish()


@pytest.mark.parametrize("unit", ["word", "token"])
def test_beam_stream_best_is_the_offline_best_without_the_final_lm_terms(arpa, unit):
    # best() ranks by the score so far: decode_beam over the frames so far ranks so too when
    # its fusion's end-of-sentence terms (</s>, an unfinished word) add nothing
    fusion, unfinished = fusion_for(arpa, unit), fusion_for(arpa, unit)
    unfinished.final_scores = lambda state: (np.zeros(state.shape[0], np.float32), np.zeros(state.shape[0], np.float32))  # (numpy, as the numba layout asks)
    lp = peaky_log_probs(4, 80)
    stream = BeamStream(fusion=fusion, **OPTIONS)
    differ = 0
    for chunk in chunked(lp, 4):
        stream.advance(chunk)
        assert stream.best()[0] == offline_beam(lp[: stream.num_frames], unfinished)
        differ += stream.best() != stream.finish()
    assert differ  # (and the final terms do change the best somewhere)


def test_beam_emission_frames_are_where_the_path_adds_each_label():
    # a a _ b _ _ a: the path adds a at frame 0 (the repeat at 1 is the same a), b at 3, a at 6.
    # (A prefix is dated by the frame it entered the beam: later grows into it join it. Without
    # the threshold, "a b" would enter at frame 1, at -30, and stay to be joined at frame 3.)
    lp = torch.full((7, 4), -30.0)
    for t, c in enumerate([1, 1, 0, 2, 0, 0, 1]):
        lp[t, c] = 0.0
    lp = lp.log_softmax(-1)
    for stream in (BeamStream(beam_size=4, beam_threshold=10.0), GreedyStream()):
        for chunk in chunked(lp, 0):
            stream.advance(chunk)
        assert stream.finish() == ([1, 2, 1], [0, 3, 6])
        assert stream.trailing_blanks == 0
        stream.advance(lp[2:3])
        assert stream.trailing_blanks == 1 and stream.num_frames == 8


@pytest.mark.parametrize("seed", range(4))
def test_greedy_stream_in_any_chunks_is_decode_greedy(seed):
    lp = peaky_log_probs(seed, 80)
    stream = GreedyStream()
    best = lp.argmax(-1).tolist()
    for chunk in chunked(lp, seed):
        stream.advance(chunk)
        t = stream.num_frames
        ids, at_frame = stream.best()
        assert ids == decode_greedy(lp[None, :t], torch.tensor([t]))[0]
        check_frames(ids, at_frame, t)
        for c, start in zip(ids, at_frame):  # the first frame of its run
            assert best[start] == c and (start == 0 or best[start - 1] != c)
        non_blank = [u for u in range(t) if best[u] != 0]
        assert stream.trailing_blanks == t - 1 - (non_blank[-1] if non_blank else -1)
    assert stream.finish() == stream.best()


@pytest.mark.parametrize("kind", ["greedy", "beam"])
def test_reset_gives_a_fresh_decoder(arpa, kind):
    fusion = fusion_for(arpa, "word")
    decode = DecodeConfig(decoder=kind, **OPTIONS)
    used, fresh = make_stream_decoder(decode, fusion), make_stream_decoder(decode, fusion)
    for chunk in chunked(peaky_log_probs(1, 60), 1):
        used.advance(chunk)
    used.reset()
    assert (used.num_frames, used.trailing_blanks, used.best(), used.finish()) == (0, 0, ([], []), ([], []))
    lp = peaky_log_probs(2, 50)
    for chunk in chunked(lp, 2):
        used.advance(chunk)
        fresh.advance(chunk)
        assert used.best() == fresh.best()
        assert (used.num_frames, used.trailing_blanks) == (fresh.num_frames, fresh.trailing_blanks)
    assert used.finish() == fresh.finish()


def test_reset_releases_the_back_pointers_of_a_long_utterance():
    stream = BeamStream(beam_size=16, token_top_k=8)
    lp = peaky_log_probs(0, 3 * HISTORY_FRAMES)
    for at in range(0, lp.shape[0], 9):
        stream.advance(lp[at : at + 9])
    assert stream.history_capacity >= 3 * HISTORY_FRAMES
    assert stream.finish()[0] == decode_beam(lp[None], torch.tensor([lp.shape[0]]), beam_size=16, token_top_k=8, layout="numba")[0][0].ids
    stream.reset()
    assert stream.history_capacity == HISTORY_FRAMES


def test_make_stream_decoder_maps_the_decode_config(arpa):
    fusion = fusion_for(arpa, "token")
    decode = DecodeConfig(decoder="beam", beam_size=5, token_top_k=3, token_min_logp=-7.0, token_cum_prob=0.95, beam_threshold=9.0, lm_weight=0.3, word_bonus=0.2)
    stream = make_stream_decoder(decode, fusion, blank=0)
    assert isinstance(stream, BeamStream) and stream.fusion is fusion
    o = stream.options
    assert (o.beam_size, o.token_top_k, o.token_min_logp, o.token_cum_prob, o.beam_threshold, o.lm_weight, o.word_bonus, o.merge, o.blank) == (5, 3, -7.0, 0.95, 9.0, 0.3, 0.2, "sum", 0)
    assert isinstance(make_stream_decoder(DecodeConfig(decoder="greedy")), GreedyStream)
    with pytest.raises(ValueError, match="nbest"):
        make_stream_decoder(decode, fusion, nbest=2)
    with pytest.raises(ValueError, match="decoder"):
        make_stream_decoder(DecodeConfig(decoder="viterbi"))
    with pytest.raises(ValueError, match="beam_threshold"):
        BeamStream(beam_threshold=0.0)


def test_beam_stream_without_numba_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "numba", None)
    monkeypatch.delitem(__import__("sys").modules, "asr.decode.beam.numba_loop", raising=False)
    with pytest.raises(ValueError, match="numba"):
        make_stream_decoder(DecodeConfig(decoder="beam"))
    assert isinstance(make_stream_decoder(DecodeConfig(decoder="greedy")), GreedyStream)


def test_offline_beam_matches_at_the_default_sizes(arpa):
    # the CPU default's sizes (beam 16, top-k 8), merge "max" too, frames of a long pause
    fusion = fusion_for(arpa, "word")
    lp = peaky_log_probs(9, 200)
    for merge in ("sum", "max"):
        options = dict(beam_size=16, token_top_k=8, token_min_logp=-10.0, beam_threshold=15.0, lm_weight=0.5, word_bonus=1.0, merge=merge)
        stream = BeamStream(fusion=fusion, **options)
        for chunk in chunked(lp, 9):
            stream.advance(chunk)
        offline = decode_beam(lp[None], torch.tensor([200]), layout="numba", fusion=fusion, **options)[0][0]
        assert stream.finish()[0] == offline.ids
        assert not math.isinf(offline.score)
