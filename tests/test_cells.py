"""The LSTM family: exact gradients, equivalence with nn.LSTM, hand-computed recurrences, padding, training."""

import math

import pytest
import torch
import torch.nn as nn

import asr.models.cells as cells
from asr.config import ModelConfig, load_config
from asr.models import build_model
from asr.models.cells import GREFF_VARIANTS, LSTMVariantLayer, SLSTMLayer, gers2000_spec
from asr.models.convlstm import ConvLSTMLayer
from asr.train import LAST, train
from conftest import TINY_OVERRIDES

SPECS = {**GREFF_VARIANTS, "gers_identity": gers2000_spec("identity"), "gers_tanh": gers2000_spec("tanh")}
CUSTOM_CELLS = ["peephole", "lstm_diag_peephole", "lstm_variant", "slstm", "convlstm"]


@pytest.mark.parametrize("backend", ["eager", "script"])
@pytest.mark.parametrize("name", list(SPECS))
def test_generic_lstm_hand_written_backward_passes_gradcheck(name, backend):
    """The custom autograd Function's backward against finite differences, float64, every switch, from
    a given initial state (h0, c0 and FGR's gates g0 get gradients) and with gradients arriving through
    the final state (c_T, FGR's g_T), as in chunked BPTT."""
    spec = SPECS[name]
    torch.manual_seed(0)
    H = 3
    rows = 4 * H if spec.candidate_recurrence else 3 * H
    xp = torch.randn(2, 4, 4 * H, dtype=torch.float64, requires_grad=True)
    R = (0.5 * torch.randn(rows, H, dtype=torch.float64)).requires_grad_()
    P = (0.5 * torch.randn(3, H, dtype=torch.float64)).requires_grad_(spec.peepholes)
    G = (0.5 * torch.randn(3 * H, 3 * H, dtype=torch.float64)).requires_grad_(spec.full_gate_recurrence)
    h0, c0 = torch.randn(2, H, dtype=torch.float64, requires_grad=True), torch.randn(2, H, dtype=torch.float64, requires_grad=True)
    g0 = torch.rand(2, 3 * H, dtype=torch.float64, requires_grad=spec.full_gate_recurrence)

    def run(xp, R, P, G, h0, c0, g0):
        h, c_last, g_last = cells._LSTMRecurrence.apply(xp, R, P, G, h0, c0, g0, cells._flags(spec), backend)
        return (h, c_last, g_last) if spec.full_gate_recurrence else (h, c_last)

    assert torch.autograd.gradcheck(run, (xp, R, P, G, h0, c0, g0))


def test_slstm_and_convlstm_pass_gradcheck():
    torch.manual_seed(0)
    slstm = SLSTMLayer(3, 4).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, R: cells._slstm_forward(slstm.input_proj(x), R)[0], (x, slstm.recurrent))
    conv = ConvLSTMLayer(input_size=8, in_channels=2, hidden_channels=2, kernel_size=3).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, W, P: conv(x)[0], (x, conv.recurrent, conv.peephole))


