"""The peephole convolutional LSTM of Shi et al. 2015 ("Convolutional LSTM Network", eq. 3), over frequency.

Each frame is a (channels x frequency) map: the feature vector of `in_channels * freq` values is read
channel-major, so the demo's 3 stacked 80-bin log-mel frames are 3 channels of 80 bins. Per step t:

    i_t = sigmoid(W_xi * X_t + W_hi * H_{t-1} + W_ci . C_{t-1} + b_i)
    f_t = sigmoid(W_xf * X_t + W_hf * H_{t-1} + W_cf . C_{t-1} + b_f)
    C_t = f_t . C_{t-1} + i_t . tanh(W_xc * X_t + W_hc * H_{t-1} + b_c)
    o_t = sigmoid(W_xo * X_t + W_ho * H_{t-1} + W_co . C_t + b_o)
    H_t = o_t . tanh(C_t)

with * a 1-D convolution along frequency ("same" padding) and . the Hadamard product; the peephole
weights W_c* are (channels x frequency) maps, as in the paper. W_x * X is one convolution over all
frames at once. The output is H flattened back to (batch, frames, hidden_channels * freq), channel-major,
so it feeds the recurrent layers above (or another ConvLSTM layer) directly.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from asr.models.cells import unpack_state


def _convlstm_loop(xc: Tensor, weight: Tensor, peephole: Tensor, padding: int, h: Tensor, c: Tensor) -> Tuple[Tensor, Tensor]:
    """xc (batch, frames, 4C, freq) = W_x * X + b, weight (4C, C, kernel), peephole (3, C, freq),
    h, c (batch, C, freq) = H_0, C_0, the state before the first frame.

    Returns H (batch, frames, C, freq) and C_T (batch, C, freq).
    """
    hs: List[Tensor] = []
    for xc_t in xc.unbind(1):  # unbind, not xc[:, t]: each select's backward would fill a full-size zero gradient
        a = xc_t + F.conv1d(h, weight, padding=padding)  # (batch, 4C, freq)
        ai, af, ao, az = a.chunk(4, 1)
        i = torch.sigmoid(ai + peephole[0] * c)
        f = torch.sigmoid(af + peephole[1] * c)
        c = f * c + i * torch.tanh(az)
        o = torch.sigmoid(ao + peephole[2] * c)
        h = o * torch.tanh(c)
        hs.append(h)
    return torch.stack(hs, 1), c


class ConvLSTMLayer(nn.Module):
    """One unidirectional peephole ConvLSTM layer with nn.LSTM's batch-first interface.

    x (batch, frames, in_channels * freq) -> output (batch, frames, hidden_channels * freq),
    (H_T, C_T) each (1, batch, hidden_channels * freq), channel-major. hx is such a state (running a
    sequence in pieces and carrying the state equals running it whole, gradients included), or None
    for zeros.
    """

    def __init__(self, input_size: int, in_channels: int, hidden_channels: int, kernel_size: int):
        super().__init__()
        if in_channels < 1 or input_size % in_channels:
            raise ValueError(
                f"convlstm: {input_size} features do not split into {in_channels} channels "
                "(set model.convlstm_input_channels to a divisor, e.g. features.stack_frames)"
            )
        if kernel_size % 2 == 0:
            raise ValueError(f"model.convlstm_kernel={kernel_size}: must be odd (same-size convolution)")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.freq = input_size // in_channels
        self.padding = kernel_size // 2
        self.input_conv = nn.Conv1d(in_channels, 4 * hidden_channels, kernel_size, padding=self.padding)  # W_x*, b
        self.recurrent = nn.Parameter(torch.empty(4 * hidden_channels, hidden_channels, kernel_size))  # W_h*
        self.peephole = nn.Parameter(torch.empty(3, hidden_channels, self.freq))  # W_ci, W_cf, W_co
        bound = 1.0 / math.sqrt(hidden_channels * kernel_size)
        nn.init.uniform_(self.recurrent, -bound, bound)
        nn.init.uniform_(self.peephole, -0.1, 0.1)

    @property
    def output_size(self) -> int:
        return self.hidden_channels * self.freq

    def forward(self, x: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        batch, frames, _ = x.shape
        maps = x.reshape(batch * frames, self.in_channels, self.freq)  # (batch*frames, C_in, freq)
        xc = self.input_conv(maps).reshape(batch, frames, 4 * self.hidden_channels, self.freq)  # (batch, frames, 4C, freq)
        if hx is None:
            h0, c0 = (xc.new_zeros(batch, self.hidden_channels, self.freq) for _ in range(2))  # (batch, C, freq)
        else:
            state = unpack_state("ConvLSTMLayer", hx, (self.output_size,) * 2, batch, xc.dtype)
            h0, c0 = (s.reshape(batch, self.hidden_channels, self.freq) for s in state)  # (batch, C, freq), channel-major
        h, c = _convlstm_loop(xc, self.recurrent, self.peephole, self.padding, h0, c0)  # (batch, frames, C, freq), (batch, C, freq)
        out = h.reshape(batch, frames, self.output_size)  # (batch, frames, C*freq), channel-major
        return out, (out[:, -1].unsqueeze(0), c.reshape(1, batch, -1))
