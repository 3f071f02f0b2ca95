"""The torch-free runtime (asr/runtime.py): an exported model (`asr export`) in onnxruntime
behind the same `transcribe_files` / `decode_dataset` as a checkpoint, and the `asr transcribe`
and `asr evaluate` commands on it in a process where `import torch` fails, and in a fresh venv
that never had torch (slow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from asr.checkpoint import save_checkpoint  # noqa: E402
from asr.config import Config, FeatureConfig, ModelConfig  # noqa: E402
from asr.data.manifest import read_manifest  # noqa: E402
from asr.inference import Recognizer  # noqa: E402
from asr.models import build_model  # noqa: E402
from asr.features import FeatureExtractor  # noqa: E402
from asr.recognize import decode_dataset  # noqa: E402
from asr.runtime import ModelFileError, OnnxRecognizer, load_recognizer  # noqa: E402
from asr.segment import SegmentOptions  # noqa: E402
from asr.text import CharTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# run asr with torch unimportable: `import torch` raises ImportError, as where it is not installed
NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['silero_vad'] = None\n"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small demo-shaped model (speech CMVN, 3 stacked frames every 3rd, BiLSTM, frame head;
    random weights with the letters lifted so texts are not empty), its export, eSpeak speech
    (the test utterances and a 25-s file of them joined with pauses) and a word 3-gram."""
    from asr.cli import build_lm
    from asr.data.joined import join_utterances
    from asr.data.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("runtime")
    manifests = synthesize_corpus(root / "corpus", num_utterances=40, seed=0, progress=False, num_workers=1)
    torch.manual_seed(0)
    config = Config(
        features=FeatureConfig(num_mel_bins=40, cmvn="speech", stack_frames=3, subsample=3),
        model=ModelConfig(hidden_size=32, num_layers=2, dropout=0.0, frame_head=True),
    )
    tokenizer = CharTokenizer()
    model = build_model(config.model, FeatureExtractor(config.features).output_dim, tokenizer.vocab_size)
    with torch.no_grad():
        model.output.bias[1:] += 2.0
    ckpt = root / "model.pt"
    save_checkpoint(ckpt, model=model, config=config, tokenizer=tokenizer, train_max_duration=4.0)  # long files: 5-s segments
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for out, extra in ((root / "model.onnx", []), (root / "model.int8.onnx", ["--int8"])):
        subprocess.run([sys.executable, "-m", "asr", "export", str(ckpt), "-o", str(out), *extra], check=True, env=env, capture_output=True)
    join_utterances(manifests["test"], root / "talk.wav", 25.0, pause=(0.3, 1.0), no_pause=0.3, seed=0)
    build_lm(str(manifests["train"]), root / "lm.arpa", order=3)
    return {"root": root, "ckpt": ckpt, "onnx": root / "model.onnx", "int8": root / "model.int8.onnx", "test": manifests["test"],
            "long": root / "talk.wav", "short": Path(read_manifest(manifests["test"])[0].audio), "lm": root / "lm.arpa"}  # fmt: skip


def test_the_exported_model_gives_the_checkpoints_log_probs_padded_or_alone(exported):
    torch_side = Recognizer.from_checkpoint(exported["ckpt"], device="cpu")
    onnx_side = load_recognizer(exported["onnx"])
    assert isinstance(onnx_side, OnnxRecognizer) and onnx_side.align_with_frame_head
    rng = np.random.default_rng(0)
    pieces = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 4000, 23456)]
    a = torch_side.outputs(*torch_side.audio_batch(pieces))
    b = onnx_side.outputs(*onnx_side.audio_batch(pieces))
    assert a[1].tolist() == b[1].tolist()
    for x, y in ((a[0], b[0]), (a[2], b[2])):
        for i, n in enumerate(b[1].tolist()):
            assert np.abs(x[i, :n].numpy() - y[i, :n]).max() < 1e-4
    alone = onnx_side.outputs(*onnx_side.audio_batch(pieces[1:2]))
    assert np.abs(alone[0][0] - b[0][1, : b[1][1]]).max() < 1e-4  # the padded batch's second = it alone


def run_cli(args, torch_free: bool, python: str = sys.executable, **kwargs):
    code = NO_TORCH if torch_free else ""
    code += "from asr.cli import main; rc = main(sys.argv[1:]); "
    code += "print('TORCH LOADED' if sys.modules.get('torch') is not None else 'no torch', file=sys.stderr); sys.exit(rc)"
    env = dict(os.environ, PYTHONPATH=str(ROOT)) if python == sys.executable else dict(os.environ)
    return subprocess.run([python, "-c", "import sys\n" + code, *map(str, args)], capture_output=True, text=True, env=env, timeout=600, **kwargs)


