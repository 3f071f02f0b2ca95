"""`asr export --streaming`: a streaming model -> one ONNX step graph with its states as inputs and
outputs, checked window by window against `EncoderStream`.

    feats (batch, frames, feat_dim) float32   one window of model frames (FeatureStream's, outside)
    main_frames () int64                      how many of them leave: the chunk (fewer at the end)
    h, c (layers, batch, hidden) float32      each layer's forward state before the window (GRU: h)
        ──► frontend ──► each layer: forward direction over the first `main` frames from its
            state (its end state goes out), on from there over the rest (the right context, for
            the outputs only); backward direction over the whole window from zero
        ──► linear ──► log-softmax of the first `main` frames
    ──► log_probs (batch, main, vocab) [, frame_log_probs (batch, main, vocab)], h_out, c_out

One call is one `EncoderStream` step (`_take` + `_run_stack`): a latency-controlled model runs
windows of chunk + right context frames and `main` = chunk leave, the last windows at the end of
the stream shorter (`main` = what is left, at most the chunk); a unidirectional model runs any
number of frames, `main` = all of them. A batch is windows of equal length and equal `main`
(what `EncoderStream.run_batch` batches); frames past `main` of a unidirectional window are not
run. The features (`FeatureStream`, with its streaming CMVN) stay outside the graph: they need
their own state (the analysis window's samples, the running statistics) and are cheap in numpy.

Same cells as asr/export.py (nn.LSTM, nn.GRU); a bidirectional model cannot stream.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from asr.export import (
    ExportError, check_exportable, check_signals, load_for_export, model_metadata, padded_batch, write_checked,
)  # fmt: skip
from asr.inference import Recognizer
from asr.models.encoder import CTCModel, EncoderStream, RecurrentLayer
from asr.onnx_meta import STATE_OUT, STEP_INPUTS, STEP_OUTPUTS, ModelMetadata, read_metadata


def state_names(model: CTCModel) -> tuple[str, ...]:
    """The state inputs of a model's step graph: h and c (LSTM) or h (GRU)."""
    return ("h",) if model.config.cell == "gru" else ("h", "c")


def step_layer(layer: RecurrentLayer, x: Tensor, main: Tensor, state, top: bool) -> tuple[Tensor, object]:
    """One layer over one window: x (batch, frames, input), main () int64, the forward direction's
    state -> (batch, main or frames, directions * hidden) and its state after `main` frames.
    `RecurrentLayer.forward_windows` for one window, as `_run_stack` calls it."""
    forward_out, state_out = layer.forward_rnn(x[:, :main], state)  # (batch, main, hidden)
    if layer.backward_rnn is None:
        return forward_out, state_out
    if not top:  # the right context goes on from the chunk's end state; one zero frame more, so the op never sees 0 frames
        ahead, _ = layer.forward_rnn(F.pad(x[:, main:], (0, 0, 0, 1)), state_out)  # (batch, frames - main + 1, hidden)
        forward_out = torch.cat([forward_out, ahead[:, :-1]], 1)  # (batch, frames, hidden)
    backward_out, _ = layer.backward_rnn(x.flip(1))  # restarts in every window
    backward_out = backward_out.flip(1)  # (batch, frames, hidden)
    if top:  # only the chunk's frames leave
        backward_out = backward_out[:, :main]
    return torch.cat([forward_out, backward_out], -1), state_out