def test_slstm_and_convlstm_from_a_given_state_pass_gradcheck():
    """Gradients reach h0 and c0 (and sLSTM's normalizer n0; the stabilizer m0 is a constant), float64,
    and flow back through the returned state when the next piece continues from it."""
    torch.manual_seed(0)
    slstm = SLSTMLayer(3, 4).double()
    x, x_next = (torch.randn(2, n, 3, dtype=torch.float64, requires_grad=True) for n in (5, 3))
    _, (h0, c0, n0, m0) = slstm(torch.randn(2, 4, 3, dtype=torch.float64))  # a state the layer returned: n0 >= 1
    h0, c0, n0 = (s.detach().requires_grad_() for s in (h0, c0, n0))

    def run_slstm(x, x_next, R, h0, c0, n0):
        # c and n are stored scaled by exp(-m), with m a step function of the input: only what is
        # invariant to m (h, the next piece's outputs) is a differentiable function of the inputs.
        y, state = slstm(x, (h0, c0, n0, m0))
        return y, slstm(x_next, state)[0]

    assert torch.autograd.gradcheck(run_slstm, (x, x_next, slstm.recurrent, h0, c0, n0))
    conv = ConvLSTMLayer(input_size=8, in_channels=2, hidden_channels=2, kernel_size=3).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    h0, c0 = (torch.randn(1, 2, conv.output_size, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda x, W, P, h0, c0: (lambda y, s: (y, *s))(*conv(x, (h0, c0))), (x, conv.recurrent, conv.peephole, h0, c0))


def make_layer(name: str) -> nn.Module:
    if name == "slstm":
        return SLSTMLayer(4, 5)
    if name == "convlstm":
        return ConvLSTMLayer(input_size=8, in_channels=2, hidden_channels=2, kernel_size=3)
    return LSTMVariantLayer(4, 5, SPECS[name])


STREAMING_LAYERS = [*SPECS, "slstm", "convlstm"]


def input_size(layer: nn.Module) -> int:
    return 8 if isinstance(layer, ConvLSTMLayer) else 4


@pytest.mark.parametrize("name", STREAMING_LAYERS)
def test_running_in_pieces_with_carried_state_equals_running_whole(name):
    """Chunked BPTT: three pieces, each starting from the state the last one returned, give the whole
    run's outputs, final state, and gradients of the input and every parameter."""
    torch.manual_seed(0)
    layer = make_layer(name)
    x = torch.randn(3, 9, input_size(layer), requires_grad=True)
    y_whole, state_whole = layer(x)
    weights = torch.randn_like(y_whole)  # a loss that sees every frame
    loss_whole = (weights * y_whole).sum() + sum(s.sum() for s in state_whole if s.requires_grad)
    grads_whole = torch.autograd.grad(loss_whole, [x, *(p for p in layer.parameters() if p.requires_grad)])

    pieces, state = [], None
    for start, end in [(0, 4), (4, 5), (5, 9)]:
        y, state = layer(x[:, start:end], state)
        pieces.append(y)
    y_pieces = torch.cat(pieces, 1)
    torch.testing.assert_close(y_pieces, y_whole, atol=1e-5, rtol=1e-5)
    assert len(state) == len(state_whole)
    for s, s_whole in zip(state, state_whole):
        assert s.shape == s_whole.shape and s.shape[:2] == (1, 3)
        torch.testing.assert_close(s, s_whole, atol=1e-5, rtol=1e-5)
    loss_pieces = (weights * y_pieces).sum() + sum(s.sum() for s in state if s.requires_grad)
    grads_pieces = torch.autograd.grad(loss_pieces, [x, *(p for p in layer.parameters() if p.requires_grad)])
    for g, g_whole in zip(grads_pieces, grads_whole):
        torch.testing.assert_close(g, g_whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["vanilla", "FGR", "slstm", "convlstm"])
def test_states_of_several_sequences_concatenate_along_dim_1(name):
    """The encoder batches streams by `torch.cat(states, 1)`: a zero state is a stream that starts
    there (the same as hx=None), next to one that goes on; each gets what it gets alone."""
    torch.manual_seed(0)
    layer = make_layer(name).eval()
    first, second, fresh = (torch.randn(1, n, input_size(layer)) for n in (5, 4, 4))
    with torch.no_grad():
        _, carried = layer(first)
        y_on, state_on = layer(second, carried)
        y_fresh, state_fresh = layer(fresh)
        zeros = tuple(torch.zeros_like(s) for s in carried)
        torch.testing.assert_close(layer(fresh, zeros)[0], y_fresh, atol=0, rtol=0)
        y, state = layer(torch.cat([second, fresh]), tuple(torch.cat(pair, 1) for pair in zip(carried, zeros)))
    torch.testing.assert_close(y, torch.cat([y_on, y_fresh]), atol=1e-6, rtol=1e-6)
    for s, s_on, s_fresh in zip(state, state_on, state_fresh):
        torch.testing.assert_close(s, torch.cat([s_on, s_fresh], 1), atol=1e-6, rtol=1e-6)


def test_a_state_of_the_wrong_form_is_an_error():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"LSTMVariantLayer \(FGR\): hx has 2 tensors, the state has 3"):
        LSTMVariantLayer(4, 5, SPECS["FGR"])(x, (torch.zeros(1, 2, 5), torch.zeros(1, 2, 5)))
    with pytest.raises(ValueError, match=r"SLSTMLayer: hx has 2 tensors, the state has 4"):
        SLSTMLayer(4, 5)(x, (torch.zeros(1, 2, 5), torch.zeros(1, 2, 5)))
    with pytest.raises(ValueError, match=r"hx\[1\] has shape \(2, 5\), expected \(1, 2, 5\)"):
        LSTMVariantLayer(4, 5)(x, (torch.zeros(1, 2, 5), torch.zeros(2, 5)))
    with pytest.raises(ValueError, match=r"ConvLSTMLayer: hx\[0\] has shape \(1, 3, 8\)"):
        ConvLSTMLayer(8, 2, 2, 3)(torch.randn(2, 3, 8), (torch.zeros(1, 3, 8), torch.zeros(1, 2, 8)))


