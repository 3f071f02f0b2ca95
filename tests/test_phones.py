"""TIMIT phone sets, the Lee & Hon (1989) foldings, the phone tokenizer and PER."""

import pytest

from asr.config import ConfigError, DataConfig
from asr.metrics import score_per
from asr.phones import (
    FOLD_61_TO_48,
    FOLD_TO_39,
    PHONES_39,
    PHONES_48,
    PHONES_61,
    PhoneError,
    PhoneTokenizer,
    fold_phones,
)
from asr.text import CharTokenizer, build_tokenizer, tokenizer_from_dict
from asr.tokens import BLANK_ID, TokenizerError


def test_set_sizes():
    assert (len(PHONES_61), len(PHONES_48), len(PHONES_39)) == (61, 48, 39)
    assert set(PHONES_39) <= set(PHONES_48) | {"sil"}


# Hand-checked against Lee & Hon (1989), table 1 and the 39-class merges in the text.
@pytest.mark.parametrize(
    "phone, in48, in39",
    [
        ("bcl", "vcl", "sil"), ("dcl", "vcl", "sil"), ("gcl", "vcl", "sil"),  # voiced closures
        ("pcl", "cl", "sil"), ("tcl", "cl", "sil"), ("kcl", "cl", "sil"),  # unvoiced closures
        ("h#", "sil", "sil"), ("pau", "sil", "sil"), ("epi", "epi", "sil"),
        ("ax-h", "ax", "ah"), ("ax", "ax", "ah"), ("axr", "er", "er"),
        ("ux", "uw", "uw"), ("ix", "ix", "ih"), ("el", "el", "l"), ("en", "en", "n"),
        ("em", "m", "m"), ("eng", "ng", "ng"), ("nx", "n", "n"), ("hv", "hh", "hh"),
        ("zh", "zh", "sh"), ("ao", "ao", "aa"), ("dx", "dx", "dx"), ("iy", "iy", "iy"),
    ],
)  # fmt: skip
def test_folding_examples(phone, in48, in39):
    assert fold_phones([phone], 48) == [in48]
    assert fold_phones([phone], 39) == [in39]
    assert fold_phones([in48], 39) == [in39]  # 48 -> 39 agrees with 61 -> 39


def test_glottal_stop_is_deleted_when_folding():
    assert fold_phones("h# q ix q h#".split(), 48) == ["sil", "ix", "sil"]
    assert fold_phones("h# q ix".split(), 39) == ["sil", "ih"]
    assert fold_phones(["q"], 61) == ["q"]  # the 61-set keeps it


def test_folding_composes_for_every_phone():
    for phone in PHONES_61:
        via48 = FOLD_61_TO_48[phone]
        assert FOLD_TO_39[phone] == (None if via48 is None else FOLD_TO_39[via48])


def test_unknown_or_unfoldable_phone_names_its_source():
    with pytest.raises(PhoneError, match=r"utt-3: phone 'xx'"):
        fold_phones(["aa", "xx"], 48, where="utt-3")
    with pytest.raises(PhoneError, match="'sil'"):
        fold_phones(["sil"], 61)  # a 39-set symbol has no 61-set spelling


def test_tokenizer_folds_and_round_trips():
    tok = PhoneTokenizer(48)
    assert tok.vocab_size == 49 and tok.symbols[BLANK_ID] == "<blank>"
    ids = tok.encode("h# sh ix q hv ae dcl d h#", utterance="u1")
    assert BLANK_ID not in ids
    assert tok.decode(ids) == "sil sh ix hh ae vcl d sil"
    assert tok.normalize("h# ax-h q") == "sil ax"
    again = tokenizer_from_dict(tok.to_dict())
    assert isinstance(again, PhoneTokenizer) and again.symbols == tok.symbols


def test_tokenizer_rejects_by_utterance():
    tok = PhoneTokenizer(61)
    with pytest.raises(TokenizerError, match="u7: phone 'sil'"):
        tok.encode("h# sil", utterance="u7")
    with pytest.raises(TokenizerError, match="u8: no phone transcription"):
        tok.encode("", utterance="u8")


def test_build_tokenizer_by_unit():
    assert isinstance(build_tokenizer(DataConfig(unit="char")), CharTokenizer)
    phone = build_tokenizer(DataConfig(unit="phone", phone_set=39))
    assert isinstance(phone, PhoneTokenizer) and phone.vocab_size == 40
    with pytest.raises(ConfigError, match="data.unit"):
        build_tokenizer(DataConfig(unit="syllable"))


def test_per_folds_both_sides_and_counts_per_phone():
    # ref (39): sil dh ih k ae t sil | sh iy ; hyp (39): sil dh ih k ae ae t | sh iy iy
    refs = ["h# dh ix kcl k ae t h#", "zh iy"]
    hyps = ["pau dh ih k ae ae t", "sh iy iy"]
    per = score_per(refs, hyps)
    # hand alignment: utt 1 = [sil dh ih <del sil> k ae <ins ae> t <del sil>], utt 2 = [sh iy <ins iy>]
    assert (per.total.substitutions, per.total.deletions, per.total.insertions) == (0, 2, 2)
    assert per.total.reference_length == 10
    assert per.rate == pytest.approx(4 / 10)
    assert per.deletions == {"sil": 2} and per.insertions == {"ae": 1, "iy": 1}
    assert per.reference_counts["sil"] == 3 and per.reference_counts["sh"] == 1


def test_per_substitutions_and_confusions():
    per = score_per(["aa b iy", "s"], ["ao p iy", "z"])  # ao folds to aa: not an error
    assert (per.total.substitutions, per.total.deletions, per.total.insertions) == (2, 0, 0)
    assert per.substitutions == {"b": 1, "s": 1}
    assert per.confusions == {("b", "p"): 1, ("s", "z"): 1}
    rows = {r[0]: r for r in per.table()}
    assert rows["b"] == ("b", 1, 1, 0, 0) and rows["aa"] == ("aa", 1, 0, 0, 0)
    assert per.table()[0][0] in ("b", "s")  # most errors first
    assert score_per(["aa"], [""]).total.deletions == 1  # an empty hypothesis is all deletions
