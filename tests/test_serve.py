"""`asr serve`: uploads with a real HTTP client (requests), streams with the `websockets` client,
each limit and each kind of bad input, with other clients going on undisturbed."""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
import soundfile
import srt
import webvtt
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from asr.checkpoint import save_checkpoint
from asr.inference import Recognizer
from asr.models.encoder import EncoderStream
from asr.serve import ServeConfig
from asr.stream import EndpointConfig, EndpointRule
from serve_helpers import RunningServer
from test_stream import RATE, make_recognizer, speechy

# the random test model hears no pauses: utterances end at rule 3, so a stream has several finals
ENDPOINT = EndpointConfig(rule3=EndpointRule(False, 0.0, 1.0))


def wav_bytes(audio: np.ndarray, rate: int = RATE, format: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format=format, subtype=subtype)
    return buffer.getvalue()


def as_pcm16(audio: np.ndarray) -> np.ndarray:
    """What 16-bit PCM keeps of float audio."""
    return np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int16)


def stream_events(url: str, config, messages, eof: bool = True, timeout: float = 60) -> tuple[list[dict], int | None]:
    """Send a config (a dict, or a raw string), then messages (bytes or str), then the eof;
    -> the server's events and its close code."""
    events = []
    with connect(url, open_timeout=timeout, close_timeout=timeout) as ws:
        try:
            ws.send(config if isinstance(config, (str, bytes)) else json.dumps(config))
            for message in messages:
                ws.send(message)
            if eof:
                ws.send(json.dumps({"type": "eof"}))
        except ConnectionClosed:  # the server ended the stream: what it sent before is still to read
            pass
        try:
            while True:
                events.append(json.loads(ws.recv(timeout=timeout)))
        except ConnectionClosed:
            pass
        return events, ws.close_code


def random_pieces(data: np.ndarray, seed: int, largest: int = 6000) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    pieces, at = [], 0
    while at < len(data):
        size = int(rng.integers(1, largest))
        pieces.append(data[at : at + size])
        at += size
    return pieces


def local_finals(recognizer, audio: np.ndarray, rate: int = RATE, endpoint: EndpointConfig = ENDPOINT) -> list[dict]:
    """What `asr stream` says of the audio: the library's stream, fed 100 ms at a time."""
    stream = recognizer.stream(endpoint)
    events = []
    step = rate // 10
    for at in range(0, len(audio), step):
        events += stream.feed(audio[at : at + step], rate)
    events += stream.close()
    return [e.event() for e in events if e.final]


@pytest.fixture(scope="module")
def recognizer():
    return make_recognizer()


@pytest.fixture(scope="module")
def server(recognizer):
    with RunningServer(recognizer, ServeConfig(endpoint=ENDPOINT)) as running:
        yield running


# -- HTTP ------------------------------------------------------------------------------------------


def post(server, data: bytes, filename: str = "a.wav", **fields):
    form = [(k.replace("__", "[]"), v) for k, values in fields.items() for v in (values if isinstance(values, list) else [values])]
    return requests.post(f"{server.url}/v1/audio/transcriptions", files={"file": (filename, data)}, data=form, timeout=120)


def test_uploads_in_every_response_format_say_what_transcribe_says(server, recognizer, tmp_path):
    audio = speechy(3.0, seed=11)
    path = tmp_path / "a.wav"
    soundfile.write(path, audio, RATE)
    expected = next(recognizer.transcribe_files([path]))
    expected_words = next(recognizer.transcribe_files([path], word_timestamps=True))
    assert expected.text
    data = path.read_bytes()
    answer = post(server, data, model="whisper-1")  # json by default; any model name is taken
    assert answer.status_code == 200 and answer.json() == {"text": expected.text}
    answer = post(server, data, response_format="text")
    assert answer.status_code == 200 and answer.text == expected.text + "\n"
    cues = list(srt.parse(post(server, data, response_format="srt").text))
    assert " ".join(c.content.replace("\n", " ") for c in cues) == expected.text
    assert cues[0].start.total_seconds() >= 0 and cues[-1].end.total_seconds() <= 3.0 + 1e-3
    vtt = webvtt.from_buffer(io.StringIO(post(server, data, response_format="vtt").text))
    assert " ".join(c.text.replace("\n", " ") for c in vtt) == expected.text
    verbose = post(server, data, response_format="verbose_json", timestamp_granularities__=["word", "segment"]).json()
    assert verbose["text"] == expected.text and verbose["duration"] == pytest.approx(3.0, abs=1e-3)
    assert " ".join(s["text"] for s in verbose["segments"]) == expected.text
    assert [w["word"] for w in verbose["words"]] == [w.text for w in expected_words.words]
    assert [w["start"] for w in verbose["words"]] == pytest.approx([w.start for w in expected_words.words], abs=1e-3)
    assert "words" not in post(server, data, response_format="verbose_json").json()  # segments only, unless asked


