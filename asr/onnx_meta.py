"""What an exported model (`asr export`, asr/export.py) says about itself: the ONNX file's
`metadata_props`, enough for a runtime without torch to rebuild the recognizer around the graph
(features and model are inside it; the tokenizer, the frame clock and the decoding config are
here). This module needs no torch: only `onnx`, or else `onnxruntime`.

Keys (every value a string, as ONNX stores them):

    asr.format               "asr-onnx"
    asr.version              "1"
    asr.config               JSON of asr.config.config_to_dict(config)
    asr.tokenizer            JSON of tokenizer.to_dict() (asr.text.tokenizer_from_dict rebuilds it)
    asr.label_log_prior      JSON list (vocab,), only for a model trained with train.label_prior_weight > 0
    asr.train_max_duration   s, the longest training utterance; absent where the checkpoint did not say
    asr.frame_step           samples per output frame (frame shift x subsample)
    asr.frame_seconds        s per output frame
    asr.frame_head           "1": the graph has the `frame_log_probs` output; "0": it has not
    asr.int8                 "1": weights quantized to int8; "0": float32

A streaming step graph (`asr export --streaming`, asr/export_stream.py) has other inputs and
outputs (STEP_INPUTS, STEP_OUTPUTS) and these keys too; an offline model has none of them:

    asr.streaming            "1"
    asr.chunk_frames         model frames that leave per window (latency-controlled); "0": unidirectional, any number
    asr.right_context_frames model frames a window reads past its chunk; "0" for a unidirectional model
    asr.states               JSON {"h": [layers, hidden], "c": [layers, hidden]} (GRU: h only): each state
                             input's shape without its batch axis, which is axis 1
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "asr-onnx"
VERSION = "1"
KEYS = (
    "asr.format", "asr.version", "asr.config", "asr.tokenizer", "asr.label_log_prior", "asr.train_max_duration",
    "asr.frame_step", "asr.frame_seconds", "asr.frame_head", "asr.int8",
    "asr.streaming", "asr.chunk_frames", "asr.right_context_frames", "asr.states",
)  # fmt: skip
REQUIRED = ("asr.format", "asr.version", "asr.config", "asr.tokenizer", "asr.frame_step", "asr.frame_seconds", "asr.frame_head", "asr.int8")
# the graph's inputs and outputs, by name
INPUTS = ("audio", "audio_lengths")  # (batch, samples) float32 at the model's rate; (batch,) int64
OUTPUTS = ("log_probs", "lengths", "frame_log_probs")  # (batch, frames, vocab) float32; (batch,) int64; the frame head's, where asr.frame_head = "1"
# a streaming step graph's: feats (batch, frames, feat_dim) float32, main_frames () int64, then the
# states as asr.states names them, (layers, batch, hidden) float32 each
STEP_INPUTS = ("feats", "main_frames")
# log_probs (batch, main, vocab) float32, frame_log_probs (the same, where asr.frame_head = "1"), then
# each state input's new value under its name + STATE_OUT
STEP_OUTPUTS = ("log_probs", "frame_log_probs")
STATE_OUT = "_out"


class ModelFileError(ValueError):
    """A file that is not a readable asr ONNX model; the message names it."""


@dataclass(frozen=True)
class ModelMetadata:
    """An exported model's metadata, parsed. `config` and `tokenizer` are the plain dicts the
    checkpoint holds (asr.config.config_from_dict and asr.text.tokenizer_from_dict rebuild them)."""

    config: dict[str, Any]
    tokenizer: dict[str, Any]
    label_log_prior: list[float] | None  # (vocab,)
    train_max_duration: float | None  # s
    frame_step: int  # samples per output frame
    frame_seconds: float  # s per output frame
    frame_head: bool  # the graph has `frame_log_probs`
    int8: bool  # int8 weights
    streaming: bool = False  # a step graph (STEP_INPUTS / STEP_OUTPUTS), not audio -> log-probs
    chunk_frames: int = 0  # model frames that leave per window; 0: unidirectional (any number)
    right_context_frames: int = 0  # model frames a window reads past its chunk
    states: dict[str, list[int]] | None = None  # state input name -> (layers, hidden); the inputs are (layers, batch, hidden)

    @property
    def sample_rate(self) -> int:
        """The rate the graph's `audio` input is at, Hz."""
        return int(self.config["features"]["sample_rate"])

    def to_props(self) -> dict[str, str]:
        """The `metadata_props` strings, key by key (absent keys left out)."""
        props = {
            "asr.format": FORMAT,
            "asr.version": VERSION,
            "asr.config": json.dumps(self.config, sort_keys=True),
            "asr.tokenizer": json.dumps(self.tokenizer, ensure_ascii=False),
            "asr.frame_step": str(self.frame_step),
            "asr.frame_seconds": repr(float(self.frame_seconds)),
            "asr.frame_head": "1" if self.frame_head else "0",
            "asr.int8": "1" if self.int8 else "0",
        }
        if self.label_log_prior is not None:
            props["asr.label_log_prior"] = json.dumps([float(x) for x in self.label_log_prior])
        if self.train_max_duration is not None:
            props["asr.train_max_duration"] = repr(float(self.train_max_duration))
        if self.streaming:
            props["asr.streaming"] = "1"
            props["asr.chunk_frames"] = str(self.chunk_frames)
            props["asr.right_context_frames"] = str(self.right_context_frames)
            props["asr.states"] = json.dumps(self.states)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], where: str) -> "ModelMetadata":
        """Parse `metadata_props` strings; ModelFileError naming `where` if they are not an asr model's."""
        if props.get("asr.format") != FORMAT:
            raise ModelFileError(f"{where}: not an {FORMAT} model (no asr.format metadata: exported by something else?)")
        if props.get("asr.version") != VERSION:
            raise ModelFileError(f"{where}: {FORMAT} version {props.get('asr.version')!r}; this asr reads version {VERSION}")
        missing = [key for key in REQUIRED if key not in props]
        if missing:
            raise ModelFileError(f"{where}: metadata lacks {', '.join(missing)}")
        try:
            prior = props.get("asr.label_log_prior")
            duration = props.get("asr.train_max_duration")
            streaming = props.get("asr.streaming") == "1"
            return cls(
                config=json.loads(props["asr.config"]),
                tokenizer=json.loads(props["asr.tokenizer"]),
                label_log_prior=json.loads(prior) if prior is not None else None,
                train_max_duration=float(duration) if duration is not None else None,
                frame_step=int(props["asr.frame_step"]),
                frame_seconds=float(props["asr.frame_seconds"]),
                frame_head=props["asr.frame_head"] == "1",
                int8=props["asr.int8"] == "1",
                streaming=streaming,
                chunk_frames=int(props["asr.chunk_frames"]) if streaming else 0,
                right_context_frames=int(props["asr.right_context_frames"]) if streaming else 0,
                states=json.loads(props["asr.states"]) if streaming else None,
            )
        except (ValueError, TypeError, KeyError) as e:
            raise ModelFileError(f"{where}: bad metadata: {e}") from e


def read_props(path: str | os.PathLike) -> dict[str, str]:
    """An ONNX file's `metadata_props` as a dict, with `onnx` (or, without it, onnxruntime);
    ModelFileError naming the file if it is missing or not ONNX."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        import onnx
    except ImportError:
        onnx = None
    try:
        if onnx is not None:
            model = onnx.load(str(path), load_external_data=False)
            return {p.key: p.value for p in model.metadata_props}
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return dict(session.get_modelmeta().custom_metadata_map)
    except ImportError as e:
        raise ModelFileError(f"{path}: reading ONNX models needs onnx or onnxruntime: pip install onnx") from e
    except Exception as e:  # a truncated or foreign file: protobuf's DecodeError, onnxruntime's errors, ...
        raise ModelFileError(f"{path}: not a readable ONNX model: {e}".splitlines()[0]) from e


def read_metadata(path: str | os.PathLike) -> ModelMetadata:
    """An exported model's metadata; ModelFileError naming the file if it is damaged, foreign or
    of another version."""
    return ModelMetadata.from_props(read_props(path), str(path))
