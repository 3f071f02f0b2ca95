"""`asr export`: a checkpoint -> one ONNX graph from raw audio to log-probs, checked against torch.

    audio (batch, samples) float32, audio_lengths (batch,) int64
        ──► GraphFeatures (asr/export_features.py: framing, window, DFT, mel, log, [DCT], CMVN,
            [deltas], [stacking]) ──► the model (frontend, recurrent stack, output layers)
        ──► log_probs (batch, frames, vocab), lengths (batch,) [, frame_log_probs (batch, frames, vocab)]

The values are `Recognizer.outputs(audio, lengths)`'s (the frame head's where the model has one),
each utterance of a padded batch as if alone: the backward direction reads each utterance reversed
within its own length (`reverse_padded`: ONNX's ReverseSequence), so padding never reaches it.
The metadata (asr/onnx_meta.py) carries the config, tokenizer and frame clock, so a runtime
without torch needs nothing else.

What exports: `model.cell` lstm and gru (nn.LSTM / nn.GRU: ONNX's LSTM and GRU ops), every
direction, frontend and frame head. A latency-controlled model exports for offline use, its
windows as `CTCModel._forward_windows` runs them (`graph_windows`); the look-ahead of its middle
layers starts from each chunk's end state, whose cell state ONNX's LSTM op does not give: it is
recomputed from the gates (`cell_states`, an ONNX Loop). The custom cells (asr/models/cells.py,
convlstm.py) are Python or TorchScript loops over frames inside custom autograd Functions, which
the tracer would unroll to the example's length: `ExportError`, never a wrong graph.

The TorchScript exporter (`torch.onnx.export(dynamo=False)`): it keeps the dynamic axes of this
graph; the torch.export-based one gave graphs that failed at run time on other shapes. It needs
the `onnx` package (not onnxscript); checking and --int8 need onnxruntime.
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from asr.config import config_to_dict
from asr.export_features import GraphFeatures, shape_size
from asr.fileio import atomic_path
from asr.inference import Recognizer
from asr.models.encoder import CTCModel, RecurrentLayer, reverse_padded
from asr.onnx_meta import INPUTS, OUTPUTS, ModelMetadata, read_metadata

EXPORTABLE_CELLS = ("lstm", "gru")
DEFAULT_OPSET = 17
MAX_CHECK_DELTA = 1e-3  # the largest |log-prob| difference from torch a float32 export may show
QUANTIZED_OPS = ["LSTM", "MatMul"]  # what --int8 quantizes (weights to int8, activations dynamically); onnxruntime has no int8 GRU
CHECK_SECONDS = (0.6, 2.9)  # the range of the check signals' lengths, s


class ExportError(ValueError):
    """A checkpoint that cannot be exported faithfully, or an export that failed its check."""


@torch.jit.script
def cell_states(forget: Tensor, update: Tensor) -> Tensor:
    """An LSTM's cell states from its gates: c_t = f_t c_{t-1} + i_t g_t from c_{-1} = 0.
    forget (batch, frames, hidden) = f, update (batch, frames, hidden) = i * g -> c, same shape.
    Scripted, so that the export holds a Loop over however many frames come."""
    c = torch.zeros_like(update[:, 0])
    out: list[Tensor] = []
    for t in range(update.shape[1]):
        c = forget[:, t] * c + update[:, t]
        out.append(c)
    return torch.stack(out, 1)


def chunk_end_states(rnn: nn.Module, x: Tensor, out: Tensor, chunk: int) -> Tensor | tuple[Tensor, Tensor]:
    """The state of `rnn` (nn.LSTM or nn.GRU, batch-first, one layer) after each chunk of x,
    given its outputs over all of x from the zero state: `RecurrentLayer._chunk_end_states`
    without a loop over chunks. x (batch, n * chunk, input), out (batch, n * chunk, hidden) ->
    the states (1, batch * n, hidden), batch-major: h (GRU) or (h, c) (LSTM)."""
    ends = chunk * torch.arange(1, shape_size(x, 1) // chunk + 1) - 1  # (n,): each chunk's last frame
    hidden = out[:, ends].reshape(1, -1, out.shape[2])  # (1, batch * n, hidden)
    if isinstance(rnn, nn.GRU):
        return hidden
    before = F.pad(out, (0, 0, 1, 0))[:, :-1]  # (batch, frames, hidden): h_{t-1}, 0 before the first
    gates = F.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0) + F.linear(before, rnn.weight_hh_l0, rnn.bias_hh_l0)  # (batch, frames, 4 hidden)
    i, f, g, _ = gates.chunk(4, dim=2)  # nn.LSTM's gate order
    c = cell_states(torch.sigmoid(f), torch.sigmoid(i) * torch.tanh(g))  # (batch, frames, hidden)
    return hidden, c[:, ends].reshape(1, -1, c.shape[2])


def graph_layer_windows(layer: RecurrentLayer, windows: Tensor, window_lengths: Tensor, chunk: int, first: bool, top: bool) -> Tensor:
    """`RecurrentLayer.forward_windows` (offline: no state in or out) in exportable ops: no
    Python loop over the windows, no shape in an `if`. windows (batch, n, chunk + right, input),
    window_lengths (batch, n) -> (batch, n, chunk + right, 2 * hidden)."""
    width = windows.shape[2]
    right = width - chunk
    main = windows[:, :, :chunk].flatten(1, 2)  # (batch, n * chunk, input)
    if right > 0 and first and not top:  # the look-ahead's inputs are the next chunks' own
        whole, _ = layer.forward_rnn(torch.cat([main, windows[:, -1, chunk:]], 1))  # (batch, n * chunk + right, hidden)
        index = chunk * torch.arange(shape_size(windows, 1))[:, None] + torch.arange(width)  # (n, width)
        forward_out = whole[:, index]  # (batch, n, width, hidden)
    else:
        out, _ = layer.forward_rnn(main)  # (batch, n * chunk, hidden)
        forward_out = out.reshape(out.shape[0], -1, chunk, out.shape[2])  # (batch, n, chunk, hidden)
        if right > 0 and top:  # not read above: zeros, as forward_windows leaves them
            forward_out = F.pad(forward_out, (0, 0, 0, right))
        elif right > 0:
            starts = chunk_end_states(layer.forward_rnn, main, out, chunk)
            ahead, _ = layer.forward_rnn(windows[:, :, chunk:].flatten(0, 1), starts)  # (batch * n, right, hidden)
            forward_out = torch.cat([forward_out, ahead.reshape(out.shape[0], -1, right, out.shape[2])], 2)
    flat, flat_lengths = windows.flatten(0, 1), window_lengths.flatten()  # (batch * n, width, input), (batch * n,)
    backward_out, _ = layer.backward_rnn(reverse_padded(flat, flat_lengths))  # restarts in every window
    backward_out = reverse_padded(backward_out, flat_lengths)  # (batch * n, width, hidden)
    return torch.cat([forward_out, backward_out.reshape(forward_out.shape[0], -1, width, backward_out.shape[2])], -1)


def graph_windows(model: CTCModel, x: Tensor, lengths: Tensor) -> Tensor:
    """`CTCModel._forward_windows` in exportable ops: (batch, frames, input), (batch,) ->
    (batch, frames, 2 * hidden). Windows are gathered (frames past the end read as 0, as the
    reference pads them), not unfolded."""
    chunk, right = model.config.chunk_frames, model.config.right_context_frames
    num_frames = shape_size(x, 1)
    n = ((num_frames + chunk - 1) // chunk).clamp_min(1)
    index = chunk * torch.arange(n)[:, None] + torch.arange(chunk + right)  # (n, chunk + right)
    windows = x[:, index.clamp_max(num_frames - 1)] * (index < num_frames)[None, :, :, None]  # (batch, n, chunk + right, input)
    window_lengths = (lengths[:, None] - chunk * torch.arange(n)[None, :]).clamp(0, chunk + right)  # (batch, n)
    top = len(model.layers) - 1
    for i, layer in enumerate(model.layers):
        windows = graph_layer_windows(layer, windows, window_lengths, chunk, first=i == 0, top=i == top)
    return windows[:, :, :chunk].flatten(1, 2)[:, :num_frames]  # (batch, frames, 2 * hidden)


class GraphRecognizer(nn.Module):
    """A recognizer's features and model as one exportable module: audio (batch, samples),
    audio_lengths (batch,) -> log_probs (batch, frames, vocab), lengths (batch,) and, with a frame
    head, frame_log_probs (batch, frames, vocab): `Recognizer.outputs`, in eval mode."""

    def __init__(self, recognizer: Recognizer):
        super().__init__()
        check_exportable(recognizer.config)
        self.features = GraphFeatures(recognizer.features)
        self.model = recognizer.model
        self.frame_head = recognizer.align_with_frame_head and recognizer.model.frame_output is not None
        self.eval()

    def forward(self, audio: Tensor, audio_lengths: Tensor) -> tuple[Tensor, ...]:
        feats, lengths = self.features(audio, audio_lengths)  # (batch, frames, input_dim), (batch,)
        model = self.model
        if model.config.direction != "latency_controlled":
            log_probs, lengths, frame_log_probs = model(feats, lengths, frames=True)
        else:
            x = graph_windows(model, model.frontend(feats), lengths)  # (batch, frames, 2 * hidden)
            log_probs, lengths, frame_log_probs = model._outputs(x, lengths, frames=True)
        return (log_probs, lengths, frame_log_probs) if self.frame_head else (log_probs, lengths)


def check_exportable(config) -> None:
    """ExportError naming what cannot be exported faithfully (see the module docstring)."""
    cell = config.model.cell
    if cell not in EXPORTABLE_CELLS:
        why = {
            "convlstm": "its ConvLSTM layers are a Python loop over frames (asr/models/convlstm.py)",
        }.get(cell, "its recurrence is a TorchScript loop inside a custom autograd Function (asr/models/cells.py)")
        raise ExportError(
            f"model.cell={cell!r} cannot be exported to ONNX: {why}, which the exporter would unroll to the "
            f"example's length; cells that export: {', '.join(EXPORTABLE_CELLS)}"
        )


def check_signals(sample_rate: int, count: int = 3, seed: int = 0) -> list[np.ndarray]:
    """`count` signals of random lengths (CHECK_SECONDS) that stand in for speech: noise under a
    slow random envelope, some with digital silence at an end (cmvn "speech" leaves it out)."""
    rng = np.random.default_rng(seed)
    signals = []
    for i in range(count):
        n = int(rng.uniform(*CHECK_SECONDS) * sample_rate)
        step = sample_rate // 10
        envelope = np.repeat(rng.uniform(0.0, 0.5, n // step + 1), step)[:n]
        signal = rng.standard_normal(n) * envelope * 0.3
        if i % 2:
            signal[: sample_rate // 5] = 0.0
        signals.append(signal.astype(np.float32))
    return signals


def padded_batch(signals: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Signals -> audio (batch, longest) float32 padded with zeros, lengths (batch,) int64."""
    audio = np.zeros((len(signals), max(len(s) for s in signals)), np.float32)
    for i, s in enumerate(signals):
        audio[i, : len(s)] = s
    return audio, np.array([len(s) for s in signals], np.int64)