def test_a_long_upload_in_another_format_goes_through_the_long_recording_path(server, recognizer, tmp_path):
    pause = np.zeros(RATE, np.float32)
    audio = np.concatenate([np.concatenate([speechy(4.0, seed), pause]) for seed in range(6)])  # 30 s, past max_segment
    path = tmp_path / "long.flac"
    soundfile.write(path, audio, RATE, format="FLAC")
    expected = next(recognizer.transcribe_files([path]))
    verbose = post(server, path.read_bytes(), "long.flac", response_format="verbose_json").json()
    assert verbose["text"] == expected.text
    assert [(s["start"], s["end"]) for s in verbose["segments"]] == [(round(s.start, 3), round(s.end, 3)) for s in expected.segments if s.text]
    assert verbose["duration"] == pytest.approx(30.0, abs=1e-3)


def test_bad_uploads_are_400_with_the_reason(server):
    answer = post(server, b"\x00\x01 not audio at all" * 50, "notes.wav")
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "notes.wav" in error["message"] and error["param"] == "file" and error["code"] == "unreadable_audio"
    assert "asr-serve-" not in error["message"]  # the client's name, not the server's temporary file
    for fields, param in (({"response_format": "mp3"}, "response_format"), ({"timestamp_granularities__": "sentence"}, "timestamp_granularities[]")):
        answer = post(server, wav_bytes(speechy(0.5)), **fields)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param
    answer = requests.post(f"{server.url}/v1/audio/transcriptions", data={"response_format": "json"}, files={"other": ("x", b"1")}, timeout=30)
    assert answer.status_code == 400 and "file" in answer.json()["error"]["message"]
    answer = requests.post(f"{server.url}/v1/audio/transcriptions", data=b"raw bytes", headers={"Content-Type": "audio/wav"}, timeout=30)
    assert answer.status_code == 400 and "multipart" in answer.json()["error"]["message"]
    answer = requests.get(f"{server.url}/v1/audio/transcriptions", timeout=30)
    assert answer.status_code == 405 and "GET" in answer.json()["error"]["message"]
    answer = requests.get(f"{server.url}/v1/nothing", timeout=30)
    assert answer.status_code == 404 and answer.json()["error"]["type"] == "invalid_request_error"
    assert post(server, wav_bytes(speechy(0.5))).status_code == 200  # and the server goes on


def test_an_upload_past_the_limit_is_413(recognizer):
    with RunningServer(recognizer, ServeConfig(max_upload_mb=0.05)) as server:
        big = wav_bytes(speechy(3.0))  # 96 kB > 50 kB
        answer = post(server, big, "big.wav")
        assert answer.status_code == 413 and "big.wav" in answer.json()["error"]["message"]
        # a chunked upload that says no length is cut off as it comes
        body = b"".join([b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.wav\"\r\n\r\n", big, b"\r\n--b--\r\n"])
        answer = requests.post(f"{server.url}/v1/audio/transcriptions", data=iter([body[i : i + 8192] for i in range(0, len(body), 8192)]),
                               headers={"Content-Type": "multipart/form-data; boundary=b"}, timeout=30)
        assert answer.status_code == 413
        assert post(server, wav_bytes(speechy(0.5))).status_code == 200
        assert not list(server.server.tmp.iterdir())  # no upload left behind