def expected_transcripts(exported, decoder: str) -> list[dict]:
    """What `asr transcribe --json --word-timestamps` should print, from the runtime in this
    process (torch importable here, but unused by it), the VAD pinned to the torch-free one."""
    recognizer = load_recognizer(exported["onnx"])
    if decoder == "beam":
        from dataclasses import replace

        recognizer.set_decoder(replace(recognizer.config.decode, decoder="beam", lm=str(exported["lm"])))
    results = recognizer.transcribe_files([exported["short"], exported["long"]], word_timestamps=True, segmenting=SegmentOptions(vad="pysilero"))
    return [{"text": r.text, "words": [(w.text, round(w.start, 3), round(w.end, 3)) for w in r.words]} for r in results]


@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_transcribe_an_exported_model_where_torch_cannot_be_imported(exported, decoder):
    expected = expected_transcripts(exported, decoder)
    assert len(expected[1]["words"]) > len(expected[0]["words"]) > 0
    args = ["transcribe", exported["onnx"], exported["short"], exported["long"], "--json", "--word-timestamps", "--no-progress"]
    args += ["--decoder", "beam", "--lm", exported["lm"]] if decoder == "beam" else []
    done = run_cli(args, torch_free=True)
    assert done.returncode == 0, done.stderr
    assert "no torch" in done.stderr
    got = [json.loads(line) for line in done.stdout.splitlines()]
    assert [{"text": g["text"], "words": [(w["text"], round(w["start"], 3), round(w["end"], 3)) for w in g["words"]]} for g in got] == expected


def test_evaluate_an_exported_model_where_torch_cannot_be_imported(exported, tmp_path):
    recognizer = load_recognizer(exported["onnx"])
    from dataclasses import replace

    recognizer.set_decoder(replace(recognizer.config.decode, decoder="beam", lm=str(exported["lm"])))
    result = decode_dataset(recognizer, read_manifest(exported["test"]))
    out = tmp_path / "recognitions.jsonl"
    done = run_cli(["evaluate", exported["onnx"], exported["test"], "--decoder", "beam", "--lm", exported["lm"], "--output", out], torch_free=True)
    assert done.returncode == 0, done.stderr
    assert "no torch" in done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["hyp"]) for r in rows] == [(r.id, r.hypothesis) for r in result.recognitions]
    assert f"{result.wer:.2%}" in done.stdout


def test_a_checkpoint_without_torch_is_a_clear_error(exported):
    done = run_cli(["transcribe", exported["ckpt"], exported["short"]], torch_free=True)
    assert done.returncode == 2
    assert "torch" in done.stderr and "asr export" in done.stderr and "Traceback" not in done.stderr


def test_int8_model_runs_and_is_a_third_the_size(exported):
    recognizer = load_recognizer(exported["int8"])
    [result] = recognizer.transcribe_files([exported["short"]])
    assert result.error is None and result.text
    assert os.path.getsize(exported["int8"]) <= os.path.getsize(exported["onnx"]) / 2  # this small model's LSTMs: not yet 1/3 (bench: the demo's)


def test_damaged_and_foreign_onnx_files_are_typed_errors_that_name_them(exported, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(exported["onnx"].read_bytes()[:5000])
    foreign = tmp_path / "foreign.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    onnx.save(helper.make_model(graph), foreign)
    for path, says in ((damaged, "not a readable ONNX model"), (foreign, "not an asr-onnx model"), (tmp_path / "missing.onnx", "no such")):
        with pytest.raises(ModelFileError, match=says) as error:
            load_recognizer(path)
        assert str(path) in str(error.value)
        done = run_cli(["transcribe", path, exported["short"]], torch_free=True)
        assert done.returncode == 2 and str(path) in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_fresh_torch_free_install_transcribes(exported, tmp_path):
    """`pip install .[onnx]` into a venv that never had torch (what docs/export.md tells users to
    run): torch is not there, and `asr transcribe` on the exported model prints what it prints here."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{ROOT}[onnx]"], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0
    done = run_cli(["transcribe", exported["onnx"], exported["short"], exported["long"], "--json", "--word-timestamps", "--no-progress"], torch_free=False, python=python)
    assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in done.stdout.splitlines()]
    expected = expected_transcripts(exported, "greedy")
    assert [{"text": g["text"], "words": [(w["text"], round(w["start"], 3), round(w["end"], 3)) for w in g["words"]]} for g in got] == expected
