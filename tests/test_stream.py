"""`Recognizer.stream()` and `asr stream`: chunks of any size give the offline text, endpoints on
synthetic silence, bad input, state dropped at endpoints."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from asr.checkpoint import save_checkpoint
from asr.config import Config, ConfigError, FeatureConfig, ModelConfig
from asr.features import FeatureExtractor
from asr.inference import Recognizer
from asr.models.encoder import build_model
from asr.stream import EndpointConfig, EndpointRule, StreamError
from asr.text import CharTokenizer

RATE = 16000


def speechy(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise shaped by a slow random envelope: stands in for speech."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    envelope = np.repeat(rng.uniform(0.0, 0.5, n // 1600 + 1), 1600)[:n]
    return (rng.standard_normal(n) * envelope * 0.3).astype(np.float32)


def make_recognizer(direction: str = "latency_controlled", decoder: str = "greedy", cmvn: str = "global") -> Recognizer:
    torch.manual_seed(0)
    config = Config(
        features=FeatureConfig(num_mel_bins=20, cmvn=cmvn, stack_frames=3, subsample=3),
        model=ModelConfig(hidden_size=16, num_layers=2, dropout=0.0, direction=direction, chunk_frames=4, right_context_frames=2),
    )
    config.decode.decoder = decoder
    tokenizer = CharTokenizer()
    features = FeatureExtractor(config.features)
    if cmvn in ("global", "running"):
        from asr.features import compute_cmvn_stats

        mean, var, _ = compute_cmvn_stats(features, [torch.from_numpy(speechy(2.0, s)) for s in range(3)])
        features.set_cmvn_stats(mean, var)
    model = build_model(config.model, features.output_dim, tokenizer.vocab_size)
    with torch.no_grad():  # a random model says little but blank; lift the letters so texts are not empty
        model.output.bias[1:] += 2.0
    return Recognizer(model.eval(), features.eval(), tokenizer, config)


def offline_text(recognizer: Recognizer, audio: np.ndarray) -> str:
    log_probs, lengths = recognizer.log_probs(torch.from_numpy(audio)[None], torch.tensor([len(audio)]))
    return recognizer.decode_log_probs(log_probs, lengths)[0]


def stream_text(recognizer: Recognizer, audio: np.ndarray, sizes, endpoint: EndpointConfig | None = None) -> str:
    stream = recognizer.stream(endpoint or EndpointConfig(enabled=False))
    at, finals = 0, []
    for size in sizes:
        finals += [e.text for e in stream.feed(audio[at : at + size], RATE) if e.final]
        at += size
    finals += [e.text for e in stream.close()]
    return " ".join(finals)


@pytest.mark.parametrize("direction", ["latency_controlled", "unidirectional"])
@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_a_stream_fed_in_any_chunks_says_what_offline_decoding_says(direction, decoder):
    recognizer = make_recognizer(direction, decoder)
    audio = speechy(2.3, seed=1)
    expected = offline_text(recognizer, audio)
    assert expected  # the test means something
    rng = np.random.default_rng(0)
    random_sizes = list(rng.integers(0, 4000, 40)) + [len(audio)]
    for sizes in ([len(audio)], [1] * 700 + [len(audio)], random_sizes):
        assert stream_text(recognizer, audio, sizes) == expected


def test_partials_grow_into_the_final_and_carry_word_times():
    recognizer = make_recognizer()
    audio = speechy(2.0, seed=2)
    stream = recognizer.stream(EndpointConfig(enabled=False))
    partials = []
    for at in range(0, len(audio), 1600):
        partials += [e for e in stream.feed(audio[at : at + 1600], RATE)]
    final = stream.finish()
    assert partials and all(not p.final for p in partials)
    assert final.final and final.text == offline_text(recognizer, audio)
    for event in partials + [final]:
        assert " ".join(w.text for w in event.words) == " ".join(event.text.split())
        assert all(0.0 <= w.start <= w.end <= 2.0 + 0.1 for w in event.words)
    for event in partials + [final]:
        json.dumps(event.event(), allow_nan=False)  # strict JSON: an unknown confidence is null, not NaN
    record = json.loads(json.dumps(final.event()))
    assert record["type"] == "final" and set(record) == {"type", "text", "start", "end", "words"}


def test_other_sample_rates_are_resampled():
    recognizer = make_recognizer()
    audio = speechy(1.5, seed=3)
    import soxr

    at_8k = soxr.resample(audio, RATE, 8000).astype(np.float32)
    stream = recognizer.stream(EndpointConfig(enabled=False))
    for at in range(0, len(at_8k), 333):
        stream.accept_waveform(at_8k[at : at + 333], 8000)
    stream.finish()
    assert abs(stream.frames - recognizer.features.num_frames(len(audio))) <= 2
    with pytest.raises(StreamError, match="sample rate changed"):
        stream.reset()
        stream.accept_waveform(at_8k[:100], 8000)
        stream.accept_waveform(at_8k[:100], 22050)


def test_bad_samples_are_a_typed_error_and_the_stream_goes_on():
    recognizer = make_recognizer()
    audio = speechy(1.2, seed=4)
    stream = recognizer.stream(EndpointConfig(enabled=False))
    stream.accept_waveform(audio[:8000], RATE)
    for bad in (np.array([0.1, np.nan], np.float32), np.array([np.inf], np.float32)):
        with pytest.raises(StreamError, match="NaN or inf"):
            stream.accept_waveform(bad, RATE)
    with pytest.raises(StreamError, match="one channel"):
        stream.accept_waveform(np.zeros((10, 2), np.float32), RATE)
    stream.accept_waveform(audio[8000:], RATE)
    assert stream.finish().text == offline_text(recognizer, audio)
    with pytest.raises(StreamError, match="after finish"):
        stream.accept_waveform(audio[:10], RATE)
    stream.reset()  # a new stream, from the top
    stream.accept_waveform(audio, RATE)
    assert stream.finish().text == offline_text(recognizer, audio)


def test_models_that_cannot_stream_say_why():
    with pytest.raises(ConfigError, match="bidirectional"):
        make_recognizer("bidirectional").stream()
    with pytest.raises(ConfigError, match="per utterance"):
        make_recognizer(cmvn="utterance").stream()


class LoudIsA:
    """A stand-in for the model: label 1 on loud frames, blank on quiet ones (for endpoint rules)."""

    def __init__(self, vocab: int, label: int):
        self.vocab, self.label = vocab, label
        self.reset()

    def _log_probs(self, feats: torch.Tensor) -> torch.Tensor:
        loud = feats[:, 0] > -5.0  # raw log-mel (cmvn none): digital silence sits at the floor, ~ -15.9
        out = torch.full((len(feats), self.vocab), -20.0)
        out[:, 0] = torch.where(loud, -20.0, 0.0)
        out[:, self.label] = torch.where(loud, 0.0, -20.0)
        return out

    def reset(self):
        self.pending = None

    def push(self, feats):
        self.pending = feats if self.pending is None else torch.cat([self.pending, feats])

    def drain(self, final: bool = False):
        if self.pending is None:
            return torch.zeros(0, self.vocab), None
        out, self.pending = self._log_probs(self.pending), None
        return out, None

    def finish(self):
        return self.drain(final=True)


def silence_stream(endpoint: EndpointConfig):
    recognizer = make_recognizer("unidirectional", cmvn="none")
    stream = recognizer.stream(endpoint)
    stream.encoder = LoudIsA(recognizer.tokenizer.vocab_size, recognizer.tokenizer.symbols.index("a"))
    return stream


def seconds_until_endpoint(stream, audio: np.ndarray, step: int = 160) -> float | None:
    for at in range(0, len(audio), step):
        stream.accept_waveform(audio[at : at + step], RATE)
        if stream.is_endpoint():
            return (at + step) / RATE
    return None


def test_endpoint_rules_on_synthetic_silence():
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.float32)  # 1 s
    silence = np.zeros(4 * RATE, np.float32)
    # rule 1: silence with nothing decoded ends an utterance after 2.4 s, not before
    when = seconds_until_endpoint(silence_stream(EndpointConfig()), silence)
    assert when is not None and 2.4 <= when <= 2.5
    # rule 2: after speech, 1.2 s of silence does
    stream = silence_stream(EndpointConfig())
    when = seconds_until_endpoint(stream, np.concatenate([tone, silence]))
    assert when is not None and 2.2 <= when <= 2.35
    assert stream.result().text == "a"
    # the rules are configurable: rule 2 at 0.3 s
    short = EndpointConfig(rule2=EndpointRule(True, 0.3, 0.0))
    when = seconds_until_endpoint(silence_stream(short), np.concatenate([tone, silence]))
    assert when is not None and 1.3 <= when <= 1.45
    # rule 3: an utterance that never pauses ends at its maximum length
    long = EndpointConfig(rule3=EndpointRule(False, 0.0, 2.0))
    when = seconds_until_endpoint(silence_stream(long), np.tile(tone, 4))
    assert when is not None and 2.0 <= when <= 2.1
    assert seconds_until_endpoint(silence_stream(EndpointConfig(enabled=False)), silence) is None


def test_state_is_dropped_at_every_endpoint():
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(RATE // 2) / RATE)).astype(np.float32)
    one = np.concatenate([tone, np.zeros(int(1.5 * RATE), np.float32)])
    stream = silence_stream(EndpointConfig())
    finals = []
    for _ in range(30):  # a minute of audio
        for at in range(0, len(one), 1600):
            finals += [e for e in stream.feed(one[at : at + 1600], RATE) if e.final]
        assert stream.decoder.num_frames < 2.1 / stream.frame_seconds  # no more than the utterance since its endpoint
        assert len(stream._log_probs) < 25
    assert len(finals) == 30 and {f.text for f in finals} == {"a"}
    starts = [f.start for f in finals]
    assert all(b - a == pytest.approx(2.0, abs=0.05) for a, b in zip(starts, starts[1:]))  # times run on with the stream


@pytest.mark.parametrize("direction", ["latency_controlled", "unidirectional"])
def test_where_feed_finds_endpoints_does_not_depend_on_the_chunks(direction):
    """feed asks the endpoint rules every few frames of the stream, not after each chunk: any
    chunking gives the same finals at the same times, a chunk holding two utterances included."""
    recognizer = make_recognizer(direction)
    pause = np.zeros(int(0.5 * RATE), np.float32)
    audio = np.concatenate([speechy(1.5, 1), pause, speechy(1.0, 2), pause, speechy(1.2, 3), pause])
    # a random model hears no pauses: utterances end at rule 3's 0.7 s, wherever the chunks end
    endpoint = EndpointConfig(rule3=EndpointRule(False, 0.0, 0.7))

    def finals(sizes) -> list[tuple[str, float, float]]:
        stream = recognizer.stream(endpoint)
        events, at = [], 0
        for size in sizes:
            events += stream.feed(audio[at : at + size], RATE)
            at += size
        events += stream.close()
        return [(e.text, e.start, e.end) for e in events if e.final]

    rng = np.random.default_rng(0)
    expected = finals([1600] * (len(audio) // 1600 + 1))
    assert len(expected) >= 5
    assert finals([len(audio)]) == expected  # one chunk, every endpoint in it
    assert finals(list(rng.integers(1, 9000, 200))) == expected
    assert finals([7] * (len(audio) // 7 + 1)) == expected


@pytest.fixture
def streaming_checkpoint(tmp_path):
    recognizer = make_recognizer()
    path = tmp_path / "stream.pt"
    features = recognizer.features
    save_checkpoint(
        path, model=recognizer.model, config=recognizer.config, tokenizer=recognizer.tokenizer,
        cmvn_stats={"mean": features.cmvn_mean, "var": features.cmvn_var, "frames": 1},
    )
    return path, recognizer


def run_cli(*args, stdin: bytes | None = None):
    return subprocess.run([sys.executable, "-m", "asr", "stream", *args], input=stdin, capture_output=True, timeout=300)


def test_asr_stream_on_a_file_and_on_stdin(streaming_checkpoint, tmp_path):
    path, recognizer = streaming_checkpoint
    audio = speechy(2.0, seed=5)
    expected = offline_text(recognizer, audio)
    wav = tmp_path / "a.wav"
    soundfile.write(wav, audio, RATE, subtype="FLOAT")
    done = run_cli(str(path), str(wav), "--json", "--no-endpoint")
    assert done.returncode == 0, done.stderr.decode()
    events = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert events[-1]["type"] == "final" and events[-1]["text"] == expected
    assert all(e["type"] == "partial" for e in events[:-1])
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    done = run_cli(str(path), "-", "--sample-rate", "16000", "--no-endpoint", "--json", stdin=pcm)
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout.decode().splitlines()[-1])["type"] == "final"
    done = run_cli(str(path), "-", "--no-endpoint", stdin=pcm)
    assert done.returncode == 2 and b"--sample-rate" in done.stderr


def test_asr_stream_mic_without_a_microphone_says_why(streaming_checkpoint):
    path, _ = streaming_checkpoint
    done = run_cli(str(path), "--mic", "--no-endpoint")  # no sounddevice, no PortAudio or no device here
    assert done.returncode == 2 and (b"sounddevice" in done.stderr or b"microphone" in done.stderr), done.stderr.decode()


def test_asr_stream_refuses_a_bidirectional_checkpoint(tmp_path):
    recognizer = make_recognizer("bidirectional", cmvn="none")
    path = tmp_path / "bi.pt"
    save_checkpoint(path, model=recognizer.model, config=recognizer.config, tokenizer=recognizer.tokenizer)
    wav = tmp_path / "a.wav"
    soundfile.write(wav, speechy(0.5), RATE)
    done = run_cli(str(path), str(wav))
    assert done.returncode == 2 and b"bidirectional" in done.stderr


def test_the_streaming_demo_config_streams_within_250_ms():
    from pathlib import Path

    from asr.config import load_config
    from asr.stream import algorithmic_latency, check_streamable

    config = load_config(Path(__file__).parent.parent / "configs" / "demo_streaming.yaml")
    check_streamable(config)
    features = FeatureExtractor(config.features)
    latency = algorithmic_latency(features, config.model)
    # (chunk + right context) x 30 ms frames + the 25 ms window and the two 10 ms frames stacked on it
    expected = (config.model.chunk_frames + config.model.right_context_frames) * 0.030 + 0.045
    assert latency == pytest.approx(expected) and latency <= 0.250


@pytest.mark.parametrize("cmvn", ["global", "running"])
def test_a_streaming_model_trained_by_asr_train_streams_what_it_decodes_offline(noise_corpus, tmp_path, cmvn):
    """configs/demo_streaming.yaml, shrunk: trained, loaded from its checkpoint, streamed in 30 ms
    pieces, it says what offline decoding of the same file says."""
    from asr.config import load_config
    from asr.data.manifest import read_manifest
    from asr.train import BEST, train
    from conftest import TINY_OVERRIDES

    config = load_config(
        "configs/demo_streaming.yaml",
        [*TINY_OVERRIDES, f"data.train={noise_corpus['train']}", f"data.dev={noise_corpus['dev']}", f"train.out_dir={tmp_path}",
         f"features.cmvn={cmvn}"],
    )
    recognizer = Recognizer.from_checkpoint(train(config, show_progress=False) / BEST, device="cpu")
    with torch.no_grad():
        recognizer.model.output.bias[1:] += 3.0  # a few steps teach little but blank: make it say something
    audio = soundfile.read(read_manifest(noise_corpus["dev"])[0].audio, dtype="float32")[0]
    expected = offline_text(recognizer, audio)
    assert expected
    assert stream_text(recognizer, audio, [480] * (len(audio) // 480 + 1)) == expected


def test_asr_stream_realtime_feeds_at_the_speed_of_speech(streaming_checkpoint, tmp_path):
    import time

    path, _ = streaming_checkpoint
    wav = tmp_path / "b.wav"
    soundfile.write(wav, speechy(1.5, seed=6), RATE)
    started = time.perf_counter()
    done = run_cli(str(path), str(wav), "--realtime", "--json")
    assert done.returncode == 0, done.stderr.decode()
    assert time.perf_counter() - started >= 1.5  # each chunk fed once its last sample would have been recorded
