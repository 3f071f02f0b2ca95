"""The recurrent CTC model: frontend → stacked (bi)directional recurrent layers → linear → log-probs.

`model.cell` picks the recurrence of every layer from RECURRENT_CELLS (nn.LSTM, nn.GRU, or the
custom cells of `asr.models.cells` and `asr.models.convlstm`); everything else is the same for all.

`model.direction` picks how far each layer looks ahead: `bidirectional` (the whole utterance),
`unidirectional` (nothing: streams frame by frame) or `latency_controlled` (LC-BLSTM; Chen & Huo
2016, Zhang et al. 2016: the utterance is cut into chunks of `chunk_frames`; the forward direction
carries its state from chunk to chunk, the backward direction restarts at every chunk and reads
`right_context_frames` past it). An LC-BLSTM runs the whole stack on windows of chunk + right
context: at every layer the right-context frames get their forward outputs by continuing from the
chunk's end state (which is not carried on) and their backward outputs from the window alone; only
the chunk's frames leave the top. Training runs the same windows (`CTCModel._forward_windows`), so
what the model learns is what it will see streaming (`EncoderStream`), to the last bit: with a right
context as long as the utterance it is the offline BiLSTM.

Each layer runs one unidirectional recurrence per direction. The backward direction sees every
utterance reversed *within its own length* (`reverse_padded`), so it starts at the utterance's
last real frame and padding never reaches its state; the forward direction needs nothing, since
padding only follows the real frames. On this CPU that is 2.2x faster than packed sequences
(packing makes every time step a different batch size; measured: 3x256 BiLSTM, batch 33 x 120
frames, forward+backward 0.67 s masked vs 1.46 s packed), and on CUDA it is plain cuDNN calls.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence, Union

import torch
import torch.nn as nn

from asr.config import DIRECTIONS, ModelConfig
from asr.models.cells import DIAG_PEEPHOLE, GREFF_VARIANTS, LSTMVariantLayer, SLSTMLayer, gers2000_spec
from asr.models.convlstm import ConvLSTMLayer


def _make_lstm_variant(input_size: int, hidden_size: int, config: ModelConfig) -> nn.Module:
    if config.lstm_variant not in GREFF_VARIANTS:
        raise ValueError(f"model.lstm_variant={config.lstm_variant!r}: choose one of {', '.join(GREFF_VARIANTS)}")
    return LSTMVariantLayer(input_size, hidden_size, GREFF_VARIANTS[config.lstm_variant])


# name -> (input_size, hidden_size, config) -> one unidirectional batch-first layer with nn.LSTM's
# (output, state) interface. `convlstm` puts ConvLSTM layers under nn.LSTM layers (see CTCModel).
RECURRENT_CELLS: dict[str, Callable[[int, int, ModelConfig], nn.Module]] = {
    "lstm": lambda i, h, c: nn.LSTM(i, h, batch_first=True),  # Gers et al. 1999; cuDNN on GPU
    "gru": lambda i, h, c: nn.GRU(i, h, batch_first=True),  # Cho et al. 2014
    "peephole": lambda i, h, c: LSTMVariantLayer(i, h, gers2000_spec(c.peephole_output)),  # Gers & Schmidhuber 2000
    "lstm_diag_peephole": lambda i, h, c: LSTMVariantLayer(i, h, DIAG_PEEPHOLE),  # Graves et al. 2013
    "lstm_variant": _make_lstm_variant,  # Greff et al. 2017
    "slstm": lambda i, h, c: SLSTMLayer(i, h),  # Beck et al. 2024
    "convlstm": lambda i, h, c: nn.LSTM(i, h, batch_first=True),  # the layers above the ConvLSTM ones
}


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence within its own length; padded frames stay where they are.

    x (batch, frames, dim), lengths (batch,) -> (batch, frames, dim). Its own inverse.
    """
    if torch.onnx.is_in_onnx_export():
        return _ReverseSequence.apply(x, lengths.long())
    return _gather_reversed(x, lengths)


