"""asr: a fast, readable toolkit for CTC speech recognition with recurrent encoders."""

__version__ = "0.1.0"