class StepGraph(nn.Module):
    """A streaming model's one step as an exportable module: feats (batch, frames, input_dim),
    main_frames () int64, states (layers, batch, hidden) each -> log_probs (batch, main, vocab)
    [, frame_log_probs], the new states (module docstring)."""

    def __init__(self, model: CTCModel, frame_head: bool):
        super().__init__()
        if model.config.direction == "bidirectional":
            raise ExportError(
                "a bidirectional model reads the whole utterance and cannot stream: export it without --streaming, "
                "or train one with model.direction=unidirectional or latency_controlled (configs/demo_streaming.yaml)"
            )
        self.model = model
        self.frame_head = frame_head and model.frame_output is not None
        self.eval()

    def forward(self, feats: Tensor, main_frames: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        x = model.frontend(feats)  # (batch, frames, frontend)
        top = len(model.layers) - 1
        new_states: list[list[Tensor]] = [[] for _ in states]
        for i, layer in enumerate(model.layers):
            parts = [s[i : i + 1] for s in states]  # (1, batch, hidden) each
            x, state = step_layer(layer, x, main_frames, parts[0] if len(parts) == 1 else tuple(parts), top=i == top)
            for j, part in enumerate([state] if len(parts) == 1 else state):
                new_states[j].append(part)
        log_probs, _, frame_log_probs = model._outputs(x, main_frames, frames=True)  # (batch, main, vocab) each
        heads = (log_probs, frame_log_probs) if self.frame_head else (log_probs,)
        return (*heads, *(torch.cat(parts, 0) for parts in new_states))


def output_names(model: CTCModel, frame_head: bool) -> list[str]:
    return list(STEP_OUTPUTS[: 2 if frame_head else 1]) + [name + STATE_OUT for name in state_names(model)]


def zero_states(metadata: ModelMetadata, batch: int = 1) -> dict[str, np.ndarray]:
    """A stream's first states (zeros), by input name, from a step graph's metadata."""
    return {name: np.zeros((shape[0], batch, shape[1]), np.float32) for name, shape in metadata.states.items()}


def stream_windows(num_frames: int, chunk: int, right: int) -> list[tuple[int, int, int]]:
    """The windows `EncoderStream` runs over a stream of `num_frames` model frames: (start, end,
    main) each, frames [start, end) of which the first `main` leave. Unidirectional (chunk 0): one
    window of all of them."""
    if not chunk:
        return [(0, num_frames, num_frames)] if num_frames else []
    windows, start = [], 0
    while start < num_frames:
        end = min(start + chunk + right, num_frames)
        windows.append((start, end, min(chunk, end - start)))
        start += windows[-1][2]
    return windows


def run_step_stream(session, feats: np.ndarray, metadata: ModelMetadata, pieces: int | None = None) -> dict[str, np.ndarray]:
    """Drive a step graph over one stream's feats (frames, feat_dim) window by window, the states
    carried in numpy: {"log_probs": (frames, vocab)[, "frame_log_probs"]}. Unidirectional: in
    `pieces` frames at a time (None: all at once). What a runtime does, with the whole stream
    known in advance."""
    chunk, right = metadata.chunk_frames, metadata.right_context_frames
    if chunk:
        windows = stream_windows(len(feats), chunk, right)
    else:
        step = pieces or max(len(feats), 1)
        windows = [(s, min(s + step, len(feats)), min(step, len(feats) - s)) for s in range(0, len(feats), step)]
    states = zero_states(metadata)
    heads = [o.name for o in session.get_outputs() if o.name in STEP_OUTPUTS]
    out: dict[str, list[np.ndarray]] = {name: [] for name in heads}
    for start, end, main in windows:
        feed = {STEP_INPUTS[0]: feats[None, start:end].astype(np.float32), STEP_INPUTS[1]: np.array(main, np.int64), **states}
        values = dict(zip(heads + [n + STATE_OUT for n in states], session.run(heads + [n + STATE_OUT for n in states], feed)))
        states = {name: values[name + STATE_OUT] for name in states}
        for name in heads:
            out[name].append(values[name][0])
    return {name: np.concatenate(parts) if parts else np.zeros((0, 0), np.float32) for name, parts in out.items()}


def check_features(recognizer: Recognizer, signals: list[np.ndarray]) -> list[Tensor]:
    """The model frames of each signal, (frames, feat_dim) each: what FeatureStream gives a streaming model."""
    audio, lengths = padded_batch(signals)
    features = recognizer.features
    training = features.training
    features.eval()  # no dither
    try:
        with torch.inference_mode():
            feats, frame_lengths = features(torch.from_numpy(audio), torch.from_numpy(lengths))
    finally:
        features.train(training)
    return [feats[i, :n].clone() for i, n in enumerate(frame_lengths.tolist())]


def stream_difference(model: CTCModel, session, metadata: ModelMetadata, feats: list[Tensor]) -> float:
    """The largest |log-prob| difference (the frame head's too) between `EncoderStream` (fed each
    stream at once, drained and finished) and the step graph driven window by window."""
    worst = 0.0
    for x in feats:
        stream = EncoderStream(model)
        stream.push(x)
        reference = [torch.cat(parts) for parts in zip(stream.drain(), stream.finish()) if parts[0] is not None]
        exported = run_step_stream(session, x.numpy(), metadata)
        for name, ref in zip(STEP_OUTPUTS, reference):
            if name not in exported:
                continue
            if exported[name].shape != tuple(ref.shape):
                raise ExportError(f"the step graph gives {name} of shape {exported[name].shape} where EncoderStream gives {tuple(ref.shape)}")
            worst = max(worst, float(np.abs(exported[name] - ref.numpy()).max(initial=0.0)))
    return worst


def trace_step(graph: StepGraph, path: Path, opset: int, input_dim: int) -> None:
    """torch.onnx.export (TorchScript) of the step graph with dynamic batch and frame axes; the
    example is a batch of 2 whole windows (unidirectional: 5 frames) from random states."""
    model = graph.model
    chunk = model.config.chunk_frames if model.config.direction == "latency_controlled" else 0
    width = chunk + model.config.right_context_frames if chunk else 5
    generator = torch.Generator().manual_seed(0)
    names = state_names(model)
    states = [torch.randn(len(model.layers), 2, model.config.hidden_size, generator=generator) * 0.1 for _ in names]
    feats = torch.randn(2, width, input_dim, generator=generator)
    outputs = output_names(model, graph.frame_head)
    axes = {STEP_INPUTS[0]: {0: "batch", 1: "frames"}, **{name: {1: "batch"} for name in names}}
    axes.update({name: {0: "batch", 1: "main"} for name in STEP_OUTPUTS if name in outputs})
    axes.update({name + STATE_OUT: {1: "batch"} for name in names})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                graph, (feats, torch.tensor(chunk or width), *states), str(path), dynamo=False, opset_version=opset,
                input_names=[*STEP_INPUTS, *names], output_names=outputs, dynamic_axes=axes,
            )  # fmt: skip
        except Exception as e:
            raise ExportError(f"torch.onnx.export failed (opset {opset}): {e}".splitlines()[0]) from e
    graph.eval()


