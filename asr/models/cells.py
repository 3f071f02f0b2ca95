"""The LSTM family as unidirectional recurrences with nn.LSTM's interface (batch_first).

Every module here takes x (batch, frames, input_size) and an optional initial state hx, and returns
(output (batch, frames, hidden), final state), like `nn.LSTM(batch_first=True)`. A state is a tuple of
(1, batch, width) tensors, to be carried into the next call unchanged: streaming runs a sequence in
pieces, and the pieces equal the whole run, outputs and gradients (chunked BPTT: the gradient flows
through the carried state into the previous piece). What each state holds is in its class docstring;
one made of zeros is the zero state. Bidirectionality, stacking and lengths live one level
up (`asr.models.encoder.RecurrentLayer`): the backward direction is run on each utterance reversed
within its own length, so every recurrence here only ever sees padding *after* the real frames,
where it cannot affect them.

- `LSTMVariantLayer` — one generic peephole LSTM with the switches of Greff et al. 2017 ("LSTM: A
  Search Space Odyssey", eqs. in Sec. 2): vanilla, NIG, NFG, NOG, NIAF, NOAF, CIFG, NP, FGR. With
  other switches it is also the Gers & Schmidhuber 2000 peephole LSTM and the Graves et al. 2013
  diagonal-peephole LSTM. Speed: the input projections of all frames are one matrix product; the
  recurrence runs in a custom autograd Function whose forward and backward loops are TorchScript
  (no Python between the ops of a step; the derivative factors of the backward step are computed
  for all frames at once, leaving ~13 small ops per step), and whose weight gradients are one
  matrix product over all frames after the loop instead of one small product per step.
- `SLSTMLayer` — the sLSTM of xLSTM (Beck et al. 2024, eqs. 8-19): exponential input gate,
  normalizer state and log-space stabilizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LSTMSpec:
    """Switches of the generic LSTM. Gate order everywhere: input i, forget f, output o, candidate z."""

    input_gate: bool = True  # False: i = 1 (Greff NIG)
    forget_gate: bool = True  # False: f = 1 (NFG)
    output_gate: bool = True  # False: o = 1 (NOG)
    coupled: bool = False  # f = 1 - i (CIFG); needs the input gate
    input_activation: bool = True  # z = tanh(.) ; False: identity (NIAF)
    output_activation: bool = True  # h = o * tanh(c) ; False: h = o * c (NOAF; Gers 2000's sigma_h = identity)
    peepholes: bool = True  # diagonal V_i, V_f on c_{t-1}, V_o on c_t (False: NP)
    full_gate_recurrence: bool = False  # i, f, o also see [i, f, o]_{t-1} through a full matrix (FGR)
    recur_from_cell: bool = False  # recurrent input is c_{t-1} instead of h_{t-1} (Gers & Schmidhuber 2000)
    candidate_recurrence: bool = True  # z sees the recurrent input too (False in Gers & Schmidhuber 2000)


# Greff et al. 2017, Sec. 3: the vanilla LSTM and the eight single changes to it.
GREFF_VARIANTS: dict[str, LSTMSpec] = {
    "vanilla": LSTMSpec(),
    "NIG": LSTMSpec(input_gate=False),
    "NFG": LSTMSpec(forget_gate=False),
    "NOG": LSTMSpec(output_gate=False),
    "NIAF": LSTMSpec(input_activation=False),
    "NOAF": LSTMSpec(output_activation=False),
    "CIFG": LSTMSpec(coupled=True),
    "NP": LSTMSpec(peepholes=False),
    "FGR": LSTMSpec(full_gate_recurrence=True),
}

# Graves, Mohamed & Hinton 2013 (TIMIT), eqs. 3-7: i, f see V * c_{t-1}, o sees V_o * c_t, all see W_h h_{t-1}.
DIAG_PEEPHOLE = GREFF_VARIANTS["vanilla"]


def gers2000_spec(output_activation: str) -> LSTMSpec:
    """Gers & Schmidhuber 2000 as the issue states it: every gate sees U c_{t-1} (full matrices),
    the candidate sees only the input, h_t = o_t * sigma_h(c_t) with sigma_h tanh or identity."""
    if output_activation not in ("tanh", "identity"):
        raise ValueError(f"model.peephole_output={output_activation!r}: choose 'tanh' or 'identity'")
    return LSTMSpec(
        peepholes=False, recur_from_cell=True, candidate_recurrence=False, output_activation=output_activation == "tanh"
    )


# ---------------------------------------------------------------------------------------------
# The recurrence, forward and backward, as TorchScript loops. Flags arrive as a list of bools
# (TorchScript has no dataclasses): see `_flags`.


def _flags(spec: LSTMSpec) -> List[bool]:
    return [
        spec.input_gate,
        spec.forget_gate,
        spec.output_gate,
        spec.coupled,
        spec.input_activation,
        spec.output_activation,
        spec.peepholes,
        spec.full_gate_recurrence,
        spec.recur_from_cell,
    ]


def _forward_cell(a: Tensor, c: Tensor, P: Tensor, flags: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The element-wise part of one step: a (batch, 4H) gate pre-activations without peepholes,
    c (batch, H) = c_{t-1}. Returns h_t, c_t, i_t, f_t, o_t, z_t, k_t (k = act(c_t)), each (batch, H)."""
    input_gate, forget_gate, output_gate, coupled = flags[0], flags[1], flags[2], flags[3]
    input_act, output_act, peep = flags[4], flags[5], flags[6]
    ai, af, ao, az = a.chunk(4, 1)
    if peep:
        ai = torch.addcmul(ai, P[0], c)
        af = torch.addcmul(af, P[1], c)
    i = torch.sigmoid(ai) if input_gate else torch.ones_like(c)
    if coupled:
        f = 1.0 - i
    elif forget_gate:
        f = torch.sigmoid(af)
    else:
        f = torch.ones_like(c)
    z = torch.tanh(az) if input_act else az
    c = torch.addcmul(f * c, i, z)
    if peep:
        ao = torch.addcmul(ao, P[2], c)
    o = torch.sigmoid(ao) if output_gate else torch.ones_like(c)
    k = torch.tanh(c) if output_act else c
    return o * k, c, i, f, o, z, k


