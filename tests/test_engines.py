"""Text-to-speech engines as test sources (asr/data/engines.py) and scripts/bench_voices.py:
every installed engine speaks real audio; missing engines are skipped, never an error."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from asr.audio import SAMPLE_RATE
from asr.data.engines import ENGINES, Engine, EngineError, ESpeakNG, Flite, UnknownVoiceError, find_engines
from asr.data.synth import TRAIN_VOICES

ROOT = Path(__file__).resolve().parent.parent
SENTENCE = "the quick brown fox jumps over the lazy dog"  # 9 words: about 3 s at 150-200 words a minute


def load_bench_voices():
    spec = importlib.util.spec_from_file_location("bench_voices", ROOT / "scripts" / "bench_voices.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_voices"] = module
    spec.loader.exec_module(module)
    return module


def installed(name: str) -> Engine:
    cls = ENGINES[name]
    if not cls.available():
        pytest.skip(f"{name} is not installed ({cls.install})")
    engine = cls()
    if not engine.voices():
        pytest.skip(f"{name} is installed without an English voice ({cls.install})")
    return engine


@pytest.mark.parametrize("name", list(ENGINES))
def test_each_installed_engine_speaks_a_sentence_as_16khz_float32_speech(name):
    engine = installed(name)
    voices = engine.voices()
    for voice in (voices[0], voices[-1]):
        audio = engine.speak(SENTENCE, voice)
        assert audio.dtype == np.float32 and audio.ndim == 1
        seconds = audio.size / SAMPLE_RATE
        assert 1.5 < seconds < 6.0, f"{name}/{voice}: {seconds:.2f} s for 9 words"
        assert np.abs(audio).max() <= 1.0
        frames = audio[: audio.size // 160 * 160].reshape(-1, 160)  # 10-ms frames
        loud = np.sqrt(np.mean(frames**2, axis=1)) > 0.01
        assert loud.mean() > 0.3, f"{name}/{voice}: only {loud.mean():.0%} of the 10-ms frames hold sound"


def test_flites_8khz_voice_comes_out_at_16khz_as_long_as_its_16khz_twin():
    engine = installed("flite")
    kal, kal16 = engine.speak(SENTENCE, "kal"), engine.speak(SENTENCE, "kal16")  # one diphone set, 8 and 16 kHz
    assert 0.85 < kal.size / kal16.size < 1.15
    spectrum = np.abs(np.fft.rfft(kal)) ** 2
    above_4k = spectrum[int(4000 / SAMPLE_RATE * kal.size) + 50 :].sum() / spectrum.sum()
    assert above_4k < 1e-3  # resampled from 8 kHz: nothing above its Nyquist frequency


@pytest.mark.parametrize("name", list(ENGINES))
def test_an_unknown_voice_is_a_typed_error_naming_the_engine_the_voice_and_the_text(name):
    engine = installed(name)
    with pytest.raises(UnknownVoiceError) as caught:
        engine.speak("hello there", "no-such-voice")
    error = caught.value
    assert isinstance(error, EngineError)
    assert (error.engine, error.voice, error.text) == (name, "no-such-voice", "hello there")
    assert name in str(error) and "no-such-voice" in str(error) and "hello there" in str(error)


class _Failing(Engine):
    name = "failing"
    install = "nothing"

    @classmethod
    def available(cls) -> bool:
        return True

    def _list_voices(self) -> list[str]:
        return ["v1"]

    def _speak(self, text: str, voice: str) -> np.ndarray:
        self._run(["sh", "-c", "echo cannot speak >&2; exit 3"], voice, text)
        raise AssertionError("unreachable")


def test_a_failed_engine_process_is_an_engine_error_with_its_exit_status_and_message():
    with pytest.raises(EngineError, match=r"failing: voice 'v1': sh exited with 3: cannot speak \(text 'a b'\)"):
        _Failing().speak("a b", "v1")
    with pytest.raises(EngineError, match="empty text"):
        _Failing().speak("  ", "v1")


def test_engines_not_installed_are_skipped_with_one_line_and_unknown_names_are_errors(monkeypatch):
    monkeypatch.setattr(Flite, "available", classmethod(lambda cls: False))
    engines, skipped = find_engines(["flite", "espeak-ng"])
    assert "flite" not in [e.name for e in engines]
    assert skipped == [f"flite: not installed, skipped ({Flite.install})"]
    with pytest.raises(ValueError, match="unknown engine.*nosuch"):
        find_engines(["nosuch"])


def write_speakers(path: Path, speakers: list[str]) -> Path:
    rows = [{"id": f"u{i}", "audio": f"missing/{i}.wav", "duration": 1.0, "text": "a", "speaker": s} for i, s in enumerate(speakers)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_training_speakers_come_from_the_models_manifest_else_the_corpus_and_trained_voices_are_left_out(tmp_path):
    bench = load_bench_voices()
    corpus = tmp_path / "corpus"
    write_speakers(corpus / "train.jsonl", ["en-us+m1", "en+f2"])
    model_manifest = write_speakers(tmp_path / "elsewhere" / "train.jsonl", ["en-us+m1", "en-us+m2", "flite/slt"])

    speakers, path = bench.training_speakers(str(model_manifest), corpus)  # the model's own manifest wins
    assert (speakers, path) == ({"en-us+m1", "en-us+m2", "flite/slt"}, model_manifest)
    speakers, path = bench.training_speakers(str(tmp_path / "gone.jsonl"), corpus)  # moved away: the corpus'
    assert (speakers, path) == ({"en-us+m1", "en+f2"}, corpus / "train.jsonl")
    assert bench.training_speakers("", tmp_path / "empty") == (set(), None)

    espeak = ESpeakNG()
    voices, left_out = bench.untrained_voices(espeak, {"en-us+m1", "en+f2", "flite/slt"})
    assert left_out == ["en-us+m1", "en+f2"]
    assert "en-us+m1" not in voices and "en-us" in voices and "en-us+m5" in voices
    assert len(voices) + 2 == len(espeak.voices())

    class FakeFlite(Flite):  # the names of another engine's voices carry its name, so they never meet eSpeak's
        def _list_voices(self):
            return ["slt", "awb"]

    assert bench.untrained_voices(FakeFlite(), {"flite/slt", "slt"}) == (["awb"], ["slt"])


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A tiny random char model (its config naming the corpus' train.jsonl), a 12-utterance eSpeak
    corpus and a word 3-gram on its training text."""
    import torch

    from asr.checkpoint import save_checkpoint
    from asr.cli import build_lm
    from asr.config import Config, DataConfig, FeatureConfig, ModelConfig
    from asr.data.synth import synthesize_corpus
    from asr.features import FeatureExtractor
    from asr.models import build_model
    from asr.text import CharTokenizer

    root = tmp_path_factory.mktemp("bench_voices")
    manifests = synthesize_corpus(root / "corpus", num_utterances=12, seed=0, progress=False, num_workers=1)
    torch.manual_seed(0)
    config = Config(
        features=FeatureConfig(num_mel_bins=20, stack_frames=3, subsample=3),
        model=ModelConfig(hidden_size=16, num_layers=1, dropout=0.0, frame_head=False),
        data=DataConfig(train=str(manifests["train"])),
    )
    tokenizer = CharTokenizer()
    model = build_model(config.model, FeatureExtractor(config.features).output_dim, tokenizer.vocab_size)
    with torch.no_grad():
        model.output.bias[1:] += 2.0  # letters, not only blanks
    save_checkpoint(root / "model.pt", model=model, config=config, tokenizer=tokenizer)
    build_lm(str(manifests["train"]), root / "lm.arpa", order=3)
    return root


