import itertools
import json
import math
import os

import numpy as np
import pytest
import torch

from asr.cli import main
from asr.decode import decode_greedy
from asr.decode.beam import decode_beam, skip_blank_frames
from asr.decode.fusion import TokenLMFusion, WordLMFusion, make_fusion
from asr.decode.kn import estimate_kneser_ney
from asr.decode.arpa import write_arpa
from asr.decode.lm import NGramLM
from asr.text import CharTokenizer

try:  # the Triton kernel (asr.decode.beam.triton_kernel): compiled on a GPU, interpreted on CPU tensors (see conftest.py)
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False
INTERPRETABLE = HAVE_TRITON and os.environ.get("TRITON_INTERPRET") == "1"
TRITON = pytest.param("triton", marks=pytest.mark.skipif(not INTERPRETABLE, reason="needs triton (interpreted, on a machine without a GPU)"))
try:  # the compiled CPU loop (asr.decode.beam.numba_loop), decode_beam's default on the CPU
    import numba  # noqa: F401

    HAVE_NUMBA = True
except ImportError:
    HAVE_NUMBA = False
NUMBA = pytest.param("numba", marks=pytest.mark.skipif(not HAVE_NUMBA, reason="needs numba"))
LAYOUTS = ["flat", "dense", TRITON, NUMBA]


def frames(*rows, vocab):
    """Per-frame probability dicts {label: p} -> log-probs (1, frames, vocab); unlisted labels share the rest."""
    out = torch.zeros(len(rows), vocab)
    for t, row in enumerate(rows):
        rest = (1.0 - sum(row.values())) / max(vocab - len(row), 1)
        out[t] = torch.tensor([row.get(c, rest) for c in range(vocab)]).clamp(min=1e-12)
    return out.log()[None]


def brute_force(log_probs):
    """ln P(label sequence) for every sequence, summing over every alignment: (frames, vocab) -> dict."""
    T, V = log_probs.shape
    totals = {}
    for path in itertools.product(range(V), repeat=T):
        labels, prev = [], 0
        for c in path:
            if c != 0 and c != prev:
                labels.append(c)
            prev = c
        score = sum(log_probs[t, c].item() for t, c in enumerate(path))
        key = tuple(labels)
        totals[key] = float(torch.logaddexp(torch.tensor(totals.get(key, -math.inf)), torch.tensor(score)))
    return totals


@pytest.mark.parametrize("layout", LAYOUTS)
def test_blank_trap_beam_beats_greedy(layout):
    # each frame: blank 0.6, a 0.4. Greedy: "" (0.36). But "a" has 0.4*0.4 + 2*0.4*0.6 = 0.64.
    lp = frames({0: 0.6, 1: 0.4}, {0: 0.6, 1: 0.4}, vocab=2)
    assert decode_greedy(lp, torch.tensor([2])) == [[]]
    [best] = decode_beam(lp, torch.tensor([2]), beam_size=4, layout=layout)[0][:1]
    assert best.ids == [1]
    assert best.acoustic == pytest.approx(math.log(0.64), abs=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_repeat_trap_beam_beats_greedy(layout):
    # greedy reads a,blank,a as "aa" (0.24); "a" collects a a a, a a _, a _ _ = 0.21 + 0.14 + 0.16 = 0.51
    lp = frames({1: 1.0}, {0: 0.4, 1: 0.35, 2: 0.25}, {1: 0.6, 0: 0.4}, vocab=3)
    assert decode_greedy(lp, torch.tensor([3])) == [[1, 1]]
    hyps = decode_beam(lp, torch.tensor([3]), beam_size=4, nbest=2, layout=layout)[0]
    assert [h.ids for h in hyps] == [[1], [1, 1]]
    assert hyps[0].acoustic == pytest.approx(math.log(0.51), abs=1e-5)
    assert hyps[1].acoustic == pytest.approx(math.log(0.24), abs=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_brute_force_over_all_alignments(seed, layout):
    torch.manual_seed(seed)
    T, V = 5, 4
    lp = (2 * torch.randn(1, T, V)).log_softmax(-1)
    truth = brute_force(lp[0])
    hyps = decode_beam(lp, torch.tensor([T]), beam_size=128, token_top_k=V, nbest=8, layout=layout)[0]
    ranked = sorted(truth, key=truth.get, reverse=True)
    assert [tuple(h.ids) for h in hyps] == ranked[: len(hyps)]
    for h in hyps:
        assert h.acoustic == pytest.approx(truth[tuple(h.ids)], abs=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_beam_one_viterbi_is_greedy_exactly(layout):
    torch.manual_seed(0)
    lp = (3 * torch.randn(16, 60, 12)).log_softmax(-1)
    lengths = torch.randint(1, 61, (16,))
    beam = decode_beam(lp, lengths, beam_size=1, merge="max", layout=layout)
    assert [h[0].ids for h in beam] == decode_greedy(lp, lengths)
    # with a frame skip too: dropped frames are blank runs, which greedy reads the same way
    beam = decode_beam(lp, lengths, beam_size=1, merge="max", blank_skip=0.5, layout=layout)
    assert [h[0].ids for h in beam] == decode_greedy(lp, lengths)


@pytest.mark.parametrize("layout", ["flat", "dense", NUMBA])
def test_batch_equals_one_at_a_time_and_nbest_is_sorted_and_distinct(layout):
    torch.manual_seed(1)
    lp = (2 * torch.randn(5, 30, 7)).log_softmax(-1)
    lengths = torch.tensor([30, 12, 1, 25, 7])
    batched = decode_beam(lp, lengths, beam_size=6, nbest=6, layout=layout)
    for b in range(5):
        alone = decode_beam(lp[b : b + 1, : lengths[b]], lengths[b : b + 1], beam_size=6, nbest=6, layout=layout)[0]
        assert [h.ids for h in alone] == [h.ids for h in batched[b]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[b]], abs=1e-4)
        scores = [h.score for h in batched[b]]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.ids) for h in batched[b]}) == len(scores)


