"""asr export --streaming: the step graph, driven window by window through onnxruntime with its
states carried in numpy, against EncoderStream and the offline model."""

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from asr.cli import main  # noqa: E402
from asr.export import ExportError, export_onnx  # noqa: E402
from asr.export_stream import export_step_onnx, run_step_stream, stream_windows, zero_states  # noqa: E402
from asr.models.encoder import EncoderStream  # noqa: E402
from asr.onnx_meta import ModelMetadata, read_metadata  # noqa: E402
from test_export import TINY, export_case, make_checkpoint, session  # noqa: E402

LC = ["model.direction=latency_controlled", "model.chunk_frames=4", "model.right_context_frames=2"]  # configs/demo_streaming.yaml's
UNI = ["model.direction=unidirectional"]
CASES = {
    "lc_lstm_frame_head": ("demo_streaming.yaml", ["model.num_layers=3"]),  # cmvn running, frame head
    "lc_lstm": ("demo_streaming.yaml", ["model.frame_head=false", "model.frontend_size=12"]),
    "lc_gru_frame_head": ("demo_streaming.yaml", ["model.cell=gru", "model.num_layers=3"]),
    "lc_gru": (None, LC + ["model.cell=gru", "model.frame_head=false"]),
    "uni_lstm_frame_head": ("demo_streaming.yaml", UNI),
    "uni_lstm": (None, UNI + ["model.frame_head=false", "model.frontend_size=12"]),
    "uni_gru_frame_head": ("demo_streaming.yaml", UNI + ["model.cell=gru"]),
    "uni_gru": (None, UNI + ["model.cell=gru", "model.frame_head=false"]),
}
LENGTHS = (83, 6, 3, 1)  # model frames: a 2.5 s stream, one whole window, shorter than a chunk, one frame


def reference_stream(model, feats: torch.Tensor, piece: int) -> tuple[np.ndarray, np.ndarray | None]:
    """EncoderStream fed `piece` frames at a time, then finished: (frames, vocab) each."""
    stream = EncoderStream(model)
    outputs = [stream.accept(feats[i : i + piece]) for i in range(0, len(feats), piece)] + [stream.finish()]
    log_probs = torch.cat([o[0] for o in outputs]).numpy()
    return log_probs, (torch.cat([o[1] for o in outputs]).numpy() if outputs[0][1] is not None else None)


@pytest.mark.parametrize("case", list(CASES))
def test_the_step_graph_streams_as_encoder_stream_and_the_offline_model(case, tmp_path):
    report, recognizer = export_case(CASES[case], tmp_path / "step.onnx", export_step_onnx)
    model = recognizer.model.eval()
    config = model.config
    lc = config.direction == "latency_controlled"
    meta = report.metadata
    assert meta.streaming and (meta.chunk_frames, meta.right_context_frames) == ((4, 2) if lc else (0, 0))
    names = ["h"] if config.cell == "gru" else ["h", "c"]
    assert meta.states == {name: [config.num_layers, config.hidden_size] for name in names}
    graph = session(report.path)
    assert [i.name for i in graph.get_inputs()] == ["feats", "main_frames"] + names
    heads = ["log_probs"] + (["frame_log_probs"] if config.frame_head else [])
    assert [o.name for o in graph.get_outputs()] == heads + [name + "_out" for name in names]

    generator = torch.Generator().manual_seed(1)
    for num_frames in LENGTHS:
        feats = torch.randn(num_frames, recognizer.features.output_dim, generator=generator)
        exported = run_step_stream(graph, feats.numpy(), meta, pieces=None if lc else 5)
        reference = reference_stream(model, feats, piece=7)
        with torch.inference_mode():
            offline = model(feats[None], torch.tensor([num_frames]), frames=True)
        assert exported["log_probs"].shape == (num_frames, model.output.out_features)
        assert np.abs(exported["log_probs"] - reference[0]).max() <= 1e-4
        assert np.abs(exported["log_probs"] - offline[0][0].numpy()).max() <= 1e-4
        if config.frame_head:
            assert np.abs(exported["frame_log_probs"] - reference[1]).max() <= 1e-4
            assert np.abs(exported["frame_log_probs"] - offline[2][0].numpy()).max() <= 1e-4


