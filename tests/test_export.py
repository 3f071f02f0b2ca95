"""asr export: one ONNX graph from raw audio to log-probs, run by onnxruntime, against torch."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from asr.checkpoint import save_checkpoint  # noqa: E402
from asr.cli import main  # noqa: E402
from asr.config import config_from_dict, load_config  # noqa: E402
from asr.export import ExportError, export_onnx, padded_batch, run_onnx  # noqa: E402
from asr.export_features import GraphFeatures  # noqa: E402
from asr.features import FeatureExtractor, compute_cmvn_stats  # noqa: E402
from asr.inference import Recognizer  # noqa: E402
from asr.models import build_model  # noqa: E402
from asr.onnx_meta import ModelFileError, read_metadata  # noqa: E402
from asr.text import build_tokenizer, tokenizer_from_dict  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RATE = 16000
TINY = ["model.hidden_size=16", "model.num_layers=2", "model.dropout=0.0"]


def speechy(seconds: float, seed: int, silence: float = 0.0) -> np.ndarray:
    """Noise under a slow random envelope (stands in for speech), with `silence` s of digital
    silence at each end (cmvn "speech" and the global statistics leave it out)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    envelope = np.repeat(rng.uniform(0.0, 0.5, n // 1600 + 1), 1600)[:n]
    pad = np.zeros(int(silence * RATE))
    return np.concatenate([pad, rng.standard_normal(n) * envelope * 0.3, pad]).astype(np.float32)


# lengths that differ a lot: 30 ms (under one Kaldi window), 0.4 s, 2.5 s with silence around
SIGNALS = [speechy(0.03, 1), speechy(0.4, 2), speechy(2.5, 3, silence=0.2)]


def make_checkpoint(path: Path, config_file: str | None, overrides: list[str], label_prior: bool = False) -> Path:
    """A random-weight checkpoint of `config_file` (configs/) made tiny by `overrides`, with the
    training-set statistics its CMVN needs."""
    torch.manual_seed(0)
    config = load_config(CONFIGS / config_file if config_file else None, overrides)
    tokenizer = build_tokenizer(config.data)
    features = FeatureExtractor(config.features)
    cmvn_stats = None
    if config.features.cmvn in ("global", "running"):
        mean, var, frames = compute_cmvn_stats(features, [torch.from_numpy(speechy(1.0, s)) for s in range(3)])
        cmvn_stats = {"mean": mean, "var": var, "frames": frames}
    model = build_model(config.model, features.output_dim, tokenizer.vocab_size)
    prior = torch.log_softmax(torch.randn(tokenizer.vocab_size), 0) if label_prior else None
    save_checkpoint(path, model=model, config=config, tokenizer=tokenizer, cmvn_stats=cmvn_stats, label_log_prior=prior, train_max_duration=12.5)
    return path


def session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def export_case(case: tuple[str | None, list[str]], path: Path, export) -> tuple[object, Recognizer]:
    """A tiny checkpoint of `case` (config file, overrides) beside `path`, exported there by
    `export` (export_onnx or export_step_onnx), whose own check must hold the graph to torch
    within 1e-4: (the export's report, the checkpoint's torch Recognizer)."""
    config_file, overrides = case
    checkpoint = make_checkpoint(path.parent / "m.pt", config_file, TINY + overrides)
    report = export(checkpoint, path)
    assert report.max_delta is not None and report.max_delta <= 1e-4
    return report, Recognizer.from_checkpoint(checkpoint, device="cpu")


def torch_outputs(recognizer: Recognizer, signals: list[np.ndarray]):
    audio, lengths = padded_batch(signals)
    log_probs, frame_lengths, frame_log_probs = recognizer.outputs(torch.from_numpy(audio), torch.from_numpy(lengths))
    return log_probs.numpy(), frame_lengths.numpy(), None if frame_log_probs is None else frame_log_probs.numpy()


# every model shape and feature pipeline the configs use, at tiny width
CASES = {
    "demo": ("demo.yaml", []),  # fbank 80, cmvn speech, stack 3 subsample 3, frame head
    "timit": ("timit_bilstm.yaml", []),  # fbank 40 + deltas + delta-deltas, cmvn utterance, phones
    "librispeech_960h": ("librispeech_960h_bilstm.yaml", ["model.frontend_size=24"]),  # a frontend layer
    "global_cmvn": ("demo.yaml", ["features.cmvn=global"]),
    "mfcc_deltas": (None, ["features.kind=mfcc", "features.deltas=2", "features.num_mel_bins=23"]),
    "kaldi_compat": ("demo.yaml", ["features.kaldi_compat=true", "features.deltas=1"]),
    "unidirectional": ("demo.yaml", ["model.direction=unidirectional", "features.cmvn=none"]),
    "latency_controlled": ("demo_streaming.yaml", ["model.num_layers=3"]),  # cmvn running, chunks 4 + 2, frame head
    "gru": ("librispeech_100h_bilstm.yaml", ["model.cell=gru"]),
    "lc_gru_long_context": (None, ["model.cell=gru", "model.direction=latency_controlled", "model.chunk_frames=3",
                                   "model.right_context_frames=5", "model.num_layers=3"]),  # fmt: skip
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_graph_gives_torchs_log_probs_and_a_padded_batch_each_utterances_own(case, tmp_path):
    report, recognizer = export_case(CASES[case], tmp_path / "m.onnx", export_onnx)
    graph = session(report.path)
    has_frame_head = bool(recognizer.config.model.frame_head)
    assert [i.name for i in graph.get_inputs()] == ["audio", "audio_lengths"]
    assert [o.name for o in graph.get_outputs()] == ["log_probs", "lengths"] + (["frame_log_probs"] if has_frame_head else [])
    assert report.metadata.frame_head == has_frame_head

    log_probs, frame_lengths, frame_log_probs = torch_outputs(recognizer, SIGNALS)
    batch = run_onnx(graph, *padded_batch(SIGNALS))
    assert batch["lengths"].tolist() == frame_lengths.tolist()
    assert batch["log_probs"].shape == log_probs.shape
    for i, n in enumerate(frame_lengths.tolist()):
        np.testing.assert_allclose(batch["log_probs"][i, :n], log_probs[i, :n], atol=1e-4, rtol=0)
        if has_frame_head:
            np.testing.assert_allclose(batch["frame_log_probs"][i, :n], frame_log_probs[i, :n], atol=1e-4, rtol=0)
        alone = run_onnx(graph, *padded_batch(SIGNALS[i : i + 1]))  # another batch size and length too
        assert alone["lengths"].tolist() == [n]
        np.testing.assert_allclose(batch["log_probs"][i, :n], alone["log_probs"][0], atol=1e-5, rtol=0)


FEATURE_CASES = {
    "demo": ["features.cmvn=speech", "features.stack_frames=3", "features.subsample=3"],
    "timit": ["features.num_mel_bins=40", "features.deltas=2"],
    "global": ["features.cmvn=global"],
    "running": ["features.cmvn=running", "features.stack_frames=3", "features.subsample=3"],
    "mfcc": ["features.kind=mfcc", "features.deltas=2"],
    "kaldi": ["features.kaldi_compat=true", "features.cmvn=speech", "features.deltas=1", "features.stack_frames=2", "features.subsample=3"],
    "none": ["features.cmvn=none"],
    # odd windows (401 samples): the DFT's pairs about a half-sample centre, blocks of 1 sample
    "odd_window": ["features.frame_length_ms=25.0625", "features.stack_frames=2"],
    "kaldi_odd_window": ["features.kaldi_compat=true", "features.frame_length_ms=25.0625", "features.cmvn=none"],
}


@pytest.mark.parametrize("case", list(FEATURE_CASES))
def test_graph_features_are_the_extractors(case, tmp_path):
    """The features alone: the float64 extractor's to float32 rounding, and the float32
    extractor's to its FFT's rounding (the graph's DFT is float64: module docstring)."""
    config = load_config(None, FEATURE_CASES[case]).features
    extractor = FeatureExtractor(config).eval()
    if config.cmvn in ("global", "running"):
        mean, var, _ = compute_cmvn_stats(extractor, [torch.from_numpy(speechy(1.0, s)) for s in range(3)])
        extractor.set_cmvn_stats(mean, var)
    path = tmp_path / "features.onnx"
    example = padded_batch(SIGNALS[1:])
    with torch.no_grad():
        torch.onnx.export(
            GraphFeatures(extractor).eval(), tuple(torch.from_numpy(x) for x in example), str(path), dynamo=False, opset_version=17,
            input_names=["audio", "audio_lengths"], output_names=["feats", "lengths"],
            dynamic_axes={"audio": {0: "batch", 1: "samples"}, "audio_lengths": {0: "batch"}, "feats": {0: "batch", 1: "frames"}},
        )  # fmt: skip
    double = FeatureExtractor(config).double().eval()
    if config.cmvn in ("global", "running"):
        double.set_cmvn_stats(extractor.cmvn_mean, extractor.cmvn_var)
    for signals in (SIGNALS, SIGNALS[:1], SIGNALS[2:] + SIGNALS[:2]):
        audio, lengths = padded_batch(signals)
        feats, frame_lengths = session(path).run(None, {"audio": audio, "audio_lengths": lengths})
        reference, reference_lengths = extractor(torch.from_numpy(audio), torch.from_numpy(lengths))
        exact, _ = double(torch.from_numpy(audio).double(), torch.from_numpy(lengths))
        assert frame_lengths.tolist() == reference_lengths.tolist() and feats.shape == tuple(reference.shape)
        # float32 rounding, made larger where 4 frames (the 30 ms signal) make the CMVN statistics
        np.testing.assert_allclose(feats, exact.numpy(), atol=1e-4, rtol=0)
        scale = reference.abs().max().item()
        assert np.abs(feats - reference.numpy()).max() <= 2e-4 * scale


def test_int8_loads_runs_and_is_under_a_third_of_the_size(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "m.pt", "demo.yaml", ["model.hidden_size=128", "model.num_layers=3"])
    fp32 = export_onnx(checkpoint, tmp_path / "fp32.onnx", check=False)
    int8 = export_onnx(checkpoint, tmp_path / "int8.onnx", int8=True)
    assert int8.size <= fp32.size / 3, (int8.size, fp32.size)
    assert int8.metadata.int8 and not fp32.metadata.int8
    assert int8.max_delta <= 1e-4 and int8.int8_delta is not None  # the float32 graph checked before quantizing
    ops = {node.op_type for node in onnx.load(str(int8.path)).graph.node}
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
    out = run_onnx(session(int8.path), *padded_batch(SIGNALS))
    log_probs, frame_lengths, _ = torch_outputs(Recognizer.from_checkpoint(checkpoint, device="cpu"), SIGNALS)
    assert out["lengths"].tolist() == frame_lengths.tolist() and np.isfinite(out["log_probs"]).all()
    np.testing.assert_allclose(np.exp(out["log_probs"]).sum(-1), 1.0, atol=1e-4)
    assert np.abs(out["log_probs"] - log_probs).max() < 0.5  # int8 weights: near, not equal


@pytest.mark.parametrize("cell", ["peephole", "lstm_diag_peephole", "lstm_variant", "slstm", "convlstm"])
def test_cells_onnx_cannot_express_are_an_export_error_naming_them(cell, tmp_path):
    overrides = TINY + [f"model.cell={cell}", "features.num_mel_bins=20", "features.stack_frames=3"]
    checkpoint = make_checkpoint(tmp_path / "m.pt", None, overrides)
    with pytest.raises(ExportError, match=f"model.cell='{cell}' cannot be exported"):
        export_onnx(checkpoint, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_metadata_rebuilds_the_recognizer_without_the_checkpoint(tmp_path):
    overrides = TINY + ["train.label_prior_weight=0.3", "data.unit=phone", "data.phone_set=39"]
    checkpoint = make_checkpoint(tmp_path / "m.pt", "timit_bilstm.yaml", overrides, label_prior=True)
    report = export_onnx(checkpoint, tmp_path / "m.onnx")
    meta = read_metadata(report.path)
    recognizer = Recognizer.from_checkpoint(checkpoint, device="cpu")
    assert config_from_dict(meta.config) == recognizer.config
    assert tokenizer_from_dict(meta.tokenizer).symbols == recognizer.tokenizer.symbols
    np.testing.assert_allclose(meta.label_log_prior, recognizer.label_log_prior.numpy(), rtol=1e-6)
    assert meta.train_max_duration == 12.5 and meta.sample_rate == RATE
    assert (meta.frame_step, meta.frame_seconds) == (recognizer.features.frame_step, recognizer.features.frame_seconds)
    assert not meta.frame_head and not meta.int8
    props = {p.key for p in onnx.load(str(report.path)).metadata_props}
    assert props == {"asr.format", "asr.version", "asr.config", "asr.tokenizer", "asr.label_log_prior", "asr.train_max_duration",
                     "asr.frame_step", "asr.frame_seconds", "asr.frame_head", "asr.int8"}  # fmt: skip


def test_damaged_and_foreign_files_are_a_typed_error_naming_them(tmp_path):
    report = export_onnx(make_checkpoint(tmp_path / "m.pt", None, TINY), tmp_path / "m.onnx", check=False)
    (tmp_path / "cut.onnx").write_bytes(report.path.read_bytes()[:5000])
    (tmp_path / "noise.onnx").write_bytes(np.random.default_rng(0).bytes(3000))
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    foreign = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [
        onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    for name, message in [("cut.onnx", "cut.onnx: not"), ("noise.onnx", "noise.onnx: not"),
                          ("foreign.onnx", "foreign.onnx: not an asr-onnx model"), ("absent.onnx", "absent.onnx: no such file")]:  # fmt: skip
        with pytest.raises(ModelFileError, match=message):
            read_metadata(tmp_path / name)


def test_an_export_that_fails_its_check_writes_nothing(tmp_path, monkeypatch):
    import asr.export

    checkpoint = make_checkpoint(tmp_path / "m.pt", None, TINY)
    monkeypatch.setattr(asr.export, "max_difference", lambda *args: 0.5)
    with pytest.raises(ExportError, match="differs from torch by 5.00e-01"):
        export_onnx(checkpoint, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == [checkpoint]


def test_asr_export_prints_the_file_its_size_and_the_check(tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "m.pt", "demo.yaml", TINY)
    assert main(["export", str(checkpoint), "-o", str(tmp_path / "m.onnx"), "--opset", "17"]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'm.onnx'}: " in out and "MiB (float32, opset 17)" in out and "max |Δ log-prob| vs torch" in out
    assert main(["export", str(tmp_path / "absent.pt"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "absent.pt: no such checkpoint" in capsys.readouterr().err


def test_export_needs_onnx_but_not_onnxscript(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "m.pt", None, TINY + ["model.direction=latency_controlled", "model.chunk_frames=2",
                                                                  "model.right_context_frames=1"])  # fmt: skip
    script = (
        "import sys; sys.modules['onnxscript'] = None\n"  # any import of it fails
        "from asr.export import export_onnx\n"
        f"r = export_onnx({str(checkpoint)!r}, {str(tmp_path / 'm.onnx')!r}, int8=True)\n"
        "assert r.max_delta <= 1e-4 and 'onnxscript' not in [m for m, v in sys.modules.items() if v is not None]\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).resolve().parent.parent)