@pytest.mark.parametrize("layout", ["flat", "dense", NUMBA])
@pytest.mark.parametrize("lm", [None, "word", "token"])
def test_pruned_batch_equals_one_at_a_time(tmp_path, lm, layout):
    # utterances at very different score levels: each prunes against its own best, not the batch's
    tok = CharTokenizer(chars="abc ")
    write_arpa(tmp_path / "w.arpa", estimate_kneser_ney([s.split() for s in ["ab c", "a b", "cab ba"] * 3], 3))
    fusion = None if lm is None else make_fusion(str(tmp_path / "w.arpa"), tok, unit=lm)
    torch.manual_seed(2)
    lp = (torch.randn(6, 25, tok.vocab_size) * torch.tensor([0.5, 4.0, 1.0, 3.0, 2.0, 0.7])[:, None, None]).log_softmax(-1)
    lengths = torch.tensor([25, 9, 20, 1, 17, 25])
    options = dict(beam_size=5, token_top_k=3, token_min_logp=-4.0, beam_threshold=3.0, fusion=fusion, lm_weight=0.7, word_bonus=0.5, nbest=5, layout=layout)
    batched = decode_beam(lp, lengths, **options)
    for b in range(6):
        alone = decode_beam(lp[b : b + 1, : lengths[b]], lengths[b : b + 1], **options)[0]
        assert [h.ids for h in alone] == [h.ids for h in batched[b]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[b]], abs=1e-4)