def test_a_busy_server_answers_503_and_keeps_serving(recognizer):
    with RunningServer(recognizer, ServeConfig(max_pending_requests=1)) as server:
        release = threading.Event()
        transcribe = recognizer.transcribe_files

        def held(*args, **kwargs):
            release.wait(timeout=60)
            return transcribe(*args, **kwargs)

        server.server.transcriber.recognizer = type("Held", (), {"transcribe_files": staticmethod(held)})()
        first = {}
        worker = threading.Thread(target=lambda: first.setdefault("answer", post(server, wav_bytes(speechy(1.0)))))
        worker.start()
        for _ in range(100):  # until the first request is inside the model
            if requests.get(f"{server.url}/health", timeout=10).json()["requests_pending"] == 1:
                break
            time.sleep(0.05)
        # the event loop answers while a transcription runs: the model never blocks it
        health = requests.get(f"{server.url}/health", timeout=10).json()
        assert health["requests_pending"] == 1 and health["requests_done"] == 0
        busy = post(server, wav_bytes(speechy(1.0)))
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "busy" and busy.headers["Retry-After"]
        release.set()
        worker.join(timeout=60)
        assert first["answer"].status_code == 200 and first["answer"].json()["text"]
        assert post(server, wav_bytes(speechy(1.0))).status_code == 200
        # a fault of the server's own is a JSON 500, and the next request is served
        def broken(*args, **kwargs):
            raise RuntimeError("a bug")

        server.server.transcriber.recognizer = type("Broken", (), {"transcribe_files": staticmethod(broken)})()
        answer = post(server, wav_bytes(speechy(1.0)))
        assert answer.status_code == 500 and answer.json()["error"]["type"] == "server_error"
        server.server.transcriber.recognizer = recognizer
        assert post(server, wav_bytes(speechy(1.0))).status_code == 200


