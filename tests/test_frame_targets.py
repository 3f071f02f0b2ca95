"""Timed transcripts -> the frame head's per-frame targets (asr/frame_targets.py)."""

from __future__ import annotations

import pytest
import torch

from asr.data.manifest import Utterance
from asr.frame_targets import IGNORE, TimingError, frame_targets, pad_intervals, scale_intervals, token_intervals
from asr.phones import PhoneTokenizer
from asr.text import CharTokenizer


def utterance(text: str, phones: str | None = None, **extra) -> Utterance:
    return Utterance(id="u1", audio="x.wav", duration=1.0, text=text, phones=phones, extra=extra)


def test_letters_share_their_word_evenly_and_word_edges_are_exact():
    tok = CharTokenizer()
    utt = utterance("Hi  you", words=["hi", "you"], word_starts=[0.1, 0.5], word_ends=[0.3, 0.8])
    starts, ends, labels = token_intervals(utt, tok)
    assert labels == tok.encode("hiyou")  # the space between words has no interval: it is silence or nothing
    assert starts == pytest.approx([0.1, 0.2, 0.5, 0.6, 0.7])
    assert ends == pytest.approx([0.2, 0.3, 0.6, 0.7, 0.8])


def test_rows_without_times_have_none_and_bad_times_are_named():
    tok = CharTokenizer()
    assert token_intervals(utterance("hi you"), tok) is None
    with pytest.raises(TimingError, match="u1.*do not spell"):
        token_intervals(utterance("hi you", words=["hi", "me"], word_starts=[0.1, 0.5], word_ends=[0.3, 0.8]), tok)
    with pytest.raises(TimingError, match="u1: 2 words but 1 word_starts"):
        token_intervals(utterance("hi you", words=["hi", "you"], word_starts=[0.1], word_ends=[0.3, 0.8]), tok)
    with pytest.raises(TimingError, match="u1: token times go backwards"):
        token_intervals(utterance("hi you", words=["hi", "you"], word_starts=[0.5, 0.1], word_ends=[0.8, 0.3]), tok)


def test_phones_fold_onto_the_model_set_and_deleted_phones_have_no_interval():
    tok = PhoneTokenizer(39)
    utt = utterance("x", phones="h# q ae pau", phone_times=[0.0, 0.1, 0.2, 0.4], phone_ends=[0.1, 0.2, 0.4, 0.5])
    starts, ends, labels = token_intervals(utt, tok)
    assert labels == tok.encode("sil ae sil")  # q is deleted in the 39-phone set; h# and pau fold to sil
    assert starts == [0.0, 0.2, 0.4] and ends == [0.1, 0.4, 0.5]
    with pytest.raises(TimingError, match="u1: 4 phones but 3 phone_times"):
        token_intervals(utterance("x", phones="h# q ae pau", phone_times=[0.0, 0.1, 0.2], phone_ends=[0.1, 0.2, 0.4, 0.5]), tok)


def test_speed_perturbation_scales_the_times():
    starts, ends, labels = scale_intervals(([0.3], [0.6], [5]), 1.5)
    assert starts == pytest.approx([0.2]) and ends == pytest.approx([0.4]) and labels == [5]


def test_each_frame_gets_the_token_around_its_centre():
    # frames of 0.1 s centred on 0.05, 0.15, ...; utterance 0: token 3 over [0.1, 0.3), token 4
    # over [0.3, 0.35), silence after; utterance 1 untimed; utterance 2 timed but 3 frames long
    items = [([0.1, 0.3], [0.3, 0.35], [3, 4]), None, ([0.0], [0.1], [7])]
    centres = torch.tensor([0.05, 0.15, 0.25, 0.35, 0.45], dtype=torch.float64)
    targets = frame_targets(*pad_intervals(items), centres, torch.tensor([5, 5, 3]))
    assert targets.tolist() == [
        [0, 3, 3, 0, 0],  # 0.35 is the end of token 4, which holds [0.3, 0.35): blank
        [IGNORE] * 5,
        [7, 0, 0, IGNORE, IGNORE],
    ]
    assert frame_targets(*pad_intervals([None]), centres, torch.tensor([5])).tolist() == [[IGNORE] * 5]