def _lstm_forward(
    xp: Tensor, R: Tensor, P: Tensor, G: Tensor, h0: Tensor, c0: Tensor, g0: Tensor, flags: List[bool]
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """xp (batch, frames, 4H) input projections, R (rows, H) recurrent weights (rows = 4H or 3H: the
    candidate block is last), P (3, H) peepholes, G (3H, 3H) gate recurrence (any shape unless FGR);
    the state before the first frame: h0, c0 (batch, H) and g0 (batch, 3H) = [i, f, o]_{-1} (FGR only).

    Returns h, c, i, f, o, z, k, each (batch, frames, H); k = act(c), the value o multiplies.
    """
    fgr, from_cell = flags[7], flags[8]
    H = R.shape[1]
    rows = R.shape[0]
    h = h0
    c = c0
    g = g0  # [i, f, o]_{t-1}, for FGR
    hs: List[Tensor] = []
    cs: List[Tensor] = []
    is_: List[Tensor] = []
    fs: List[Tensor] = []
    os: List[Tensor] = []
    zs: List[Tensor] = []
    ks: List[Tensor] = []
    for a in xp.unbind(1):  # a (batch, 4H)
        source = c if from_cell else h
        if rows == 4 * H:
            a = torch.addmm(a, source, R.t())
        else:
            a = torch.cat([torch.addmm(a[:, : 3 * H], source, R.t()), a[:, 3 * H :]], 1)
        if fgr:
            a = torch.cat([torch.addmm(a[:, : 3 * H], g, G.t()), a[:, 3 * H :]], 1)
        h, c, i, f, o, z, k = _forward_cell(a, c, P, flags)
        if fgr:
            g = torch.cat([i, f, o], 1)
        hs.append(h)
        cs.append(c)
        is_.append(i)
        fs.append(f)
        os.append(o)
        zs.append(z)
        ks.append(k)
    return (
        torch.stack(hs, 1),
        torch.stack(cs, 1),
        torch.stack(is_, 1),
        torch.stack(fs, 1),
        torch.stack(os, 1),
        torch.stack(zs, 1),
        torch.stack(ks, 1),
    )


def _shift_right(x: Tensor, x0: Tensor) -> Tensor:
    """(batch, frames, d) -> the same one frame later, x0 (batch, d) first: the state each step starts from."""
    return torch.cat([x0.unsqueeze(1), x[:, :-1]], 1)


def _backward_cell(
    dh: Tensor, dc: Tensor, dg: Tensor, sens: List[Tensor], f: Tensor, P: Tensor, flags: List[bool]
) -> Tuple[Tensor, Tensor]:
    """The element-wise part of one step backwards. dh = dL/dh_t, dc = dL/dc_t through step t+1,
    dg (batch, 3H) = dL/[i, f, o]_t through step t+1 (FGR only), sens = this step's slices of
    `_sensitivities`, f = f_t. Returns da (batch, 4H), the gradient of the gate pre-activations,
    and dL/dc_{t-1} (without the recurrent-matrix path)."""
    coupled, peep, fgr = flags[3], flags[6], flags[7]
    s_c, s_ok, s_zi, s_cf, s_iz, d_i, d_f, d_o = sens[0], sens[1], sens[2], sens[3], sens[4], sens[5], sens[6], sens[7]
    dc = torch.addcmul(dc, dh, s_c)  # + dh * o * act'(c)
    dgi, dgf, dgo = dg.chunk(3, 1)
    dao = dh * s_ok  # dh * k * o'
    if fgr:
        dao = torch.addcmul(dao, dgo, d_o)
    if peep:
        dc = torch.addcmul(dc, dao, P[2])
    dai = dc * s_zi
    daf = dc * s_cf
    if fgr:
        dai = torch.addcmul(dai, dgi - dgf if coupled else dgi, d_i)
        if not coupled:
            daf = torch.addcmul(daf, dgf, d_f)
    daz = dc * s_iz
    dcp = dc * f
    if peep:
        dcp = torch.addcmul(torch.addcmul(dcp, dai, P[0]), daf, P[1])
    return torch.cat([dai, daf, dao, daz], 1), dcp


def _sensitivities(
    c_prev: Tensor, i: Tensor, f: Tensor, o: Tensor, z: Tensor, k: Tensor, flags: List[bool]
) -> List[Tensor]:
    """Per-frame factors of the backward step, computed for all frames at once (batch, frames, H) so
    the loop does ~13 small ops per step instead of ~30. A gate that is switched off is the constant 1,
    so its derivative x (1 - x) is 0 and its gradient vanishes without a branch."""
    coupled, input_act, output_act = flags[3], flags[4], flags[5]
    d_i, d_f, d_o = i * (1.0 - i), f * (1.0 - f), o * (1.0 - o)  # sigmoid'
    s_c = o * (1.0 - k * k) if output_act else o  # dh_t -> dc_t
    s_ok = k * d_o  # dh_t -> da_o
    s_zi = (z - c_prev) * d_i if coupled else z * d_i  # dc_t -> da_i (CIFG: f = 1 - i)
    s_cf = torch.zeros_like(f) if coupled else c_prev * d_f  # dc_t -> da_f
    s_iz = i * (1.0 - z * z) if input_act else i  # dc_t -> da_z
    return [s_c, s_ok, s_zi, s_cf, s_iz, d_i, d_f, d_o]


def _lstm_backward(
    dh_out: Tensor,
    R: Tensor,
    P: Tensor,
    G: Tensor,
    h: Tensor,
    c: Tensor,
    i: Tensor,
    f: Tensor,
    o: Tensor,
    z: Tensor,
    k: Tensor,
    h0: Tensor,
    c0: Tensor,
    g0: Tensor,
    dc_last: Tensor,
    dg_last: Tensor,
    flags: List[bool],
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of `_lstm_forward` by hand. dh_out (batch, frames, H) = dL/h; dc_last (batch, H) and
    dg_last (batch, 3H) = dL/c_T and dL/[i, f, o]_T from beyond the last frame (the carried state; zeros
    when it is not used). Returns dxp (batch, frames, 4H), dR, dP, dG and dh0, dc0 (batch, H), dg0 (batch, 3H)."""
    peep, fgr, from_cell = flags[6], flags[7], flags[8]
    batch, frames = dh_out.shape[0], dh_out.shape[1]
    H = R.shape[1]
    rows = R.shape[0]
    c_prev_all = _shift_right(c, c0)  # (batch, frames, H)
    sens = [s.unbind(1) for s in _sensitivities(c_prev_all, i, f, o, z, k, flags)]  # 8 x frames x (batch, H)
    f_t = f.unbind(1)
    dh_t = dh_out.unbind(1)
    dh_next = dh_out.new_zeros(batch, H)  # dL/dh_t through step t+1 (h_T's gradient from beyond is in dh_out)
    dc_next = dc_last  # dL/dc_t through step t+1
    dg_next = dg_last  # dL/[i, f, o]_t through step t+1 (FGR)
    das: List[Tensor] = []
    for t in range(frames - 1, -1, -1):
        da, dcp = _backward_cell(dh_t[t] + dh_next, dc_next, dg_next, [s[t] for s in sens], f_t[t], P, flags)
        ds = torch.mm(da[:, :rows], R)  # (batch, H): gradient of the recurrent input
        if from_cell:
            dcp = dcp + ds
        else:
            dh_next = ds
        if fgr:
            dg_next = torch.mm(da[:, : 3 * H], G)
        dc_next = dcp
        das.append(da)
    das.reverse()
    dxp = torch.stack(das, 1)  # (batch, frames, 4H)
    flat = dxp.reshape(batch * frames, 4 * H)
    source_prev = (_shift_right(c, c0) if from_cell else _shift_right(h, h0)).reshape(batch * frames, H)
    dR = torch.mm(flat[:, :rows].t(), source_prev)  # one product over all frames
    dP = torch.zeros_like(P)
    if peep:
        dP = torch.stack(
            [
                (flat[:, :H] * c_prev_all.reshape(-1, H)).sum(0),
                (flat[:, H : 2 * H] * c_prev_all.reshape(-1, H)).sum(0),
                (flat[:, 2 * H : 3 * H] * c.reshape(-1, H)).sum(0),
            ]
        )
    dG = torch.zeros_like(G)
    if fgr:
        gates_prev = _shift_right(torch.cat([i, f, o], 2), g0).reshape(batch * frames, 3 * H)
        dG = torch.mm(flat[:, : 3 * H].t(), gates_prev)
    # After step 0 the "next" gradients are those of the initial state (dh_next stays 0 when R reads c).
    return dxp, dR, dP, dG, dh_next, dc_next, dg_next


_built: dict = {}


def _kernels(backend: str):
    """The forward and backward loops: 'eager', 'script' (TorchScript, compiled on first use) or
    'compile' (the same Python loops with torch.compile'd element-wise steps; for scripts/bench_cells.py)."""
    if backend == "eager":
        return _lstm_forward, _lstm_backward
    if backend not in _built:
        if backend == "script":
            _built[backend] = (torch.jit.script(_lstm_forward), torch.jit.script(_lstm_backward))
        elif backend == "compile":
            import types

            def with_step(loop, name, step):  # the loop's code, with `name` bound to the compiled step
                return types.FunctionType(loop.__code__, {**globals(), name: torch.compile(step, dynamic=True)})

            _built[backend] = (
                with_step(_lstm_forward, "_forward_cell", _forward_cell),
                with_step(_lstm_backward, "_backward_cell", _backward_cell),
            )
        else:
            raise ValueError(f"unknown recurrence backend {backend!r}: 'eager', 'script' or 'compile'")
    return _built[backend]


# Measured by scripts/bench_cells.py (see the README's "Recurrent cells"): the default backend.
BACKEND = "script"


class _LSTMRecurrence(torch.autograd.Function):
    """(xp, R, P, G, h0, c0, g0) -> h (batch, frames, H), c_T (batch, H), g_T = [i, f, o]_T (batch, 3H).

    g0 and g_T are the FGR gate state; without FGR they are zeros and g_T carries no gradient."""

    @staticmethod
    def forward(ctx, xp: Tensor, R: Tensor, P: Tensor, G: Tensor, h0: Tensor, c0: Tensor, g0: Tensor, flags: List[bool], backend: str):
        forward_loop, _ = _kernels(backend)
        h, c, i, f, o, z, k = forward_loop(xp, R, P, G, h0, c0, g0, flags)
        c_last = c[:, -1].clone()  # (batch, H)
        fgr = flags[7]
        g_last = torch.cat([i[:, -1], f[:, -1], o[:, -1]], 1) if fgr else torch.zeros_like(g0)  # (batch, 3H)
        ctx.save_for_backward(R, P, G, h, c, i, f, o, z, k, h0, c0, g0)
        ctx.flags, ctx.backend = flags, backend
        if not fgr:
            ctx.mark_non_differentiable(g_last)
        return h, c_last, g_last

    @staticmethod
    def backward(ctx, dh_out: Tensor, dc_last: Tensor, dg_last: Tensor):
        R, P, G, h, c, i, f, o, z, k, h0, c0, g0 = ctx.saved_tensors
        _, backward_loop = _kernels(ctx.backend)
        dxp, dR, dP, dG, dh0, dc0, dg0 = backward_loop(
            dh_out.contiguous(), R, P, G, h, c, i, f, o, z, k, h0, c0, g0, dc_last.contiguous(), dg_last.contiguous(), ctx.flags
        )
        return dxp, dR, dP, dG, dh0, dc0, (dg0 if ctx.flags[7] else None), None, None


def unpack_state(layer: str, hx: Tuple[Tensor, ...], widths: Tuple[int, ...], batch: int, dtype: torch.dtype) -> List[Tensor]:
    """hx, a tuple of (1, batch, width) tensors as a layer returns its state -> a list of (batch, width)."""
    if len(hx) != len(widths):
        raise ValueError(f"{layer}: hx has {len(hx)} tensors, the state has {len(widths)}")
    for n, (s, width) in enumerate(zip(hx, widths)):
        if tuple(s.shape) != (1, batch, width):
            raise ValueError(f"{layer}: hx[{n}] has shape {tuple(s.shape)}, expected {(1, batch, width)}")
    return [s[0].to(dtype) for s in hx]


class LSTMVariantLayer(nn.Module):
    """One unidirectional generic (peephole) LSTM layer, batch-first; see `LSTMSpec` for the switches.

    x (batch, frames, input_size), hx -> output (batch, frames, hidden), state. The state is
    (h, c), each (1, batch, hidden), as nn.LSTM's; with full_gate_recurrence (FGR) it is (h, c, g),
    g = [i; f; o] (1, batch, 3 * hidden) the last step's gates, which the next step's gates read
    (Greff et al. 2017, FGR). hx is a state this layer returned (running a sequence in pieces and
    carrying the state equals running it whole, gradients included), or None for zeros; an all-zero
    hx is the same as None.
    """

    def __init__(self, input_size: int, hidden_size: int, spec: LSTMSpec = LSTMSpec(), batch_first: bool = True):
        super().__init__()
        if not batch_first:
            raise ValueError("LSTMVariantLayer is batch-first only")
        if spec.coupled and not spec.input_gate:
            raise ValueError("a coupled input-forget gate (CIFG) needs the input gate")
        self.spec = spec
        self.hidden_size = hidden_size
        H = hidden_size
        self.input_proj = nn.Linear(input_size, 4 * H)  # W [i; f; o; z] x_t + b, all frames at once
        rows = 4 * H if spec.candidate_recurrence else 3 * H
        self.recurrent = nn.Parameter(torch.empty(rows, H))  # R: from h_{t-1} (or c_{t-1})
        self.peephole = nn.Parameter(torch.zeros(3, H))  # V_i, V_f, V_o
        self.gate_recurrence = nn.Parameter(torch.zeros(3 * H, 3 * H) if spec.full_gate_recurrence else torch.zeros(0, 0))
        self.reset_parameters()
        # Switched-off parts stay (zero) parameters but are frozen, so optimizers and DDP skip them.
        self.peephole.requires_grad_(spec.peepholes)
        self.gate_recurrence.requires_grad_(spec.full_gate_recurrence)

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)  # as nn.LSTM
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        if not self.spec.peepholes:
            nn.init.zeros_(self.peephole)

    def forward(self, x: Tensor, hx: Optional[Tuple[Tensor, ...]] = None) -> Tuple[Tensor, Tuple[Tensor, ...]]:
        batch, H = x.shape[0], self.hidden_size
        fgr = self.spec.full_gate_recurrence
        xp = self.input_proj(x)  # (batch, frames, 4H)
        with torch.autocast(x.device.type, enabled=False):  # the hand-written recurrence runs in the weights' dtype
            dtype = self.recurrent.dtype
            if hx is None:
                h0, c0 = xp.new_zeros(batch, H, dtype=dtype), xp.new_zeros(batch, H, dtype=dtype)  # (batch, H)
                g0 = xp.new_zeros(batch, 3 * H, dtype=dtype)  # (batch, 3H)
            else:
                widths = (H, H, 3 * H) if fgr else (H, H)
                h0, c0, *rest = unpack_state("LSTMVariantLayer" + (" (FGR)" if fgr else ""), hx, widths, batch, dtype)
                g0 = rest[0] if fgr else xp.new_zeros(batch, 3 * H, dtype=dtype)
            h, c_last, g_last = _LSTMRecurrence.apply(  # (batch, frames, H), (batch, H), (batch, 3H)
                xp.to(dtype), self.recurrent, self.peephole, self.gate_recurrence, h0, c0, g0, _flags(self.spec), BACKEND
            )
        state = (h[:, -1].unsqueeze(0), c_last.unsqueeze(0))  # (1, batch, H) each
        if fgr:
            state = state + (g_last.unsqueeze(0),)  # (1, batch, 3H)
        return h, state


# ---------------------------------------------------------------------------------------------
# sLSTM (Beck et al. 2024, "xLSTM", Sec. 2.2).


def _slstm_forward(xp: Tensor, R: Tensor, state: Optional[List[Tensor]] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """xp (batch, frames, 4H) = W [z; i; f; o] x_t + b, R (4H, H), state = [h0, c0, n0, m0] (batch, H)
    each or None (zeros). Returns h (batch, frames, H) and the final c_T, n_T, m_T (batch, H).

    z_t = tanh(.), i~_t and f~_t are log-gates (input exponential, forget sigmoid: log f = logsigmoid),
    o_t = sigmoid(.). Stabilizer (eq. 15-17): m_t = max(log f_t + m_{t-1}, log i_t),
    i'_t = exp(log i_t - m_t), f'_t = exp(log f_t + m_{t-1} - m_t); c_t = f' c + i' z, n_t = f' n + i',
    h_t = o_t * c_t / n_t. The exponentials' arguments are <= 0, so nothing overflows; h is invariant
    to m, so m carries no gradient. The forget gate is the sigmoid variant (the paper allows exp too).
    """
    batch = xp.shape[0]
    H = R.shape[1]
    if state is None:
        h, c, n, m = (xp.new_zeros(batch, H) for _ in range(4))
    else:
        h, c, n, m = state
        m = m.detach()  # c, n are stored relative to exp(m) with m a constant, as within a sequence
    hs: List[Tensor] = []
    for t, xp_t in enumerate(xp.unbind(1)):  # unbind, not xp[:, t]: each select's backward fills a full-size zero gradient
        a = torch.addmm(xp_t, h, R.t())  # (batch, 4H)
        az, log_i, af, ao = a.chunk(4, 1)
        log_f = F.logsigmoid(af)
        # n_0 = 0: the first step starts the stabilizer at log i_1 (as the xLSTM code), so n_1 = 1 and,
        # since one of i', f' is 1 at every step, n_t >= 1 afterwards: c / n never divides by zero.
        # (At t = 0, f' multiplies the zero state; it is set to 0 rather than exp(log f - log i), which
        # can be inf there.)
        if t == 0 and state is None:
            m_new = log_i.detach()
            f_ = torch.zeros_like(log_f)
        elif t == 0:
            # A carried state has n >= 1; where n0 = 0 (a zero state: a sequence that starts here) the
            # first step is the zero-state step above, elementwise. -inf, not 0 after exp: where()'s
            # unused branch would otherwise send 0 * inf = nan into log f's gradient.
            fresh = n == 0
            m_new = torch.where(fresh, log_i, torch.maximum(log_f + m, log_i)).detach()
            f_ = torch.exp(torch.where(fresh, torch.full_like(log_f, -math.inf), log_f + m - m_new))
        else:
            m_new = torch.maximum(log_f + m, log_i).detach()
            f_ = torch.exp(log_f + m - m_new)
        i_ = torch.exp(log_i - m_new)
        c = f_ * c + i_ * torch.tanh(az)
        n = f_ * n + i_
        h = torch.sigmoid(ao) * c / n
        m = m_new
        hs.append(h)
    return torch.stack(hs, 1), c, n, m


class SLSTMLayer(nn.Module):
    """One unidirectional sLSTM layer (one head: R is a full matrix, not the paper's block-diagonal heads).

    x (batch, frames, input_size), hx -> output (batch, frames, hidden), state (h, c, n, m), each
    (1, batch, hidden): the output, the cell, the normalizer and the log-space stabilizer after the last
    frame (Beck et al. 2024, eqs. 8-17), all four needed to continue exactly. c and n are scaled by
    exp(-m); m carries no gradient. hx is a state this layer returned (running a sequence in pieces and
    carrying the state equals running it whole, gradients included), or None for zeros; an all-zero hx
    is the same as None, and so is any sequence whose n is zero.
    """

    def __init__(self, input_size: int, hidden_size: int, batch_first: bool = True):
        super().__init__()
        if not batch_first:
            raise ValueError("SLSTMLayer is batch-first only")
        self.hidden_size = hidden_size
        self.input_proj = nn.Linear(input_size, 4 * hidden_size)  # W [z; i; f; o] x_t + b
        self.recurrent = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        with torch.no_grad():  # forget gates open at the start (the xLSTM code uses a positive forget bias too)
            self.input_proj.bias[2 * hidden_size : 3 * hidden_size].fill_(1.0)

    def forward(
        self, x: Tensor, hx: Optional[Tuple[Tensor, Tensor, Tensor, Tensor]] = None
    ) -> Tuple[Tensor, Tuple[Tensor, Tensor, Tensor, Tensor]]:
        xp = self.input_proj(x)  # (batch, frames, 4H)
        H = self.hidden_size
        state = None if hx is None else unpack_state("SLSTMLayer", hx, (H, H, H, H), x.shape[0], xp.dtype)
        h, c, n, m = _slstm_forward(xp, self.recurrent, state)  # (batch, frames, H), then (batch, H) each
        return h, (h[:, -1].unsqueeze(0), c.unsqueeze(0), n.unsqueeze(0), m.unsqueeze(0))


def make_lstm_variant(input_size: int, hidden_size: int, variant: str) -> LSTMVariantLayer:
    if variant not in GREFF_VARIANTS:
        raise ValueError(f"model.lstm_variant={variant!r}: choose one of {', '.join(GREFF_VARIANTS)}")
    return LSTMVariantLayer(input_size, hidden_size, GREFF_VARIANTS[variant])


__all__ = ["LSTMSpec", "GREFF_VARIANTS", "DIAG_PEEPHOLE", "gers2000_spec", "LSTMVariantLayer", "SLSTMLayer"]
