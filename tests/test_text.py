import pytest

from asr.text import CharTokenizer, normalize_text, tokenizer_from_dict
from asr.tokens import BLANK_ID, TokenizerError


def test_normalize():
    assert normalize_text("  Hello,\tWORLD\u2019s  \n") == "hello, world's"


def test_round_trip_and_blank_reserved():
    tok = CharTokenizer()
    ids = tok.encode("It's a Test")
    assert BLANK_ID not in ids
    assert tok.symbols[BLANK_ID] == "<blank>"
    assert tok.decode(ids) == "it's a test"
    assert tok.vocab_size == 29


def test_unknown_character_names_the_utterance():
    with pytest.raises(TokenizerError, match=r"utt-7: character '3'"):
        CharTokenizer().encode("route 3 north", utterance="utt-7")


def test_unknown_character_dropped_when_configured():
    tok = CharTokenizer(on_unknown="drop")
    assert tok.decode(tok.encode("route 66 north")) == "route north"


def test_serialization():
    tok = CharTokenizer.from_texts(["abc", "b d"], on_unknown="drop")
    again = tokenizer_from_dict(tok.to_dict())
    assert again.symbols == tok.symbols == ["<blank>", " ", "a", "b", "c", "d"]
    assert again.on_unknown == "drop"