def run_onnx(session, audio: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    """An onnxruntime session's outputs by name for one padded batch."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {INPUTS[0]: audio, INPUTS[1]: lengths})))


def max_difference(recognizer: Recognizer, session, signals: list[np.ndarray]) -> float:
    """The largest |log-prob| difference between torch (`Recognizer.outputs`) and the ONNX
    session on the padded batch of `signals`, over each utterance's own frames (the frame head's
    log-probs too); ExportError if the frame counts differ."""
    audio, lengths = padded_batch(signals)
    log_probs, frame_lengths, frame_log_probs = recognizer.outputs(torch.from_numpy(audio), torch.from_numpy(lengths))
    out = run_onnx(session, audio, lengths)
    if out[OUTPUTS[1]].tolist() != frame_lengths.tolist():
        raise ExportError(f"the ONNX graph gives {out[OUTPUTS[1]].tolist()} frames where torch gives {frame_lengths.tolist()}")
    pairs = [(log_probs, out[OUTPUTS[0]])] + ([(frame_log_probs, out[OUTPUTS[2]])] if frame_log_probs is not None else [])
    worst = 0.0
    for reference, exported in pairs:
        for i, n in enumerate(frame_lengths.tolist()):
            worst = max(worst, float(np.abs(exported[i, :n] - reference[i, :n].numpy()).max(initial=0.0)))
    return worst


@dataclass
class ExportReport:
    """What `export_onnx` wrote and how it checked it."""

    path: Path
    size: int  # bytes
    seconds: float  # the export's time, quantization and check included
    max_delta: float | None  # max |log-prob| difference from torch on the check signals (the float32 graph); None: not checked
    int8_delta: float | None  # the same for the int8 graph (quantization error, not checked against a bound)
    metadata: ModelMetadata


def model_metadata(recognizer: Recognizer, int8: bool, frame_head: bool) -> ModelMetadata:
    """What the exported file says about itself (asr/onnx_meta.py)."""
    prior = recognizer.label_log_prior
    return ModelMetadata(
        config=config_to_dict(recognizer.config),
        tokenizer=recognizer.tokenizer.to_dict(),
        label_log_prior=prior.cpu().tolist() if prior is not None else None,
        train_max_duration=recognizer.train_max_duration,
        frame_step=recognizer.features.frame_step,
        frame_seconds=recognizer.features.frame_seconds,
        frame_head=frame_head,
        int8=int8,
    )


def trace_to_onnx(graph: GraphRecognizer, path: Path, opset: int, sample_rate: int) -> None:
    """torch.onnx.export (TorchScript) of `graph` to `path` with dynamic batch and length axes;
    the example is two utterances of different lengths."""
    audio, lengths = padded_batch(check_signals(sample_rate, 2, seed=1))
    outputs = list(OUTPUTS[: 3 if graph.frame_head else 2])
    axes = {INPUTS[0]: {0: "batch", 1: "samples"}, INPUTS[1]: {0: "batch"}, OUTPUTS[1]: {0: "batch"}}
    axes.update({name: {0: "batch", 1: "frames"} for name in outputs if name != OUTPUTS[1]})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and the tracer's warnings
        try:
            torch.onnx.export(
                graph, (torch.from_numpy(audio), torch.from_numpy(lengths)), str(path), dynamo=False, opset_version=opset,
                input_names=list(INPUTS), output_names=outputs, dynamic_axes=axes,
            )  # fmt: skip
        except Exception as e:
            raise ExportError(f"torch.onnx.export failed (opset {opset}): {e}".splitlines()[0]) from e
    graph.eval()  # the exporter puts modules back in the mode it found the wrapper in


def add_metadata(path: Path, metadata: ModelMetadata) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.graph.value_info[:]  # shapes the quantizer inferred: onnxruntime infers them again (~20 KB)
    del model.metadata_props[:]
    for key, value in metadata.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def quantize_int8(source: Path, target: Path) -> None:
    """Weights of LSTM and MatMul to int8 (onnxruntime's dynamic quantization; GRU weights stay
    float32); the feature nodes are left alone (their float64 tables would not survive int8)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    features = [node.name for node in onnx.load(str(source)).graph.node if node.name.startswith("/features/")]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to run its pre-processing (shape inference; nothing here needs it)
    try:
        quantize_dynamic(str(source), str(target), op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=features, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def export_onnx(
    checkpoint: str | os.PathLike, output: str | os.PathLike, *, int8: bool = False, opset: int = DEFAULT_OPSET, check: bool = True
) -> ExportReport:
    """Export `checkpoint` to `output` (written atomically, only once checked): one ONNX graph from
    audio to log-probs (module docstring), with the metadata of asr/onnx_meta.py. With `check`
    and onnxruntime installed, run torch and the graph on a padded batch of 3 random-length
    signals: ExportError if the float32 graph differs by more than MAX_CHECK_DELTA."""
    started = time.perf_counter()
    recognizer = load_for_export(checkpoint)
    graph = GraphRecognizer(recognizer)
    signals = check_signals(recognizer.sample_rate)
    output = Path(output)
    max_delta, int8_delta = write_checked(
        output, model_metadata(recognizer, int8, graph.frame_head), lambda path: trace_to_onnx(graph, path, opset, recognizer.sample_rate),
        lambda session: max_difference(recognizer, session, signals), "graph differs from torch", f"{len(signals)} test signals",
        int8=int8, check=check,
    )  # fmt: skip
    return ExportReport(output, output.stat().st_size, time.perf_counter() - started, max_delta, int8_delta, read_metadata(output))


def load_for_export(checkpoint: str | os.PathLike) -> Recognizer:
    """The checkpoint's recognizer on the CPU; ExportError where the onnx package (which the
    TorchScript exporter writes through) is missing."""
    if importlib.util.find_spec("onnx") is None:
        raise ExportError("asr export needs the onnx package: pip install onnx onnxruntime")
    return Recognizer.from_checkpoint(checkpoint, device="cpu")


def write_checked(
    output: Path, metadata: ModelMetadata, trace: Callable[[Path], None], difference: Callable[[object], float], what: str, on: str,
    *, int8: bool, check: bool, before_int8: Callable[[Path], None] | None = None,
) -> tuple[float | None, float | None]:
    """What every export does around its graph: `trace(path)` into a temporary file beside
    `output`; with `check` and onnxruntime installed, `difference(session)` of the float32 graph
    (ExportError "the exported {what} by ... on {on}: not written" above MAX_CHECK_DELTA); with
    `int8`, `before_int8(path)` then quantization, and the int8 graph's difference; the metadata
    added, and the file renamed into place. Returns (float32 difference, int8 difference), None
    where not checked."""
    try:
        import onnxruntime
    except ImportError:
        if int8:
            raise ExportError("--int8 needs onnxruntime: pip install onnxruntime") from None
        onnxruntime = None
    max_delta = int8_delta = None
    with atomic_path(output) as tmp:
        traced = tmp.with_name(tmp.name + ".fp32.onnx") if int8 else tmp
        try:
            trace(traced)
            if check and onnxruntime is not None:
                max_delta = difference(_session(onnxruntime, traced))
                if not max_delta <= MAX_CHECK_DELTA:
                    raise ExportError(f"the exported {what} by {max_delta:.2e} in log-prob (more than {MAX_CHECK_DELTA:g}) on {on}: not written")
            if int8:
                if before_int8 is not None:
                    before_int8(traced)
                quantize_int8(traced, tmp)
                if check:
                    int8_delta = difference(_session(onnxruntime, tmp))
        finally:
            if traced != tmp:
                traced.unlink(missing_ok=True)
        add_metadata(tmp, metadata)
    return max_delta, int8_delta


def _session(onnxruntime, path: Path):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(torch.get_num_threads(), 1)
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