def test_bench_voices_scores_the_corpus_audio_as_evaluate_does_and_every_untrained_voice(tiny_setup):
    from asr.data.manifest import read_manifest
    from asr.recognize import decode_dataset
    from asr.runtime import load_recognizer

    bench = load_bench_voices()
    root = tiny_setup
    recognizer = load_recognizer(root / "model.pt", device="cpu", threads=1)
    engines = ["espeak-ng"] + (["flite"] if Flite.available() else [])
    result = bench.run_bench(recognizer, root / "corpus", num_sentences=2, engine_names=engines, lm=str(root / "lm.arpa"), progress=False)

    assert result.training_manifest == root / "corpus" / "train.jsonl"
    trained = {u.speaker for u in read_manifest(root / "corpus" / "train.jsonl")}  # a few of TRAIN_VOICES
    assert trained <= set(TRAIN_VOICES) and set(result.excluded["espeak-ng"]) == trained
    corpus_row, *voice_rows = result.sources
    assert corpus_row.engine == "corpus"
    spoken = {(s.engine, s.voice) for s in voice_rows}
    assert not any(("espeak-ng", v) in spoken for v in trained)
    assert len([s for s in voice_rows if s.engine == "espeak-ng"]) == len(ESpeakNG().voices()) - len(trained)
    assert ("espeak-ng", "en-us+m5") in spoken and (("flite", "slt") in spoken) == Flite.available()
    for source in result.sources:
        assert len(source.audio) == 2 and source.greedy.reference_length == source.beam.reference_length > 0

    recognizer.set_decoder(recognizer.config.decode)  # greedy: the model's own decode config
    evaluated = decode_dataset(recognizer, read_manifest(root / "corpus" / "test.jsonl")[:2])
    assert corpus_row.greedy == evaluated.words  # the bench's corpus row is `asr evaluate`'s

    table = bench.format_table(result)
    assert result.beam_label == "beam + LM" and "beam + LM WER" in table
    assert "en-us+m5" in table and f"all {len([s for s in voice_rows if s.engine == 'espeak-ng'])} voices" in table