def test_generic_cell_without_peepholes_equals_nn_lstm():
    """NP with nn.LSTM's weights copied (gate order i f g o -> i f o z, two biases summed) is nn.LSTM."""
    torch.manual_seed(0)
    I, H = 5, 7
    ref = nn.LSTM(I, H, batch_first=True)
    ours = LSTMVariantLayer(I, H, GREFF_VARIANTS["NP"])
    order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
    with torch.no_grad():
        ours.input_proj.weight.copy_(ref.weight_ih_l0[order])
        ours.input_proj.bias.copy_((ref.bias_ih_l0 + ref.bias_hh_l0)[order])
        ours.recurrent.copy_(ref.weight_hh_l0[order])
    x = torch.randn(3, 9, I, requires_grad=True)
    (y_ref, (h_ref, c_ref)), (y, (h, c)) = ref(x), ours(x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c, c_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    (dx_ref, dW_ref), (dx, dR) = (torch.autograd.grad(out, (x, w), g) for out, w in ((y_ref, ref.weight_hh_l0), (y, ours.recurrent)))
    torch.testing.assert_close(dx, dx_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dR, dW_ref[order], atol=1e-5, rtol=1e-5)


def test_gers2000_peephole_two_steps_by_hand():
    """One unit, sigma_h = identity: f, i, o see U c_{t-1}; the candidate sees only x."""
    layer = LSTMVariantLayer(1, 1, gers2000_spec("identity"))
    Wi, Wf, Wo, Wc = 0.5, -0.3, 0.8, 1.2  # input weights
    Ui, Uf, Uo = 0.7, 0.2, -0.4  # weights on c_{t-1}
    bi, bf, bo, bc = 0.1, 1.0, -0.2, 0.05
    with torch.no_grad():
        layer.input_proj.weight.copy_(torch.tensor([[Wi], [Wf], [Wo], [Wc]]))
        layer.input_proj.bias.copy_(torch.tensor([bi, bf, bo, bc]))
        layer.recurrent.copy_(torch.tensor([[Ui], [Uf], [Uo]]))
    sig = lambda v: 1 / (1 + math.exp(-v))
    x1, x2 = 0.9, -1.5
    # t = 1, c_0 = 0
    c1 = sig(Wi * x1 + bi) * math.tanh(Wc * x1 + bc)
    h1 = sig(Wo * x1 + bo) * c1
    # t = 2
    f2, i2, o2 = sig(Wf * x2 + Uf * c1 + bf), sig(Wi * x2 + Ui * c1 + bi), sig(Wo * x2 + Uo * c1 + bo)
    c2 = f2 * c1 + i2 * math.tanh(Wc * x2 + bc)
    h2 = o2 * c2
    out, (h, c) = layer(torch.tensor([[[x1], [x2]]]))
    torch.testing.assert_close(out.flatten(), torch.tensor([h1, h2]), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(c.flatten(), torch.tensor([c2]), atol=1e-6, rtol=1e-6)


def naive_slstm(xp: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Beck et al. 2024 eqs. 8-13 without the stabilizer: i = exp(i~), f = sigmoid(f~), n_t = f n + i."""
    batch, frames, _ = xp.shape
    H = R.shape[1]
    h, c, n = (xp.new_zeros(batch, H) for _ in range(3))
    hs = []
    for t in range(frames):
        z, i, f, o = (xp[:, t] + h @ R.T).chunk(4, 1)
        i, f = torch.exp(i), torch.sigmoid(f)
        c, n = f * c + i * torch.tanh(z), f * n + i
        h = torch.sigmoid(o) * c / n
        hs.append(h)
    return torch.stack(hs, 1)


def test_slstm_matches_unstabilized_formula_and_never_overflows():
    torch.manual_seed(0)
    H = 4
    R = 0.3 * torch.randn(4 * H, H, dtype=torch.float64)
    xp = torch.randn(2, 6, 4 * H, dtype=torch.float64)
    torch.testing.assert_close(cells._slstm_forward(xp, R)[0], naive_slstm(xp, R))  # the stabilizer is exact
    big = xp.float().clone()
    big[:, :, H : 2 * H] += 200.0  # input-gate pre-activations: exp(200) overflows float32
    assert not torch.isfinite(naive_slstm(big, R.float())).all()
    ours = cells._slstm_forward(big, R.float())[0]
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours.double(), naive_slstm(big.double(), R), atol=1e-5, rtol=1e-5)  # fine in float64
    layer = SLSTMLayer(3, H)
    y, _ = layer(1e4 * torch.randn(2, 5, 3))
    y.sum().backward()
    assert torch.isfinite(y).all() and all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_script_and_eager_recurrences_agree():
    torch.manual_seed(0)
    layer = LSTMVariantLayer(5, 6, GREFF_VARIANTS["FGR"])
    x = torch.randn(3, 8, 5)
    results = []
    for backend in ("eager", "script"):
        cells.BACKEND, saved = backend, cells.BACKEND
        try:
            y, _ = layer(x)
            results.append((y, torch.autograd.grad(y.square().sum(), layer.recurrent)[0]))
        finally:
            cells.BACKEND = saved
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def model_config(cell: str, bidirectional: bool = True) -> ModelConfig:
    return ModelConfig(
        cell=cell, hidden_size=6, num_layers=2, dropout=0.0, direction="bidirectional" if bidirectional else "unidirectional", lstm_variant="CIFG",
        convlstm_channels=2, convlstm_layers=2, convlstm_input_channels=2, convlstm_kernel=3,
    )


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("cell", CUSTOM_CELLS)
def test_padding_does_not_leak(cell, bidirectional):
    """Each utterance of a padded batch, stacked layers, gets the outputs (and gradients) it gets alone."""
    torch.manual_seed(0)
    model = build_model(model_config(cell, bidirectional), input_dim=8, vocab_size=5).eval()
    lengths = torch.tensor([7, 3, 5])
    feats = torch.randn(3, 7, 8)
    feats[1, 3:] = 100.0
    feats[2, 5:] = -100.0
    feats.requires_grad_()
    batched, _ = model(feats, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone_in = feats[i : i + 1, :n].detach().requires_grad_()
        alone, _ = model(alone_in, lengths[i : i + 1])
        torch.testing.assert_close(batched[i, :n], alone[0], atol=1e-5, rtol=1e-5)
        (grad_batched,) = torch.autograd.grad(batched[i, :n].sum(), feats, retain_graph=True)
        (grad_alone,) = torch.autograd.grad(alone.sum(), alone_in)
        torch.testing.assert_close(grad_batched[i, :n], grad_alone[0], atol=1e-5, rtol=1e-5)
        assert (grad_batched[i, n:] == 0).all()  # padding gets no gradient from real frames


@pytest.mark.parametrize("variant", list(GREFF_VARIANTS))
def test_every_trainable_parameter_gets_a_gradient(variant):
    """Switched-off parts (NP's peepholes, FGR's matrix elsewhere) are frozen, not dangling: DDP
    without find_unused_parameters needs every trainable parameter to receive a gradient."""
    layer = LSTMVariantLayer(4, 5, GREFF_VARIANTS[variant])
    layer(torch.randn(2, 3, 4))[0].sum().backward()
    for name, p in layer.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert layer.peephole.requires_grad == (variant != "NP")
    assert layer.gate_recurrence.requires_grad == (variant == "FGR")


def test_bad_cell_options_are_errors():
    with pytest.raises(ValueError, match="model.lstm_variant='XYZ'"):
        build_model(ModelConfig(cell="lstm_variant", lstm_variant="XYZ"), 6, 4)
    with pytest.raises(ValueError, match="model.peephole_output='relu'"):
        build_model(ModelConfig(cell="peephole", peephole_output="relu"), 6, 4)
    with pytest.raises(ValueError, match="do not split into 4 channels"):
        build_model(ModelConfig(cell="convlstm", convlstm_input_channels=4), 6, 4)


@pytest.mark.parametrize("cell", CUSTOM_CELLS + ["gru"])
def test_every_cell_trains_through_train(cell, noise_corpus, tmp_path):
    config = load_config(
        "configs/demo.yaml",
        [
            *TINY_OVERRIDES, f"data.train={noise_corpus['train']}", f"data.dev={noise_corpus['dev']}", f"train.out_dir={tmp_path}",
            f"model.cell={cell}", "model.convlstm_input_channels=2", "model.convlstm_channels=2", "train.max_steps=3",
            "train.epochs=1",
        ],
    )
    out = train(config, show_progress=False)
    state = torch.load(out / LAST, weights_only=True)
    assert state["training_state"]["progress"]["step"] == 3
    assert state["config"]["model"]["cell"] == cell