def _gather_reversed(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    frames = torch.arange(x.shape[1], device=x.device)  # (frames,)
    lengths = lengths.to(x.device)[:, None]  # (batch, 1)
    index = torch.where(frames < lengths, lengths - 1 - frames, frames)  # (batch, frames)
    return x.gather(1, index[:, :, None].expand_as(x))


class _ReverseSequence(torch.autograd.Function):
    """`reverse_padded` as the ONNX exporter writes it: ONNX's ReverseSequence, the same operation
    in one op (the gather's (batch, frames, dim) index cost 5 % of the int8 demo graph's time)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return _gather_reversed(x, lengths)

    @staticmethod
    def symbolic(g, x, lengths):
        return g.op("ReverseSequence", x, lengths, batch_axis_i=0, time_axis_i=1)


# A recurrent state as the cells return it: a tensor (GRU) or a tuple of tensors (LSTMs), each
# (1, batch, size). Only these helpers look inside.
State = Union[torch.Tensor, tuple]


def map_state(fn: Callable[..., torch.Tensor], *states: State) -> State:
    """fn applied to the matching tensors of one or more states of the same kind."""
    if isinstance(states[0], torch.Tensor):
        return fn(*states)
    return tuple(fn(*parts) for parts in zip(*states))


class RecurrentLayer(nn.Module):
    """One recurrent layer, one or two directions; outputs of the directions are concatenated.

    `make()` builds one unidirectional batch-first recurrence with nn.LSTM's (output, state) interface.
    """

    def __init__(self, make: Callable[[], nn.Module], bidirectional: bool):
        super().__init__()
        self.forward_rnn = make()
        self.backward_rnn = make() if bidirectional else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (batch, frames, input_size), lengths (batch,) -> (batch, frames, directions * hidden_size)."""
        forward_out, _ = self.forward_rnn(x)  # (batch, frames, hidden)
        if self.backward_rnn is None:
            return forward_out
        backward_out, _ = self.backward_rnn(reverse_padded(x, lengths))  # (batch, frames, hidden), reversed time
        return torch.cat([forward_out, reverse_padded(backward_out, lengths)], dim=-1)

    def forward_windows(
        self, windows: torch.Tensor, window_lengths: torch.Tensor | None, chunk: int, state: State | None = None,
        first: bool = False, top: bool = False,
    ) -> tuple[torch.Tensor, State | None]:
        """The latency-controlled layer over windows of chunk + right context (see the module
        docstring). windows (batch, n, chunk + right, input) hold frames [i * chunk, i * chunk +
        chunk + right) of each utterance, window_lengths (batch, n) how many of them are real (None:
        all);
        `state`: the forward direction's state before window 0 (zeros if None).
        -> (batch, n, chunk + right, 2 * hidden) and the forward state after the last chunk.

        Two shortcuts that change no value: `top` (only the chunks' frames are read above: the
        look-ahead's forward outputs are left at zero) and `first` (the first layer of a whole
        utterance: the look-ahead's inputs are the next chunks' own, so the forward direction's
        outputs there are theirs, from one call; the state it returns is then None)."""
        batch, n, width, _ = windows.shape
        right = width - chunk
        main = windows[:, :, :chunk].flatten(1, 2)  # (batch, n * chunk, input): the chunks, back to back
        if right > 0 and first and not top:
            tail = windows[:, -1, chunk:]  # (batch, right, input): what the last window reads past its chunk
            whole, _ = self.forward_rnn(torch.cat([main, tail], 1), state)  # (batch, n * chunk + right, hidden)
            ahead = whole[:, chunk:].unfold(1, right, chunk).transpose(2, 3)  # (batch, n, right, hidden)
            forward_out = torch.cat([whole[:, : n * chunk].unflatten(1, (n, chunk)), ahead], 2)  # (batch, n, width, hidden)
            last = None
        else:
            forward_out, last = self.forward_rnn(main, state)  # carried from chunk to chunk: one call over them all
            forward_out = forward_out.unflatten(1, (n, chunk))  # (batch, n, chunk, hidden)
            if right > 0 and top:
                forward_out = torch.cat([forward_out, forward_out.new_zeros(batch, n, right, forward_out.shape[-1])], 2)
            elif right > 0:  # the look-ahead: the same direction on from each chunk's end state, not carried on
                ends = [last] if n == 1 else self._chunk_end_states(windows[:, :, :chunk], state)
                starts = map_state(lambda *parts: torch.stack(parts, 2).flatten(1, 2), *ends)  # (1, batch * n, hidden)
                ahead, _ = self.forward_rnn(windows[:, :, chunk:].flatten(0, 1), starts)  # (batch * n, right, hidden)
                forward_out = torch.cat([forward_out, ahead.unflatten(0, (batch, n))], 2)  # (batch, n, width, hidden)
        flat = windows.flatten(0, 1)  # (batch * n, width, input)
        if window_lengths is None:  # every window whole (a stream's): a plain flip
            backward_out, _ = self.backward_rnn(flat.flip(1))  # restarts in every window
            backward_out = backward_out.flip(1).unflatten(0, (batch, n))  # (batch, n, width, hidden)
        else:
            flat_lengths = window_lengths.flatten()
            backward_out, _ = self.backward_rnn(reverse_padded(flat, flat_lengths))  # restarts in every window
            backward_out = reverse_padded(backward_out, flat_lengths).unflatten(0, (batch, n))  # (batch, n, width, hidden)
        return torch.cat([forward_out, backward_out], dim=-1), last

    def _chunk_end_states(self, chunks: torch.Tensor, state: State | None) -> list[State]:
        """The forward direction's state after each of chunks (batch, n, chunk, input), from
        `state`, for their values only: the gradient reaches the chunks through their own frames,
        not through the look-ahead's start (a no-grad pass: 1.19 -> 1.02 s a training step)."""
        ends = []
        with torch.no_grad():
            for i in range(chunks.shape[1]):
                _, state = self.forward_rnn(chunks[:, i], state)
                ends.append(state)
        return ends


class CTCModel(nn.Module):
    def __init__(self, input_dim: int, vocab_size: int, config: ModelConfig):
        super().__init__()
        if config.cell not in RECURRENT_CELLS:
            raise ValueError(f"model.cell={config.cell!r}: choose one of {', '.join(RECURRENT_CELLS)}")
        if config.direction not in DIRECTIONS:
            raise ValueError(f"model.direction={config.direction!r}: choose one of {', '.join(DIRECTIONS)}")
        if config.direction == "latency_controlled" and (config.chunk_frames < 1 or config.right_context_frames < 0):
            raise ValueError(
                f"model.direction=latency_controlled needs model.chunk_frames >= 1 and model.right_context_frames >= 0, "
                f"got {config.chunk_frames} and {config.right_context_frames}"
            )
        if config.cell == "convlstm" and config.frontend_size > 0:
            raise ValueError("model.cell=convlstm reads the filterbank itself: set model.frontend_size=0")
        self.config = config
        self.frontend: nn.Module = nn.Identity()
        size = input_dim
        if config.frontend_size > 0:
            self.frontend = nn.Sequential(nn.Linear(input_dim, config.frontend_size), nn.ReLU(), nn.Dropout(config.dropout))
            size = config.frontend_size
        directions = 2 if config.bidirectional else 1
        self.layers = nn.ModuleList()
        if config.cell == "convlstm":  # Shi et al. 2015 over the filterbank, flattened into the layers above
            channels = config.convlstm_input_channels
            for _ in range(config.convlstm_layers):
                make_conv = lambda size=size, channels=channels: ConvLSTMLayer(
                    size, channels, config.convlstm_channels, config.convlstm_kernel
                )
                self.layers.append(RecurrentLayer(make_conv, config.bidirectional))
                channels = directions * config.convlstm_channels
                size = channels * self.layers[-1].forward_rnn.freq
        make_cell = RECURRENT_CELLS[config.cell]
        for _ in range(config.num_layers):
            self.layers.append(RecurrentLayer(lambda size=size: make_cell(size, config.hidden_size, config), config.bidirectional))
            size = directions * config.hidden_size
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(size, vocab_size)
        # a second output layer over the same top layer: which token each frame is inside (blank =
        # none: silence), trained by cross-entropy on timed transcripts (train.frame_loss_weight);
        # forced alignment reads it instead of CTC's spikes (asr.align.align_log_probs)
        self.frame_output = nn.Linear(size, vocab_size) if config.frame_head else None

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor, frames: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """feats (batch, frames, input_dim), lengths (batch,) -> log_probs (batch, frames, vocab), lengths (batch,);
        with `frames`, also the frame head's log-probs (batch, frames, vocab), None without one.

        Frames past an utterance's length hold log-probs too; they are meaningless and every
        consumer (CTC loss, decoders) reads only the first `lengths` frames.
        """
        x = self.frontend(feats)  # (batch, frames, frontend)
        if self.config.direction == "latency_controlled":
            x = self._forward_windows(x, lengths)
        else:
            for i, layer in enumerate(self.layers):
                if i:
                    x = self.dropout(x)
                x = layer(x, lengths)  # (batch, frames, directions * hidden)
        return self._outputs(x, lengths, frames)

    def _forward_windows(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The latency-controlled stack over a batch: (batch, frames, frontend) -> (batch, frames, 2 * hidden),
        each chunk's frames as `EncoderStream` computes them."""
        chunk, right = self.config.chunk_frames, self.config.right_context_frames
        batch, frames, _ = x.shape
        n = max(1, -(-frames // chunk))
        padded = nn.functional.pad(x, (0, 0, 0, n * chunk + right - frames))  # (batch, n * chunk + right, dim)
        windows = padded.unfold(1, chunk + right, chunk).transpose(2, 3)  # (batch, n, chunk + right, dim)
        starts = chunk * torch.arange(n, device=lengths.device)  # (n,)
        window_lengths = (lengths[:, None] - starts[None, :]).clamp(0, chunk + right)  # (batch, n)
        top = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i:
                windows = self.dropout(windows)
            windows, _ = layer.forward_windows(windows, window_lengths, chunk, first=i == 0, top=i == top)  # (batch, n, chunk + right, 2 * hidden)
        return windows[:, :, :chunk].flatten(1, 2)[:, :frames]  # (batch, frames, 2 * hidden)

    def _outputs(
        self, x: torch.Tensor, lengths: torch.Tensor, frames: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The top layer's outputs (batch, frames, size) -> log-probs (and the frame head's), as `forward`."""
        x = self.dropout(x)
        log_probs = torch.log_softmax(self.output(x).float(), dim=-1)  # (batch, frames, vocab), float32 even under autocast
        if not frames:
            return log_probs, lengths
        frame_log_probs = None
        if self.frame_output is not None:
            frame_log_probs = torch.log_softmax(self.frame_output(x).float(), dim=-1)  # (batch, frames, vocab)
        return log_probs, lengths, frame_log_probs


def build_model(config: ModelConfig, input_dim: int, vocab_size: int) -> CTCModel:
    return CTCModel(input_dim, vocab_size, config)


class EncoderStream:
    """A unidirectional or latency-controlled `CTCModel` fed feature frames as they come: log-probs
    out as soon as the model's look-ahead allows, equal to the whole utterance's offline.

    Unidirectional: every frame at once, each layer's state carried on. Latency-controlled: frames
    wait until a chunk and its right context are in (`chunk_frames + right_context_frames`), then the
    stack runs that window as training did (`RecurrentLayer.forward_windows`) and the chunk's frames
    leave; `finish` runs what is left as the shorter last windows. The state is a fixed size per
    layer, whatever the stream's length.

    `accept` = `push` (queue frames) + `drain` (run what is ready). A server holding many streams
    pushes into each and runs them together with `run_batch`: one call of the stack for every
    stream's next window (4.9x less time per stream at 16 streams than one call each: 3x256
    LC-BLSTM, one thread, 0.42 vs 2.05 ms a window).
    """

    def __init__(self, model: CTCModel):
        config = model.config
        if config.direction == "bidirectional":
            raise ValueError(
                "a bidirectional model reads the whole utterance and cannot stream: train one with "
                "model.direction=unidirectional or latency_controlled (configs/demo_streaming.yaml)"
            )
        self.model = model
        self.chunk = config.chunk_frames if config.direction == "latency_controlled" else 0
        self.right = config.right_context_frames if self.chunk else 0
        self.reset()

    def reset(self) -> None:
        """Forget the utterance: states back to zero, buffered frames dropped."""
        self.states: list[State | None] = [None] * len(self.model.layers)
        self.pending: torch.Tensor | None = None  # (frames, dim) frames not yet run

    def push(self, feats: torch.Tensor) -> None:
        """Queue feats (frames, input_dim), the next frames of the utterance, without running the model."""
        if len(feats):
            self.pending = feats if self.pending is None else torch.cat([self.pending, feats])

    @property
    def ready(self) -> int:
        """Frames `drain` would run now: the pending ones (unidirectional), or whole windows' chunks."""
        if self.pending is None:
            return 0
        if not self.chunk:
            return len(self.pending)
        width = self.chunk + self.right
        return 0 if len(self.pending) < width else (1 + (len(self.pending) - width) // self.chunk) * self.chunk

    def accept(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """feats (frames, input_dim), the next frames of the utterance -> the log-probs now final
        (n, vocab) and the frame head's (n, vocab) or None; n may be 0 while a chunk fills."""
        self.push(feats)
        return self.drain()

    @torch.inference_mode()
    def drain(self, final: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the frames that are ready (`final`: all of them, the last windows shorter)."""
        outputs = []
        with _streaming(self.model):
            while self.ready or (final and self.pending is not None and len(self.pending)):
                x, main = self._take()
                log_probs, frame_log_probs, self.states = _run_stack(self.model, x[None], main, self.states)
                outputs.append((log_probs[0], frame_log_probs[0] if frame_log_probs is not None else None))
        return _joined(outputs, self.model)

    def finish(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The log-probs of the frames still waiting for their right context (latency-controlled)."""
        return self.drain(final=True)

    def _take(self, frames: int | None = None) -> tuple[torch.Tensor, int | None]:
        """The next input to run, (frames, dim), and how many of its frames leave (None: all,
        unidirectional); dropped from `pending` as far as they leave. Unidirectional: `frames` of
        them (default all)."""
        if not self.chunk:
            frames = len(self.pending) if frames is None else frames
            x, self.pending = self.pending[:frames], self.pending[frames:]
            return x, None
        x = self.pending[: self.chunk + self.right]
        main = min(self.chunk, len(x))
        self.pending = self.pending[main:]
        return x, main

    @staticmethod
    @torch.inference_mode()
    def run_batch(streams: Sequence["EncoderStream"], batch_sizes: list[int] | None = None) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """`drain()` of every stream (of one model), batched: each step stacks the next window
        (unidirectional: the next frames, as many as every stream in the step has) of every
        stream that has one, with their states, and runs the stack once. The values are the
        single streams' to float rounding (about 1e-6). -> each stream's (log-probs, frame head's);
        `batch_sizes`, if given, gets each call's number of streams."""
        if not streams:
            return []
        model = streams[0].model
        outputs: list[list] = [[] for _ in streams]
        with _streaming(model):
            while True:
                ready = [i for i, s in enumerate(streams) if s.ready]
                if not ready:
                    break
                # a stream's first step has no state (None: zeros, as each cell starts), the others
                # have one; the two kinds run apart, so no cell's start is written out here
                groups: dict[bool, list[int]] = {True: [], False: []}  # fresh? -> streams
                for i in ready:
                    groups[streams[i].states[0] is None].append(i)
                for fresh, group in groups.items():
                    if not group:
                        continue
                    frames = None if streams[0].chunk else min(streams[i].ready for i in group)
                    taken = [streams[i]._take(frames) for i in group]
                    x = torch.stack([t[0] for t in taken])  # (batch, frames or width, dim)
                    if fresh:
                        states = [None] * len(model.layers)
                    else:  # each layer's states side by side on the batch axis: (1, batch, size) each
                        states = [map_state(lambda *parts: torch.cat(parts, 1), *(streams[i].states[layer] for i in group)) for layer in range(len(model.layers))]
                    log_probs, frame_log_probs, states = _run_stack(model, x, taken[0][1], states)
                    if batch_sizes is not None:
                        batch_sizes.append(len(group))
                    for j, i in enumerate(group):
                        streams[i].states = [map_state(lambda part: part[:, j : j + 1], state) for state in states]
                        outputs[i].append((log_probs[j], frame_log_probs[j] if frame_log_probs is not None else None))
        return [_joined(o, model) for o in outputs]


@contextmanager
def _streaming(model: CTCModel):
    """ATen's recurrences (oneDNN's RNN costs 2.3x ATen's on one stream's window: nn.LSTM 512 ->
    256 over 1 x 6 frames, one thread, 1.50 vs 0.65 ms; mkldnn.flags() would warn on every call),
    and no dropout whatever mode the caller left the model in (eval() walks every module: 7 % of a
    stream, so only when it is training)."""
    enabled, training = torch.backends.mkldnn.enabled, model.training
    torch.backends.mkldnn.enabled = False
    if training:
        model.eval()
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled
        if training:
            model.train()


def _run_stack(
    model: CTCModel, x: torch.Tensor, main: int | None, states: list[State | None]
) -> tuple[torch.Tensor, torch.Tensor | None, list[State | None]]:
    """x (batch, frames, input_dim): unidirectional frames (main None) or one window per stream
    whose first `main` frames are its chunk; states: each layer's, batched (None: zeros) ->
    log-probs of the frames that leave (batch, n, vocab), the frame head's, the new states."""
    x = model.frontend(x)
    states = list(states)
    if main is None:
        for i, layer in enumerate(model.layers):
            x, states[i] = layer.forward_rnn(x, states[i])  # (batch, frames, hidden)
    else:
        windows = x[:, None]  # (batch, 1, width, dim)
        top = len(model.layers) - 1
        for i, layer in enumerate(model.layers):
            windows, states[i] = layer.forward_windows(windows, None, main, states[i], top=i == top)
        x = windows[:, 0, :main]  # (batch, main, 2 * hidden)
    log_probs, _, frame_log_probs = model._outputs(x, torch.full((x.shape[0],), x.shape[1]), frames=True)
    return log_probs, frame_log_probs, states


def _joined(outputs: list[tuple[torch.Tensor, torch.Tensor | None]], model: CTCModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One stream's outputs of several runs, (n, vocab) each, joined (none: empty)."""
    if not outputs:
        empty = torch.zeros(0, model.output.out_features, device=model.output.weight.device)
        return empty, (empty if model.frame_output is not None else None)
    log_probs = torch.cat([o[0] for o in outputs])
    frame_log_probs = torch.cat([o[1] for o in outputs]) if outputs[0][1] is not None else None
    return log_probs, frame_log_probs