def test_health_models_and_the_page(server):
    health = requests.get(f"{server.url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["streams"] == 0
    models = requests.get(f"{server.url}/v1/models", timeout=10).json()
    (model,) = models["data"]
    assert model["id"] == "test-model" and model["streaming"] and model["direction"] == "latency_controlled"
    assert model["algorithmic_latency_s"] > 0
    page = requests.get(server.url, timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert not re.search(r"""(src|href)=["']https?://""", page.text)  # no external assets: the server may be offline
    worklet = requests.get(f"{server.url}/worklet.js", timeout=10)
    assert worklet.status_code == 200 and "registerProcessor" in worklet.text


# -- WebSocket -------------------------------------------------------------------------------------


def test_a_stream_in_random_frame_sizes_says_what_asr_stream_says(server, recognizer, tmp_path):
    audio = speechy(4.0, seed=21)
    pcm = as_pcm16(audio)
    expected = local_finals(recognizer, pcm.astype(np.float32) / 32768)
    assert len(expected) >= 3
    for seed in range(3):
        events, code = stream_events(server.ws_url, {"sample_rate": RATE, "format": "pcm16"}, [p.tobytes() for p in random_pieces(pcm, seed)])
        assert code == 1000
        assert [e for e in events if e["type"] == "final"] == expected
        assert {e["type"] for e in events} <= {"partial", "final"}
    # float32 frames of the same samples say the same
    floats = pcm.astype(np.float32) / 32768
    events, _ = stream_events(server.ws_url, {"sample_rate": RATE, "format": "float32"}, [p.tobytes() for p in random_pieces(floats, 7)])
    assert [e for e in events if e["type"] == "final"] == expected


def test_the_server_says_what_the_asr_stream_command_says(recognizer, tmp_path):
    path = tmp_path / "stream.pt"
    features = recognizer.features
    save_checkpoint(path, model=recognizer.model, config=recognizer.config, tokenizer=recognizer.tokenizer,
                    cmvn_stats={"mean": features.cmvn_mean, "var": features.cmvn_var, "frames": 1})
    audio = as_pcm16(speechy(3.5, seed=31))
    wav = tmp_path / "a.wav"
    soundfile.write(wav, audio, RATE, subtype="PCM_16")
    done = subprocess.run([sys.executable, "-m", "asr", "stream", str(path), str(wav), "--json", "--rule3-min-utterance-length", "1.0"],
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    expected = [json.loads(line) for line in done.stdout.decode().splitlines() if json.loads(line)["type"] == "final"]
    assert len(expected) >= 2
    with RunningServer(Recognizer.from_checkpoint(path), ServeConfig(endpoint=ENDPOINT)) as server:
        events, code = stream_events(server.ws_url, {"sample_rate": RATE}, [p.tobytes() for p in random_pieces(audio, 3, largest=3000)])
    assert code == 1000 and [e for e in events if e["type"] == "final"] == expected


def test_another_sample_rate_is_resampled(server, recognizer):
    rate = 8000
    audio = as_pcm16(speechy(3.0, seed=41)[::2])
    expected = local_finals(recognizer, audio.astype(np.float32) / 32768, rate)
    events, code = stream_events(server.ws_url, {"sample_rate": rate, "format": "pcm16"}, [p.tobytes() for p in random_pieces(audio, 1, 3000)])
    assert code == 1000 and [e for e in events if e["type"] == "final"] == expected


def test_concurrent_streams_are_batched_and_each_says_what_it_says_alone(recognizer):
    audios = [as_pcm16(speechy(3.0, seed=50 + i)) for i in range(6)]
    alone = [local_finals(recognizer, a.astype(np.float32) / 32768) for a in audios]
    with RunningServer(recognizer, ServeConfig(endpoint=ENDPOINT, max_lead_seconds=0)) as server:
        results = [None] * len(audios)

        def client(i: int) -> None:
            results[i] = stream_events(server.ws_url, {"sample_rate": RATE}, [p.tobytes() for p in random_pieces(audios[i], i, 2000)])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(audios))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        stats = requests.get(f"{server.url}/health", timeout=10).json()["engine"]
    for (events, code), expected in zip(results, alone):
        assert code == 1000
        finals = [e for e in events if e["type"] == "final"]
        assert [e["text"] for e in finals] == [e["text"] for e in expected]  # batched values differ from single ones by ~1e-6
        assert [e["start"] for e in finals] == pytest.approx([e["start"] for e in expected], abs=0.031)
    assert stats["mean_batch"] > 1.0 and stats["errors"] == 0  # the streams' windows ran together


BAD_STREAMS = [
    ("not json", "sample_rate=16000", [], 1003, "not JSON"),
    ("audio first", b"\x00\x00" * 100, [], 1003, "first message must be the JSON config"),
    ("rate zero", {"sample_rate": 0}, [], 1008, "sample_rate"),
    ("rate text", {"sample_rate": "16k"}, [], 1008, "sample_rate"),
    ("rate absurd", {"sample_rate": 10**9}, [], 1008, "sample_rate"),
    ("format", {"sample_rate": 16000, "format": "mp3"}, [], 1008, "format"),
    ("unknown key", {"sample_rate": 16000, "lang": "en"}, [], 1008, "lang"),
    ("odd bytes", {"sample_rate": 16000}, [b"\x01\x02\x03"], 1007, "not whole pcm16 samples"),
    ("nan floats", {"sample_rate": 16000, "format": "float32"}, [np.full(400, np.nan, np.float32).tobytes()], 1007, "not float32 audio"),
    ("garbage floats", {"sample_rate": 16000, "format": "float32"}, [np.random.default_rng(0).bytes(4000)], 1007, "not float32 audio"),
    ("text not json", {"sample_rate": 16000}, ["hello"], 1003, "not JSON"),
    ("unknown message", {"sample_rate": 16000}, [json.dumps({"type": "pause"})], 1003, "unknown message"),
]


@pytest.mark.parametrize("name,config,messages,code,message", BAD_STREAMS, ids=[b[0] for b in BAD_STREAMS])
def test_bad_streams_get_an_error_event_and_a_close_while_another_client_goes_on(server, recognizer, name, config, messages, code, message):
    good = as_pcm16(speechy(2.0, seed=61))
    expected = local_finals(recognizer, good.astype(np.float32) / 32768)
    result = {}
    other = threading.Thread(target=lambda: result.setdefault("events", stream_events(server.ws_url, {"sample_rate": RATE}, [p.tobytes() for p in random_pieces(good, 2, 800)])))
    other.start()
    events, close_code = stream_events(server.ws_url, config, [m if isinstance(m, (str, bytes)) else m for m in messages], eof=False)
    other.join(timeout=60)
    assert events[-1]["type"] == "error" and message in events[-1]["message"] and close_code == code
    other_events, other_code = result["events"]
    assert other_code == 1000 and [e for e in other_events if e["type"] == "final"] == expected


def wait_for_streams(server, count: int) -> int:
    for _ in range(200):
        streams = requests.get(f"{server.url}/health", timeout=10).json()["streams"]
        if streams == count:
            return streams
        time.sleep(0.05)
    return streams


def test_stream_limits_each_end_with_a_clear_error(recognizer):
    config = ServeConfig(endpoint=ENDPOINT, max_streams=1, max_lead_seconds=2.0, max_stream_seconds=2.5, max_message_bytes=64000)
    with RunningServer(recognizer, config) as server:
        # faster than real time: 5 s of audio at once, more than 2 s ahead of the clock
        events, code = stream_events(server.ws_url, {"sample_rate": RATE}, [as_pcm16(speechy(1.0, s)).tobytes() for s in range(5)], eof=False)
        assert events[-1]["type"] == "error" and "faster than real time" in events[-1]["message"] and code == 1008
        # a message larger than the limit
        events, code = stream_events(server.ws_url, {"sample_rate": RATE}, [bytes(100000)], eof=False)
        assert code == 1009
        # too many streams: the second is refused with "try again later" while the first goes on
        with connect(server.ws_url) as first:
            first.send(json.dumps({"sample_rate": RATE}))
            assert wait_for_streams(server, 1) == 1
            events, code = stream_events(server.ws_url, {"sample_rate": RATE}, [], eof=False)
            assert events[-1]["type"] == "error" and "busy" in events[-1]["message"] and code == 1013
            first.send(as_pcm16(speechy(0.5)).tobytes())
            first.send(json.dumps({"type": "eof"}))
            while True:
                try:
                    first.recv(timeout=30)
                except ConnectionClosed:
                    break
            assert first.close_code == 1000
        # the stream's length: 3 s paced into a 2.5 s limit: the finals of what it took, then the error
        audio = as_pcm16(speechy(3.0, seed=3))
        limited = local_finals(recognizer, audio[: int(2.5 * RATE)].astype(np.float32) / 32768)
        events = []
        with connect(server.ws_url) as ws:
            ws.send(json.dumps({"sample_rate": RATE}))
            try:
                for piece in np.array_split(audio, 12):
                    ws.send(piece.tobytes())
                    time.sleep(0.2)  # under the lead limit
            except ConnectionClosed:  # the server ended the stream: what it sent before is still to read
                pass
            try:
                while True:
                    events.append(json.loads(ws.recv(timeout=30)))
            except ConnectionClosed:
                code = ws.close_code
        assert code == 1008 and events[-1]["type"] == "error" and "limit" in events[-1]["message"]
        assert [e for e in events if e["type"] == "final"] == limited


def test_clients_that_connect_together_do_not_pass_the_stream_limit(recognizer):
    """The limit is checked again once a client's config is in (while configs were awaited,
    others may have opened streams): of five clients connected at once, two stream."""
    with RunningServer(recognizer, ServeConfig(endpoint=ENDPOINT, max_streams=2)) as server:
        with contextlib.ExitStack() as stack:
            sockets = [stack.enter_context(connect(server.ws_url)) for _ in range(5)]
            for ws in sockets:
                ws.send(json.dumps({"sample_rate": RATE}))
            refused = []
            for ws in sockets:
                try:
                    event = json.loads(ws.recv(timeout=2))
                    refused.append(event["type"] == "error" and "busy" in event["message"])
                except TimeoutError:  # nothing to say yet: a stream waiting for audio
                    refused.append(False)
            assert sum(refused) == 3 and wait_for_streams(server, 2) == 2
        assert wait_for_streams(server, 0) == 0


def test_a_client_that_vanishes_leaves_nothing_running(recognizer):
    with RunningServer(recognizer, ServeConfig(endpoint=ENDPOINT, max_lead_seconds=0)) as server:
        engine = server.server.engine
        with connect(server.ws_url) as ws:
            ws.send(json.dumps({"sample_rate": RATE}))
            for piece in random_pieces(as_pcm16(speechy(6.0, seed=71)), 0):
                ws.send(piece.tobytes())
            assert wait_for_streams(server, 1) == 1
            ws.socket.shutdown(socket.SHUT_RDWR)  # gone mid-stream, without a close handshake
            assert wait_for_streams(server, 0) == 0
        assert engine.backlog() == 0.0 and not engine._waiting  # its queued audio dropped
        # the server serves the next client as ever
        good = as_pcm16(speechy(2.0, seed=72))
        events, code = stream_events(server.ws_url, {"sample_rate": RATE}, [good.tobytes()])
        assert code == 1000 and [e for e in events if e["type"] == "final"] == local_finals(recognizer, good.astype(np.float32) / 32768)


def test_a_stream_that_fails_inside_the_engine_is_told_and_the_others_go_on(recognizer, monkeypatch):
    """A fault while running one stream (here: its features raise) ends that stream with a 1011
    error event; a batched model step that fails is rerun stream by stream from where it was."""
    audios = [as_pcm16(speechy(2.5, seed=80 + i)) for i in range(3)]
    alone = [local_finals(recognizer, a.astype(np.float32) / 32768) for a in audios]
    run_batch = EncoderStream.run_batch

    def fails_in_batches(streams, batch_sizes=None):
        if len(streams) > 1:
            raise RuntimeError("a batched step that fails")
        return run_batch(streams, batch_sizes)

    monkeypatch.setattr(EncoderStream, "run_batch", staticmethod(fails_in_batches))
    with RunningServer(recognizer, ServeConfig(endpoint=ENDPOINT, max_lead_seconds=0)) as server:
        engine = server.server.engine
        opened, count = engine.open, []

        def open_one_broken(*args, **kwargs):
            session = opened(*args, **kwargs)
            count.append(session)
            if len(count) == 1:  # the first client's stream breaks at its first audio
                session.stream.push = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug in a stream"))
            return session

        engine.open = open_one_broken
        results = [None] * 4

        def client(i: int) -> None:
            audio = audios[max(i - 1, 0)]
            # the broken stream's audio in one message: while a client is still sending fast when
            # the server closes, the websockets sync client now and then drops the error event
            # that came before the close frame (1 first connection in 40; the 1011 still arrives)
            pieces = [audio] if i == 0 else random_pieces(audio, i, 1500)
            results[i] = stream_events(server.ws_url, {"sample_rate": RATE}, [p.tobytes() for p in pieces])

        broken = threading.Thread(target=client, args=(0,))
        broken.start()
        assert wait_for_streams(server, 1) >= 0
        broken.join(timeout=60)
        threads = [threading.Thread(target=client, args=(i,)) for i in (1, 2, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    events, code = results[0]
    assert code == 1011 and events[-1]["type"] == "error" and "a bug in a stream" in events[-1]["message"]
    for (events, code), expected in zip(results[1:], alone):
        assert code == 1000 and [e for e in events if e["type"] == "final"] == expected  # one by one: bit for bit


def test_a_model_that_cannot_stream_still_serves_uploads(tmp_path):
    recognizer = make_recognizer("bidirectional", cmvn="utterance")
    with RunningServer(recognizer) as server:
        events, code = stream_events(server.ws_url, {"sample_rate": RATE}, [])
        assert events[-1]["type"] == "error" and "cannot stream" in events[-1]["message"] and code == 1008
        assert not requests.get(f"{server.url}/v1/models", timeout=10).json()["data"][0]["streaming"]
        assert post(server, wav_bytes(speechy(1.0))).status_code == 200


def test_an_offline_model_for_uploads_beside_a_streaming_one(recognizer, tmp_path):
    """--stream-checkpoint: uploads through the (bidirectional) first model, streams through the second."""
    offline = make_recognizer("bidirectional", cmvn="utterance")
    path = tmp_path / "a.wav"
    soundfile.write(path, speechy(2.0, seed=90), RATE)
    audio = as_pcm16(speechy(2.5, seed=91))
    with RunningServer(offline, ServeConfig(endpoint=ENDPOINT), stream_recognizer=recognizer) as server:
        answer = post(server, path.read_bytes())
        events, code = stream_events(server.ws_url, {"sample_rate": RATE}, [audio.tobytes()])
        models = requests.get(f"{server.url}/v1/models", timeout=10).json()["data"]
    assert answer.status_code == 200 and answer.json()["text"] == next(offline.transcribe_files([path])).text
    assert code == 1000 and [e for e in events if e["type"] == "final"] == local_finals(recognizer, audio.astype(np.float32) / 32768)
    assert [(m["id"], m["direction"], m["streaming"]) for m in models] == [
        ("test-model", "bidirectional", False), ("test-model-stream", "latency_controlled", True)]


def test_asr_serve_binds_to_loopback_and_serves(recognizer, tmp_path):
    path = tmp_path / "m.pt"
    features = recognizer.features
    save_checkpoint(path, model=recognizer.model, config=recognizer.config, tokenizer=recognizer.tokenizer,
                    cmvn_stats={"mean": features.cmvn_mean, "var": features.cmvn_var, "frames": 1})
    process = subprocess.Popen([sys.executable, "-m", "asr", "serve", str(path), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        match = re.match(r"asr serve: listening on http://127\.0\.0\.1:(\d+)", line)
        assert match, line + process.stderr.read() if process.poll() is not None else line
        url = f"http://127.0.0.1:{match.group(1)}"
        assert requests.get(f"{url}/health", timeout=10).json()["status"] == "ok"
        assert requests.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(speechy(1.0)))}, timeout=60).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    bad = subprocess.run([sys.executable, "-m", "asr", "serve", str(path), "--max-streams", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--max-streams" in bad.stderr