@pytest.mark.parametrize("layout", ["flat", NUMBA])
@pytest.mark.parametrize("lm", ["word", "word-no-lookahead", "token"])
def test_early_pruning_changes_nothing(tmp_path, lm, layout):
    # grows dropped before the LM sees them (their label's bound on what fusion can add) are
    # exactly those the selection would drop: same n-best, same scores, as with no early pruning
    tok = CharTokenizer(chars="abc ")
    write_arpa(tmp_path / "w.arpa", estimate_kneser_ney([s.split() for s in ["ab c", "a b", "cab ba", "bb a"] * 3], 3))
    bounded, unbounded = (make_fusion(str(tmp_path / "w.arpa"), tok, unit=lm.split("-")[0], lookahead=lm == "word") for _ in range(2))
    unbounded.label_gain[:] = math.inf  # no bound: no early pruning
    options = dict(lm_weight=0.9, word_bonus=0.6)
    torch.manual_seed(7)
    lp = (torch.randn(5, 30, tok.vocab_size) * 2.5).log_softmax(-1)
    lengths = torch.tensor([30, 22, 9, 30, 15])
    pruned, unpruned = (decode_beam(lp, lengths, beam_size=4, token_top_k=3, beam_threshold=4.0, fusion=f, nbest=4, layout=layout, **options) for f in (bounded, unbounded))
    for a, b in zip(pruned, unpruned):
        assert [h.ids for h in a] == [h.ids for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


@pytest.mark.parametrize("layout", ["dense", TRITON, NUMBA])
@pytest.mark.parametrize("lm", [None, "word", "word-no-lookahead", "token", "token-no-table"])
def test_other_layouts_search_equals_the_flat_one(tmp_path, lm, layout):
    # the other layouts against the flat list: the dense grid (asr.decode.beam.dense, run eagerly
    # here), the Triton kernel (asr.decode.beam.triton_kernel, one program per utterance, run by
    # Triton's interpreter here) and the compiled CPU loop (asr.decode.beam.numba_loop, one loop per
    # utterance). Same n-best, same scores and parts, across pruning options, both
    # merges, utterances of any length, and every kind of LM fusion (token-level fusion both
    # with its (state, label) tables and asking the n-gram itself at every grow)
    tok = CharTokenizer(chars="abc ")
    write_arpa(tmp_path / "w.arpa", estimate_kneser_ney([s.split() for s in ["ab c", "a b", "cab ba", "bb a", "c c"] * 3], 3))
    fusion = None if lm is None else make_fusion(str(tmp_path / "w.arpa"), tok, unit=lm.split("-")[0], lookahead=lm != "word-no-lookahead")
    if lm == "token-no-table":
        fusion = TokenLMFusion(fusion.lm, tok.symbols, table_limit=0)
        assert fusion.table_logp is None
    torch.manual_seed(11)
    lp = (torch.randn(7, 40, tok.vocab_size) * torch.tensor([0.5, 4.0, 1.0, 3.0, 2.0, 0.7, 2.5])[:, None, None]).log_softmax(-1)
    lengths = torch.tensor([40, 9, 33, 1, 0, 40, 21])
    settings = [
        dict(beam_size=6, token_top_k=3),
        dict(beam_size=5, token_top_k=4, token_min_logp=-3.0, beam_threshold=4.0),
        dict(beam_size=8, token_top_k=2, token_cum_prob=0.9, merge="max"),
        dict(beam_size=4, token_top_k=4, beam_threshold=6.0, blank_skip=0.6),
    ]
    for options in settings:
        options = dict(options, fusion=fusion, lm_weight=0.8, word_bonus=0.4, nbest=4)
        flat = decode_beam(lp, lengths, layout="flat", **options)
        grid = decode_beam(lp, lengths, layout=layout, **options)
        for a, b in zip(flat, grid):
            assert [h.ids for h in a] == [h.ids for h in b], options
            assert [h.num_words for h in a] == [h.num_words for h in b]
            for field in ("score", "acoustic", "lm"):
                assert [getattr(h, field) for h in a] == pytest.approx([getattr(h, field) for h in b], abs=1e-4)


@pytest.mark.skipif(not HAVE_NUMBA, reason="needs numba")
@pytest.mark.parametrize("lm", ["word", "token"])
def test_numba_layout_equals_the_flat_one_at_full_size(tmp_path, lm):
    # the CPU default at the sizes it is used at: a 29-label character model, beam 16, top-k 8,
    # a 3-gram over a few hundred words, peaky frames (mostly blank, as a trained CTC model's),
    # a batch of 24 utterances of up to 150 frames; the same n-best as the flat list
    import random

    rng = random.Random(3)
    letters = "abcdefghijklmnopqrstuvwxyz'"
    words = ["".join(rng.choice(letters[:12]) for _ in range(rng.randint(1, 6))) for _ in range(300)]
    sentences = [[rng.choice(words) for _ in range(rng.randint(2, 9))] for _ in range(400)]
    tok = CharTokenizer()
    write_arpa(tmp_path / "w.arpa", estimate_kneser_ney(sentences, 3))
    fusion = make_fusion(str(tmp_path / "w.arpa"), tok, unit=lm)
    torch.manual_seed(5)
    logits = torch.randn(24, 150, tok.vocab_size) * 3.0
    logits[:, :, 0] += 4.0 * (torch.rand(24, 150) < 0.6)  # blank wins most frames
    lp = logits.log_softmax(-1)
    lengths = torch.randint(1, 151, (24,))
    for threshold in (10.0, math.inf):
        options = dict(beam_size=16, token_top_k=8, token_min_logp=-10.0, beam_threshold=threshold, fusion=fusion, lm_weight=1.2, word_bonus=1.0, nbest=3)
        flat = decode_beam(lp, lengths, layout="flat", **options)
        compiled = decode_beam(lp, lengths, layout="numba", **options)
        for a, b in zip(flat, compiled):
            assert [h.ids for h in a] == [h.ids for h in b]
            assert [h.num_words for h in a] == [h.num_words for h in b]
            for field in ("score", "acoustic", "lm"):
                assert [getattr(h, field) for h in a] == pytest.approx([getattr(h, field) for h in b], abs=1e-3)


def test_auto_layout_falls_back_to_the_flat_list_without_numba(monkeypatch):
    from asr.decode.beam import search

    torch.manual_seed(4)
    lp = (2 * torch.randn(3, 20, 6)).log_softmax(-1)
    lengths = torch.tensor([20, 11, 5])
    monkeypatch.setattr(search, "_have_numba", lambda: False)
    fallback = decode_beam(lp, lengths, beam_size=4, nbest=2)
    flat = decode_beam(lp, lengths, beam_size=4, nbest=2, layout="flat")
    assert [[(h.ids, h.score) for h in u] for u in fallback] == [[(h.ids, h.score) for h in u] for u in flat]
    with pytest.raises(ImportError):  # and asked for by name, numba's absence is an error, not a silent flat list
        monkeypatch.setitem(__import__("sys").modules, "numba", None)
        monkeypatch.delitem(__import__("sys").modules, "asr.decode.beam.numba_loop", raising=False)
        decode_beam(lp, lengths, beam_size=4, layout="numba")


def test_beam_threshold_keeps_only_close_prefixes():
    torch.manual_seed(3)
    lp = (2 * torch.randn(4, 30, 6)).log_softmax(-1)
    lengths = torch.tensor([30, 30, 20, 10])
    wide = decode_beam(lp, lengths, beam_size=8, nbest=8)
    narrow = decode_beam(lp, lengths, beam_size=8, nbest=8, beam_threshold=0.5)
    for n in narrow:
        assert n[0].score - n[-1].score <= 0.5
    assert any(w[0].score - w[-1].score > 0.5 for w in wide)  # so the threshold had prefixes to drop
    with pytest.raises(ValueError):
        decode_beam(lp, lengths, beam_threshold=0.0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("lm", [None, "word", "token"])
def test_frames_with_no_label_to_try(tmp_path, lm, layout):
    # token_min_logp above every label's log prob: nothing grows, every utterance stays empty
    tok = CharTokenizer(chars="ab ")
    write_arpa(tmp_path / "w.arpa", estimate_kneser_ney([["ab", "ba"]], 2))
    fusion = None if lm is None else make_fusion(str(tmp_path / "w.arpa"), tok, unit=lm)
    torch.manual_seed(4)
    lp = torch.randn(3, 8, tok.vocab_size).log_softmax(-1)
    lengths = torch.tensor([8, 5, 0])
    result = decode_beam(lp, lengths, token_min_logp=0.0, fusion=fusion, layout=layout)
    for b, hyps in enumerate(result):
        assert hyps[0].ids == []
        assert hyps[0].acoustic == pytest.approx(float(lp[b, : lengths[b], 0].sum()), abs=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("lm", [None, "word", "token"])
def test_no_frames_and_no_utterances(tmp_path, lm, layout):
    # a batch with no frames keeps the empty prefix, scored by the LM's </s> alone; an empty batch gives []
    tok = CharTokenizer(chars="ab ")
    write_arpa(tmp_path / "w.arpa", estimate_kneser_ney([["ab", "ba"]], 2))
    fusion = None if lm is None else make_fusion(str(tmp_path / "w.arpa"), tok, unit=lm)
    result = decode_beam(torch.zeros(2, 0, tok.vocab_size), torch.zeros(2, dtype=torch.long), fusion=fusion, lm_weight=0.5, layout=layout)
    eos = 0.0 if fusion is None else fusion.lm.score_sentence([])
    for hyps in result:
        assert [h.ids for h in hyps] == [[]]
        assert hyps[0].acoustic == 0.0 and hyps[0].lm == pytest.approx(eos, abs=1e-5)
    assert decode_beam(torch.zeros(0, 3, tok.vocab_size), torch.zeros(0, dtype=torch.long), fusion=fusion, layout=layout) == []


def test_skip_blank_frames_keeps_a_repeat_across_a_blank_run():
    lp = frames({1: 0.9}, {0: 0.999}, {0: 0.999}, {0: 0.999}, {1: 0.9}, vocab=3)
    for log_probs, lengths in ((lp, torch.tensor([5])), (lp.numpy(), np.array([5]))):  # tensors and numpy arrays
        short, lengths = skip_blank_frames(log_probs, lengths, threshold=0.99)
        assert lengths.tolist() == [3] and short.shape[1] == 3
    assert decode_beam(lp, torch.tensor([5]), beam_size=4, blank_skip=0.99)[0][0].ids == [1, 1]
    assert decode_beam(lp.numpy(), np.array([5]), beam_size=4, blank_skip=0.99)[0][0].ids == [1, 1]


def test_skip_blank_frames_on_numpy_arrays_is_the_tensors_one():
    # the same frames kept, in the same places, down to a blank log prob on the threshold itself
    torch.manual_seed(2)
    lengths = torch.tensor([50, 0, 1, 37, 50, 12])
    for threshold in (0.6, 0.3, 0.95, 0.7, 0.8, 0.99):
        lp = (torch.randn(6, 50, 5) * 3).log_softmax(-1)
        lp[:, :, 0] = torch.where(torch.rand(6, 50) < 0.3, torch.tensor(math.log(threshold), dtype=torch.float32), lp[:, :, 0])
        a, a_len = skip_blank_frames(lp, lengths, threshold)
        b, b_len = skip_blank_frames(lp.numpy(), lengths.numpy(), threshold)
        assert np.array_equal(a.numpy(), b) and np.array_equal(a_len.numpy(), b_len), threshold


def spell(text, tokenizer, confusions=None, peak=0.9):
    """Log-probs that say `text` one label per frame with a blank between, `confusions` {position: (alt, p_alt)}."""
    ids = tokenizer.encode(text)
    rows = []
    for i, label in enumerate(ids):
        if confusions and i in confusions:
            alt, p_alt = confusions[i]
            rows.append({label: 0.95 - p_alt, tokenizer.encode(alt)[0]: p_alt})
        else:
            rows.append({label: peak})
        rows.append({0: peak})
    return frames(*rows, vocab=tokenizer.vocab_size)


def test_word_lm_fixes_an_acoustically_likely_spelling(tmp_path):
    tok = CharTokenizer()
    write_arpa(tmp_path / "w.arpa", estimate_kneser_ney([s.split() for s in ["the cat sat", "a cat ran", "the dog sat"] * 5], 3))
    fusion = WordLMFusion(NGramLM.from_file(tmp_path / "w.arpa"), tok.symbols)
    lp = spell("the cat sat", tok, confusions={4: ("k", 0.55)})  # "k" is a little more likely than "c"
    lengths = torch.tensor([lp.shape[1]])
    assert tok.decode(decode_greedy(lp, lengths)[0]) == "the kat sat"
    assert tok.decode(decode_beam(lp, lengths, beam_size=8)[0][0].ids) == "the kat sat"
    best = decode_beam(lp, lengths, beam_size=8, fusion=fusion, lm_weight=1.0, word_bonus=2.0)[0][0]
    assert tok.decode(best.ids) == "the cat sat"
    assert best.num_words == 3
    # its LM score is the LM's own score of the sentence (</s> included)
    assert best.lm == pytest.approx(fusion.lm.score_sentence(["the", "cat", "sat"]), abs=1e-4)


@pytest.mark.parametrize("lookahead", [True, False])
def test_word_lm_scores_every_non_word_as_unk_plus_the_oov_penalty(tmp_path, lookahead):
    # "ca" is the start of a listed word but not one; "tx" leaves the listed words at its "x";
    # each pays the OOV penalty once, on top of the LM's <unk> score, and the lookahead (the
    # best word a partial word could become, paid in advance) leaves no trace in the total
    tok = CharTokenizer()
    write_arpa(tmp_path / "w.arpa", estimate_kneser_ney([s.split() for s in ["the cat sat", "a cat ran", "the dog sat"] * 5], 3))
    lm = NGramLM.from_file(tmp_path / "w.arpa")
    fusion = WordLMFusion(lm, tok.symbols, oov_penalty=-7.0, lookahead=lookahead)
    for text, oov in [("the cat sat", 0), ("the ca sat", 1), ("tx dog", 1), ("ca tx", 2), ("the ca", 1)]:
        lp = spell(text, tok)
        best = decode_beam(lp, torch.tensor([lp.shape[1]]), beam_size=8, fusion=fusion, lm_weight=0.01, word_bonus=0.0)[0][0]
        assert tok.decode(best.ids) == text
        assert best.lm == pytest.approx(lm.score_sentence(text.split()) - 7.0 * oov, abs=1e-4), text
    with pytest.raises(ValueError):
        WordLMFusion(lm, tok.symbols, oov_penalty=1.0)


def test_token_lm_with_a_made_up_phone_set(tmp_path):
    # token-level fusion is generic over any tokenizer's symbols: here four invented phones
    symbols = ["<blank>", "p1", "p2", "p3", "p4"]
    text = [["p1", "p2", "p3"], ["p4", "p2", "p3"], ["p1", "p2"]] * 4
    write_arpa(tmp_path / "p.arpa", estimate_kneser_ney(text, 3))
    fusion = TokenLMFusion(NGramLM.from_file(tmp_path / "p.arpa"), symbols)
    # p1 p2 p3 said, but the middle frame leans to p4, which the LM never saw after p1
    lp = frames({1: 0.9}, {0: 0.9}, {4: 0.5, 2: 0.45}, {0: 0.9}, {3: 0.9}, vocab=5)
    lengths = torch.tensor([5])
    assert decode_beam(lp, lengths, beam_size=8)[0][0].ids == [1, 4, 3]
    best = decode_beam(lp, lengths, beam_size=8, fusion=fusion, lm_weight=1.0)[0][0]
    assert best.ids == [1, 2, 3]
    assert best.lm == pytest.approx(fusion.lm.score_sentence(["p1", "p2", "p3"]), abs=1e-4)


def test_token_lm_tables_score_as_the_lm_does(tmp_path):
    # a small token LM is read from (state, label) tables built once; a large one is asked at
    # every step: both must decode the same, with the same scores
    tok = CharTokenizer(chars="abc ")
    write_arpa(tmp_path / "c.arpa", estimate_kneser_ney([list("|".join(s.split())) for s in ["ab c", "a b", "cab ba"] * 3], 4))
    lm = NGramLM.from_file(tmp_path / "c.arpa")
    tabulated, asked = TokenLMFusion(lm, tok.symbols), TokenLMFusion(lm, tok.symbols, table_limit=0)
    assert tabulated.table_logp is not None and asked.table_logp is None
    torch.manual_seed(4)
    lp = (2 * torch.randn(4, 30, tok.vocab_size)).log_softmax(-1)
    lengths = torch.tensor([30, 12, 25, 7])
    options = dict(beam_size=6, lm_weight=0.8, word_bonus=0.3, nbest=4)
    for a, b in zip(decode_beam(lp, lengths, fusion=tabulated, **options), decode_beam(lp, lengths, fusion=asked, **options)):
        assert [h.ids for h in a] == [h.ids for h in b]
        assert [h.lm for h in a] == pytest.approx([h.lm for h in b], abs=1e-5)
        assert a[0].lm == pytest.approx(lm.score_sentence(["|" if c == " " else c for c in tok.decode(a[0].ids)]), abs=1e-4)
    # an LM with more contexts than one build step takes: every entry as the LM scores it
    rng = torch.Generator().manual_seed(0)
    text = ["".join("abc "[i] for i in torch.randint(0, 4, (40,), generator=rng)).split() for _ in range(1000)]
    write_arpa(tmp_path / "big.arpa", estimate_kneser_ney([list("|".join(s)) for s in text], 8))
    big = NGramLM.from_file(tmp_path / "big.arpa")
    fusion = TokenLMFusion(big, tok.symbols)
    assert big.num_contexts > (1 << 16) // tok.vocab_size
    states, words = np.repeat(np.arange(big.num_contexts), tok.vocab_size), np.tile(fusion.token_words, big.num_contexts)
    logp, after = big.score(states, words)
    assert np.array_equal(fusion.table_logp, logp) and np.array_equal(fusion.table_next, after)
    logp, after = big.score(torch.from_numpy(states), torch.from_numpy(words))  # the torch layouts' lookup (NGramTensors.score)
    assert np.array_equal(fusion.table_logp, logp.numpy()) and np.array_equal(fusion.table_next, after.numpy())


def test_make_fusion_picks_word_level_for_characters(tmp_path):
    write_arpa(tmp_path / "w.arpa", estimate_kneser_ney([["a", "b"]], 2))
    assert isinstance(make_fusion(str(tmp_path / "w.arpa"), CharTokenizer()), WordLMFusion)
    assert isinstance(make_fusion(str(tmp_path / "w.arpa"), CharTokenizer(), unit="token"), TokenLMFusion)


@pytest.mark.cuda
def test_cuda_matches_cpu(tmp_path):
    tok = CharTokenizer()
    write_arpa(tmp_path / "w.arpa", estimate_kneser_ney([s.split() for s in ["the cat sat", "a cat ran"] * 5], 3))
    torch.manual_seed(0)
    lp = (3 * torch.randn(8, 40, tok.vocab_size)).log_softmax(-1)
    lengths = torch.randint(10, 41, (8,))
    for unit in ("word", "token"):  # token fusion reads its (state, label) tables on the GPU
        cpu = decode_beam(lp, lengths, fusion=make_fusion(str(tmp_path / "w.arpa"), tok, unit=unit), nbest=4)
        gpu_fusion = make_fusion(str(tmp_path / "w.arpa"), tok, unit=unit, device="cuda")
        layouts = ("auto", "flat", "triton") if HAVE_TRITON else ("auto", "flat")
        for layout in layouts:  # auto: the dense grid, replayed as a CUDA graph; triton: one kernel
            gpu = decode_beam(lp.cuda(), lengths.cuda(), fusion=gpu_fusion, nbest=4, layout=layout)
            assert [[h.ids for h in u] for u in cpu] == [[h.ids for h in u] for u in gpu]
            assert [h.score for u in cpu for h in u] == pytest.approx([h.score for u in gpu for h in u], abs=1e-4)


def test_cli_evaluate_and_transcribe_with_beam_and_lm(tmp_path, capsys):
    from asr.checkpoint import save_checkpoint
    from asr.config import load_config
    from asr.features import FeatureExtractor
    from asr.models import build_model
    from conftest import TINY_OVERRIDES, write_noise_corpus

    # an untrained tiny model: this checks the plumbing, the decoders are checked above
    manifests = write_noise_corpus(tmp_path, num_train=4, num_dev=4)
    config = load_config("configs/demo.yaml", TINY_OVERRIDES)
    tokenizer = CharTokenizer()
    torch.manual_seed(0)
    model = build_model(config.model, FeatureExtractor(config.features).output_dim, tokenizer.vocab_size)
    ckpt = str(tmp_path / "model.pt")
    save_checkpoint(ckpt, model=model, config=config, tokenizer=tokenizer)
    lm = str(tmp_path / "lm.arpa")
    assert main(["lm", "build", str(manifests["train"]), "-o", lm, "--order", "2"]) == 0
    capsys.readouterr()
    assert main(["evaluate", ckpt, str(manifests["dev"]), "--lm", lm, "--beam-size", "4", "--output", str(tmp_path / "r.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "beam 4 + LM WER" in out and (tmp_path / "r.jsonl").is_file()
    assert main(["evaluate", ckpt, str(manifests["dev"]), "--lm", lm, "--tune-lm", "--lm-weights", "0.5,1", "--word-bonuses", "0", "--output", str(tmp_path / "r.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "best: --lm-weight" in out and "2 pairs tried" in out
    wav = manifests["dev"].parent / "wav" / "dev0.wav"
    assert main(["transcribe", ckpt, str(wav), "--decoder", "beam", "--beam-size", "2"]) == 0
    assert capsys.readouterr().out.startswith(str(wav) + "\t")
    # n-best: ranked by score, each score the sum it stands for, the first one the transcript
    lm_options = ["--lm", lm, "--lm-weight", "0.7", "--word-bonus", "0.5", "--beam-size", "8"]
    assert main(["transcribe", ckpt, str(wav), *lm_options]) == 0
    best = capsys.readouterr().out.rstrip("\n").split("\t")[1]
    assert main(["transcribe", ckpt, str(wav), "--json", "--nbest", "4", *lm_options]) == 0
    [record] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    nbest = record["nbest"]
    assert 1 < len(nbest) <= 4 and record["text"] == nbest[0]["text"] == best
    assert len({a["text"] for a in nbest}) == len(nbest)
    assert [a["score"] for a in nbest] == sorted((a["score"] for a in nbest), reverse=True)
    for a in nbest:
        assert a["score"] == pytest.approx(a["acoustic"] + 0.7 * a["lm"] + 0.5 * a["words"], abs=1e-3)
        assert a["lm"] < 0 and a["words"] == len(a["text"].split())
    assert main(["transcribe", ckpt, str(wav), "--nbest", "4", *lm_options]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [(r[0], int(r[1]), r[3]) for r in rows] == [(str(wav), i + 1, a["text"]) for i, a in enumerate(nbest)]
    # the same LM compiled (and gzipped ARPA): the same n-best, scores and all
    assert main(["lm", "compile", lm, "-o", str(tmp_path / "lm.bin")]) == 0
    assert main(["lm", "build", str(manifests["train"]), "-o", str(tmp_path / "lm.arpa.gz"), "--order", "2"]) == 0
    capsys.readouterr()
    for other in (str(tmp_path / "lm.bin"), str(tmp_path / "lm.arpa.gz")):
        assert main(["transcribe", ckpt, str(wav), "--json", "--nbest", "4", *lm_options, "--lm", other]) == 0
        assert json.loads(capsys.readouterr().out)["nbest"] == nbest
    assert main(["transcribe", ckpt, str(wav), "--nbest", "3", "--decoder", "greedy"]) == 2
    assert "--nbest needs beam search" in capsys.readouterr().err
    assert main(["evaluate", ckpt, str(manifests["dev"]), "--lm", str(tmp_path / "missing.arpa")]) == 2
    assert "no such language model file" in capsys.readouterr().err
    # the word-fusion options reach the fusion
    from asr.cli import apply_decoder_options, build_parser
    from asr.inference import Recognizer

    recognizer = Recognizer.from_checkpoint(ckpt, device="cpu")
    args = build_parser().parse_args(["evaluate", ckpt, str(manifests["dev"]), "--lm", lm, "--oov-penalty", "-3", "--no-lm-lookahead", "--token-cum-prob", "0.95"])
    decode = apply_decoder_options(recognizer, args)
    assert recognizer.fusion.oov_penalty == -3.0 and recognizer.fusion.label_gain.max() == 0.0  # no lookahead: nothing to gain
    assert decode.token_cum_prob == 0.95 and recognizer.config.decode.token_cum_prob == 0.95


@pytest.mark.parametrize("arrays", ["numpy", "torch"])
def test_frame_candidates_are_the_top_k_labels_above_the_floor_within_the_cut(arrays):
    # the candidates the numba layout tries on numpy arrays (common), and the torch layouts on tensors (common_torch)
    from asr.decode.beam import common, common_torch

    torch.manual_seed(6)
    lp = (3 * torch.randn(3, 9, 7)).log_softmax(-1)
    lengths = torch.tensor([9, 4, 0])
    for top_k, floor, cut in [(2, -3.0, 1.0), (3, float("-inf"), 1.0), (6, -1.5, 1.0), (8, -2.0, 1.0), (6, float("-inf"), 0.9), (3, -4.0, 0.5)]:
        if arrays == "numpy":
            ids, logps = common.frame_candidates(lp.numpy(), lengths.numpy(), top_k, floor, blank=0, cum_prob=cut)
        else:
            ids, logps = common_torch.frame_candidates(lp, lengths, top_k, floor, blank=0, cum_prob=cut)
        for b in range(3):
            for t in range(9):
                row = b * 9 + t
                got = {int(i) for i, v in zip(ids[row], logps[row]) if v > float("-inf")}
                want = set()
                if t < lengths[b]:
                    ranked = sorted(range(1, 7), key=lambda c: -lp[b, t, c].item())[:top_k]
                    # the cut: the fewest most probable labels, blank included, holding `cut`
                    nucleus, mass = set(), 0.0
                    for c in sorted(range(7), key=lambda c: -lp[b, t, c].item()):
                        if mass >= cut:
                            break
                        nucleus.add(c)
                        mass += lp[b, t, c].exp().item()
                    want = {c for c in ranked if lp[b, t, c] >= floor and c in nucleus}
                assert got == want, (top_k, floor, cut, b, t)
                assert all(logps[row][j] == lp[b, t, ids[row][j]] for j in range(ids.shape[1]) if logps[row][j] > float("-inf"))
    with pytest.raises(ValueError, match="token_cum_prob"):
        decode_beam(lp, lengths, token_cum_prob=0.0)


def test_evaluation_pools_model_batches_for_beam_search(tmp_path):
    # the model runs 3 utterances at a time; beam search decodes up to beam_batch_size at once:
    # the pooling changes nothing but speed, and keeps the manifest's order
    from dataclasses import replace

    from asr.config import load_config
    from asr.data.manifest import read_manifest
    from asr.features import FeatureExtractor
    from asr.inference import Recognizer, decode_dataset
    from asr.models import build_model
    from conftest import TINY_OVERRIDES, write_noise_corpus

    manifests = write_noise_corpus(tmp_path, num_train=2, num_dev=7)
    config = load_config("configs/demo.yaml", TINY_OVERRIDES)
    tokenizer = CharTokenizer()
    torch.manual_seed(0)
    model = build_model(config.model, FeatureExtractor(config.features).output_dim, tokenizer.vocab_size)
    recognizer = Recognizer(model, FeatureExtractor(config.features), tokenizer, config)
    utterances = read_manifest(manifests["dev"])
    results = {}
    for pool in (1, 5, 256):
        recognizer.set_decoder(replace(config.decode, decoder="beam", beam_size=4, batch_size=3, beam_batch_size=pool))
        result = decode_dataset(recognizer, utterances, batch_size=3)
        results[pool] = [(r.id, r.hypothesis) for r in result.recognitions]
    assert [i for i, _ in results[256]] == [u.id for u in utterances]
    assert results[1] == results[5] == results[256]
    assert any(h for _, h in results[256])  # an untrained model still spells something to compare
    # decode.beam_layout reaches the search: the other layouts read the same texts
    for layout in ("flat", "dense") + (("triton",) if INTERPRETABLE else ()) + (("numba",) if HAVE_NUMBA else ()):
        recognizer.set_decoder(replace(config.decode, decoder="beam", beam_size=4, batch_size=3, beam_layout=layout))
        assert [(r.id, r.hypothesis) for r in decode_dataset(recognizer, utterances, batch_size=3).recognitions] == results[256], layout
    with pytest.raises(ValueError, match="beam_layout"):
        recognizer.set_decoder(replace(config.decode, decoder="beam", beam_layout="grid"))
