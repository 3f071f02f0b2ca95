"""Acoustic models: features in, per-frame log-probabilities over the vocabulary out."""

from asr.models.encoder import CTCModel, build_model

__all__ = ["CTCModel", "build_model"]