def test_a_batch_of_windows_is_each_streams_own(tmp_path):
    """Two streams at different points (their own states) in one call = each alone."""
    checkpoint = make_checkpoint(tmp_path / "m.pt", "demo_streaming.yaml", TINY)
    report = export_step_onnx(checkpoint, tmp_path / "step.onnx")
    graph, meta = session(report.path), report.metadata
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((2, 6, 80 * 3)).astype(np.float32)
    states = {name: rng.standard_normal((2, 2, 16)).astype(np.float32) * 0.5 for name in meta.states}
    names = [o.name for o in graph.get_outputs()]
    batched = dict(zip(names, graph.run(names, {"feats": feats, "main_frames": np.array(4, np.int64), **states})))
    assert batched["log_probs"].shape[:2] == (2, 4)
    for b in range(2):
        feed = {"feats": feats[b : b + 1], "main_frames": np.array(4, np.int64), **{k: v[:, b : b + 1] for k, v in states.items()}}
        for name, want in zip(names, graph.run(names, feed)):
            got = batched[name][:, b : b + 1] if name.endswith("_out") else batched[name][b : b + 1]  # states: (layers, batch, hidden)
            assert np.abs(got - want).max() <= 1e-5


def test_windows_follow_encoder_stream():
    assert stream_windows(11, 4, 2) == [(0, 6, 4), (4, 10, 4), (8, 11, 3)]
    assert stream_windows(4, 4, 2) == [(0, 4, 4)]
    assert stream_windows(0, 4, 2) == []
    assert stream_windows(9, 0, 0) == [(0, 9, 9)]


def test_int8_step_graph_quantizes_every_lstm_and_runs(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "m.pt", "demo_streaming.yaml", TINY + ["model.num_layers=3"])
    report = export_step_onnx(checkpoint, tmp_path / "step-int8.onnx", int8=True)
    assert report.metadata.int8 and report.int8_delta is not None and report.int8_delta < 0.5
    ops = [n.op_type for n in onnx.load(str(report.path)).graph.node]
    assert "LSTM" not in ops and ops.count("DynamicQuantizeLSTM") == 8  # 3 layers x 2 directions + the look-ahead of the 2 lower ones
    feats = np.random.default_rng(0).standard_normal((23, 240)).astype(np.float32)
    out = run_step_stream(session(report.path), feats, report.metadata)
    assert out["log_probs"].shape[0] == 23 and np.isfinite(out["log_probs"]).all()


def test_what_cannot_stream_or_export_is_an_export_error(tmp_path):
    bidirectional = make_checkpoint(tmp_path / "bi.pt", "demo.yaml", TINY)
    with pytest.raises(ExportError, match="bidirectional model .* cannot stream"):
        export_step_onnx(bidirectional, tmp_path / "x.onnx")
    peephole = make_checkpoint(tmp_path / "p.pt", "demo_streaming.yaml", TINY + ["model.cell=peephole"])
    with pytest.raises(ExportError, match="model.cell='peephole' cannot be exported"):
        export_step_onnx(peephole, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_metadata_streaming_keys_are_optional(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "m.pt", "demo_streaming.yaml", TINY)
    offline = export_onnx(checkpoint, tmp_path / "m.onnx", check=False).metadata
    assert not offline.streaming and offline.states is None and offline.chunk_frames == 0
    assert not any(key in offline.to_props() for key in ("asr.streaming", "asr.chunk_frames", "asr.states"))
    step = export_step_onnx(checkpoint, tmp_path / "step.onnx", check=False).metadata
    assert ModelMetadata.from_props(step.to_props(), "x") == step == read_metadata(tmp_path / "step.onnx")
    assert zero_states(step, batch=3)["c"].shape == (2, 3, 16)


def test_cli_exports_the_step_graph(tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "m.pt", "demo_streaming.yaml", TINY)
    assert main(["export", str(checkpoint), "--streaming", "-o", str(tmp_path / "step.onnx")]) == 0
    out = capsys.readouterr().out
    assert "step graph, windows of 4 + 2 frames, states h [2, 16], c [2, 16]" in out and "vs EncoderStream" in out
    assert read_metadata(tmp_path / "step.onnx").streaming
    bidirectional = make_checkpoint(tmp_path / "bi.pt", "demo.yaml", TINY)
    assert main(["export", str(bidirectional), "--streaming", "-o", str(tmp_path / "bi.onnx")]) == 2
    assert "cannot stream" in capsys.readouterr().err
