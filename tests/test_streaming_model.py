"""Streaming models: the latency-controlled BiLSTM (model.direction=latency_controlled) and the
unidirectional stack, offline (training) and fed frame by frame (`EncoderStream`)."""

import pytest
import torch

from asr.config import ModelConfig, config_from_dict, config_to_dict, Config, load_config
from asr.models.encoder import EncoderStream, build_model

STREAMING_CELLS = ["lstm", "gru", "peephole", "lstm_diag_peephole", "lstm_variant", "slstm", "convlstm"]


def make(direction: str, cell: str = "lstm", chunk: int = 0, right: int = 0, frame_head: bool = False):
    config = ModelConfig(
        cell=cell, hidden_size=12, num_layers=3, dropout=0.0, direction=direction,
        chunk_frames=chunk, right_context_frames=right, frame_head=frame_head,
        lstm_variant="FGR", convlstm_channels=2, convlstm_input_channels=2, convlstm_kernel=3,
    )
    return build_model(config, input_dim=10, vocab_size=7).eval()


def stream_in_pieces(model, feats: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Feed (frames, dim) in random pieces of 0..6 frames, then finish."""
    stream = EncoderStream(model)
    generator = torch.Generator().manual_seed(seed)
    outputs, at = [], 0
    while at < len(feats):
        size = int(torch.randint(0, 7, (1,), generator=generator))
        outputs.append(stream.accept(feats[at : at + size]))
        at += size
    outputs.append(stream.finish())
    frame_parts = [o[1] for o in outputs]
    return torch.cat([o[0] for o in outputs]), (torch.cat(frame_parts) if frame_parts[0] is not None else None)


@pytest.mark.parametrize("cell", STREAMING_CELLS)
@pytest.mark.parametrize("direction,chunk,right", [("unidirectional", 0, 0), ("latency_controlled", 4, 2), ("latency_controlled", 3, 0), ("latency_controlled", 5, 7)])
def test_stream_in_any_pieces_equals_offline(cell, direction, chunk, right):
    torch.manual_seed(0)
    model = make(direction, cell, chunk, right, frame_head=True)
    feats = torch.randn(3, 23, 10)
    lengths = torch.tensor([23, 17, 2])
    with torch.no_grad():
        offline, _, offline_frames = model(feats, lengths, frames=True)
    for b, n in enumerate(lengths.tolist()):
        streamed, streamed_frames = stream_in_pieces(model, feats[b, :n], seed=b)
        assert streamed.shape == (n, 7)
        torch.testing.assert_close(streamed, offline[b, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(streamed_frames, offline_frames[b, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "slstm", "convlstm"])
@pytest.mark.parametrize("direction,chunk,right", [("unidirectional", 0, 0), ("latency_controlled", 4, 2)])
def test_streams_run_together_equal_each_run_alone(cell, direction, chunk, right):
    """run_batch over streams at different points (fresh ones beside ones with a state, pieces
    of different sizes) gives each stream what its own drain gives."""
    torch.manual_seed(0)
    model = make(direction, cell, chunk, right, frame_head=True)
    utterances = [torch.randn(n, 10) for n in (31, 17, 9, 26)]
    alone = [stream_in_pieces(model, feats, seed=0)[0] for feats in utterances]
    streams = [EncoderStream(model) for _ in utterances]
    generator = torch.Generator().manual_seed(1)
    at, outputs = [0] * len(streams), [[] for _ in streams]
    while any(a < len(u) for a, u in zip(at, utterances)):
        for i, feats in enumerate(utterances):
            if i != 2 or at[0] > 10:  # stream 2 starts late: its first step beside others' later ones
                size = int(torch.randint(0, 7, (1,), generator=generator))
                streams[i].push(feats[at[i] : at[i] + size])
                at[i] += size
        for i, (log_probs, frame_log_probs) in enumerate(EncoderStream.run_batch(streams)):
            assert frame_log_probs is not None and frame_log_probs.shape == log_probs.shape
            outputs[i].append(log_probs)
    for i, stream in enumerate(streams):
        outputs[i].append(stream.finish()[0])
        torch.testing.assert_close(torch.cat(outputs[i]), alone[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", STREAMING_CELLS)
def test_right_context_past_the_utterance_is_the_offline_bilstm(cell):
    torch.manual_seed(1)
    lc = make("latency_controlled", cell, chunk=4, right=30)
    bi = make("bidirectional", cell)
    bi.load_state_dict(lc.state_dict())
    feats, lengths = torch.randn(2, 21, 10), torch.tensor([21, 13])
    valid = (torch.arange(21)[None, :] < lengths[:, None])[:, :, None]  # frames past a length mean nothing
    with torch.no_grad():
        offline = bi(feats, lengths)[0] * valid
        torch.testing.assert_close(lc(feats, lengths)[0] * valid, offline, atol=1e-5, rtol=1e-5)
        short = make("latency_controlled", cell, chunk=4, right=1)
        short.load_state_dict(lc.state_dict())
        assert (short(feats, lengths)[0] * valid - offline).abs().max() > 1e-3  # a short look-ahead is not the BiLSTM


def test_latency_controlled_training_backpropagates_and_pads_cleanly():
    """Each utterance of a padded batch gets the outputs it gets alone; every parameter learns."""
    torch.manual_seed(2)
    model = make("latency_controlled", chunk=3, right=2)
    feats, lengths = torch.randn(3, 14, 10), torch.tensor([14, 9, 5])
    feats[1, 9:], feats[2, 5:] = 50.0, -50.0
    model.train()
    out, _ = model(feats, lengths)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    with torch.no_grad():
        batched, _ = model(feats, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone, _ = model(feats[i : i + 1, :n], lengths[i : i + 1])
            torch.testing.assert_close(batched[i, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_a_bidirectional_model_does_not_stream():
    with pytest.raises(ValueError, match="cannot stream"):
        EncoderStream(make("bidirectional"))


@pytest.mark.parametrize("change", [{"direction": "sideways"}, {"direction": "latency_controlled", "chunk_frames": 0}])
def test_bad_direction_settings_raise(change):
    with pytest.raises(ValueError, match="model.direction"):
        build_model(ModelConfig(**change), input_dim=10, vocab_size=7)


def test_configs_that_said_bidirectional_still_load(tmp_path):
    old = config_to_dict(Config())
    old["model"].pop("direction")
    old["model"]["bidirectional"] = False
    assert config_from_dict(old).model.direction == "unidirectional"
    yaml = tmp_path / "old.yaml"
    yaml.write_text("model:\n  bidirectional: true\n")
    assert load_config(yaml).model.direction == "bidirectional"
    assert load_config(yaml, ["model.bidirectional=false"]).model.direction == "unidirectional"
