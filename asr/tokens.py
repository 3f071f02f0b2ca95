"""What every tokenizer shares: the CTC blank (id and symbol), the word separator, and the error
for text a tokenizer cannot encode. Below asr/text.py and asr/phones.py, so neither imports the
other for these, and the decoders and the loss read the blank from here."""

from __future__ import annotations

BLANK_ID = 0  # CTC blank; every tokenizer reserves id 0 for it
BLANK = "<blank>"
SPACE = " "  # the character tokenizer's word separator


class TokenizerError(ValueError):
    """Text that the tokenizer cannot encode; the message names the utterance."""