def copy_weight_aliases(path: Path) -> None:
    """Replace every Identity that passes a weight on (how the exporter shares the forward
    direction's weights between its two LSTM nodes) by a copy of the weight: onnxruntime's
    quantizer leaves an LSTM whose weights are not initializers in float32 (demo model: 2 of 8
    LSTM nodes, 5 MiB), and two LSTM nodes reading one initializer come out wrong (measured:
    |Δ log-prob| 25), so each node gets its own."""
    import onnx

    model = onnx.load(str(path))
    weights = {t.name: t for t in model.graph.initializer}
    graph_outputs = {o.name for o in model.graph.output}
    aliases = [n for n in model.graph.node if n.op_type == "Identity" and n.input[0] in weights and n.output[0] not in graph_outputs]
    for node in aliases:
        copy = onnx.TensorProto()
        copy.CopyFrom(weights[node.input[0]])
        copy.name = node.output[0]
        model.graph.initializer.append(copy)
        model.graph.node.remove(node)
    onnx.save(model, str(path))


@dataclass
class StepExportReport:
    """What `export_step_onnx` wrote and how it checked it."""

    path: Path
    size: int  # bytes
    seconds: float  # the export's time, quantization and check included
    max_delta: float | None  # max |log-prob| difference from EncoderStream on the check streams (float32 graph); None: not checked
    int8_delta: float | None  # the same for the int8 graph (quantization error, not checked against a bound)
    metadata: ModelMetadata


def step_metadata(recognizer: Recognizer, int8: bool, frame_head: bool) -> ModelMetadata:
    """The offline export's metadata (asr.export.model_metadata) with the streaming keys."""
    model = recognizer.model
    chunk = model.config.chunk_frames if model.config.direction == "latency_controlled" else 0
    shape = [len(model.layers), model.config.hidden_size]
    right = model.config.right_context_frames if chunk else 0
    states = {name: shape for name in state_names(model)}
    return replace(model_metadata(recognizer, int8, frame_head), streaming=True, chunk_frames=chunk, right_context_frames=right, states=states)


def export_step_onnx(
    checkpoint: str | os.PathLike, output: str | os.PathLike, *, int8: bool = False, opset: int = 17, check: bool = True
) -> StepExportReport:
    """Export a streaming `checkpoint` to `output` (written atomically, only once checked) as one
    step graph (module docstring) with asr/onnx_meta.py's metadata and its streaming keys. With
    `check` and onnxruntime installed, stream the features of 3 random-length signals through
    `EncoderStream` and through the graph window by window: ExportError if the float32 graph
    differs by more than MAX_CHECK_DELTA."""
    started = time.perf_counter()
    recognizer = load_for_export(checkpoint)
    check_exportable(recognizer.config)
    model = recognizer.model
    graph = StepGraph(model, recognizer.align_with_frame_head)
    output = Path(output)
    metadata = step_metadata(recognizer, int8, graph.frame_head)
    signals = check_signals(recognizer.sample_rate)
    feats: list[Tensor] = []  # the signals' features, made when the first check asks

    def difference(session) -> float:
        feats[:] = feats or check_features(recognizer, signals)
        return stream_difference(model, session, metadata, feats)

    max_delta, int8_delta = write_checked(
        output, metadata, lambda path: trace_step(graph, path, opset, recognizer.features.output_dim), difference,
        "step graph differs from EncoderStream", f"{len(signals)} test streams", int8=int8, check=check, before_int8=copy_weight_aliases,
    )  # fmt: skip
    return StepExportReport(output, output.stat().st_size, time.perf_counter() - started, max_delta, int8_delta, read_metadata(output))
