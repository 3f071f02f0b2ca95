"""`asr serve`: the HTTP and WebSocket server (aiohttp, the optional `serve` extra).

    POST /v1/audio/transcriptions   OpenAI's upload API: multipart `file`, `response_format` (json,
                                    text, srt, vtt, verbose_json), `timestamp_granularities[]`
                                    (word, segment); any length, through the long-recording path
    GET  /v1/stream                 WebSocket: a JSON config, binary audio, JSON events back (below)
    GET  /                          the page (microphone and upload), /worklet.js its AudioWorklet
    GET  /health, /v1/models

The WebSocket protocol, sherpa-onnx's and Vosk's shape: the client's first message is a JSON
config, `{"sample_rate": 16000, "format": "pcm16" | "float32"}`; then binary messages of
little-endian samples, one channel, of any size; then `{"type": "eof"}`. The server sends
`{"type": "partial" | "final", "text", "start", "end", "words"}` (`asr stream --json`'s events,
the same results on the same audio), the last finals after the eof, and closes. Anything wrong
(a config that is not JSON, a bad rate or format, samples that are not audio, audio faster than
real time or longer than the limit, too many streams) is one `{"type": "error", "message"}` event
and a close with a WebSocket code that says whose fault it was (1003 / 1007 / 1008 the client's,
1009 a message too big, 1013 busy, 1011 ours); other clients never notice.

HTTP errors are OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with a status
that says whose fault it was: 400 (unreadable audio, a bad field), 413 (too large), 503 (busy).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from asr.serve.engine import Busy, StreamEngine, Transcriber
from asr.stream import EndpointConfig, algorithmic_latency, check_streamable
from asr.writers import format_srt, format_vtt, span_records, transcript_segments

log = logging.getLogger("asr.serve")

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
SAMPLE_FORMATS = {"pcm16": ("<i2", 2), "float32": ("<f4", 4)}  # name -> (numpy dtype, bytes a sample)
MIN_RATE, MAX_RATE = 8000, 192000  # sample rates a stream may declare, Hz
FLOAT_LIMIT = 8.0  # float32 samples beyond +-this are not audio in [-1, 1] (garbage bytes read as floats)
UPLOAD_CHUNK = 1 << 16
SERVER = web.AppKey("server", object)  # app[SERVER]: the _Server behind the routes (its engine, transcriber, limits)


@dataclass
class ServeConfig:
    """The server's limits (the `asr serve` flags)."""

    max_upload_mb: float = 200.0  # an upload larger than this: 413
    max_pending_requests: int = 8  # transcriptions queued or running; more: 503
    max_streams: int = 32  # WebSocket streams at once; more: an error event (1013)
    max_stream_seconds: float = 4 * 3600.0  # audio in one stream; past it: the last finals, an error event, close
    max_lead_seconds: float = 10.0  # how far a stream's audio may run ahead of the wall clock (faster than real time); 0: no limit
    config_timeout: float = 10.0  # s a new WebSocket may take to send its config
    idle_timeout: float = 60.0  # s a stream may go without a message
    max_message_bytes: int = 4 << 20  # one WebSocket message
    batch: bool = True  # streams' model windows batched (StreamEngine)
    step_interval: float = 0.04  # s: the stream engine steps at most this often, so windows gather into batches under load
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)


class ClientError(Exception):
    """What a client sent that the server will not take: `message` for the client, a WebSocket close code."""

    def __init__(self, message: str, code: int = WSCloseCode.POLICY_VIOLATION):
        super().__init__(message)
        self.code = code


def create_app(recognizer, config: ServeConfig | None = None, stream_recognizer=None, name: str = "asr") -> web.Application:
    """The application: uploads through `recognizer`, streams through `stream_recognizer` (default:
    `recognizer`, where its model can stream; no streaming otherwise). `name`: the model's id."""
    config = config or ServeConfig()
    server = _Server(recognizer, stream_recognizer, config, name)
    app = web.Application(client_max_size=int(config.max_upload_mb * 1e6) + (1 << 20), middlewares=[_json_errors])
    app[SERVER] = server
    app.router.add_get("/", server.page)
    app.router.add_get("/worklet.js", server.worklet)
    app.router.add_get("/health", server.health)
    app.router.add_get("/v1/models", server.models)
    app.router.add_post("/v1/audio/transcriptions", server.transcriptions)
    app.router.add_get("/v1/stream", server.stream)
    app.on_shutdown.append(server.shutdown)
    return app


def _static(name: str) -> str:
    return resources.files("asr.serve").joinpath("static", name).read_text(encoding="utf-8")


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error", code: str | None = None) -> web.Response:
    """OpenAI's error body."""
    headers = {"Retry-After": "1"} if status == 503 else None
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def _json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Every error as OpenAI's JSON: aiohttp's own (404, 405, ...) and our faults (500, logged)."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(e.status, f"{e.reason}: {request.method} {request.path}", kind="invalid_request_error" if e.status < 500 else "server_error")
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal server error (logged by the server)", kind="server_error")


class _Server:
    def __init__(self, recognizer, stream_recognizer, config: ServeConfig, name: str):
        self.recognizer, self.config, self.name = recognizer, config, name
        self.started = time.time()
        self.transcriber = Transcriber(recognizer, max_pending=config.max_pending_requests)
        stream_recognizer = stream_recognizer or recognizer
        try:
            check_streamable(stream_recognizer.config)
            self.engine: StreamEngine | None = StreamEngine(stream_recognizer, config.endpoint, batch=config.batch, step_interval=config.step_interval)
            self.stream_recognizer = stream_recognizer
            self.not_streamable = None
        except ValueError as e:  # ConfigError: a bidirectional model, or per-utterance CMVN
            self.engine, self.stream_recognizer, self.not_streamable = None, None, str(e)
        self.tmp = Path(tempfile.mkdtemp(prefix="asr-serve-"))
        self.websockets: set[web.WebSocketResponse] = set()
        self.page_html, self.worklet_js = _static("index.html"), _static("worklet.js")

    async def shutdown(self, app: web.Application) -> None:
        for ws in list(self.websockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.transcriber.stop)
        if self.engine is not None:
            await loop.run_in_executor(None, self.engine.stop)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- pages and facts -----------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=self.page_html, content_type="text/html")

    async def worklet(self, request: web.Request) -> web.Response:
        return web.Response(text=self.worklet_js, content_type="application/javascript")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({
            "status": "ok", "uptime_s": round(time.time() - self.started, 1),
            "streams": len(self.engine.sessions) if self.engine else 0, "max_streams": self.config.max_streams,
            "requests_pending": self.transcriber.pending, "requests_done": self.transcriber.done,
            "stream_backlog_s": round(self.engine.backlog(), 3) if self.engine else 0.0,
            "engine": self.engine.stats.snapshot() if self.engine else None,
        })

    async def models(self, request: web.Request) -> web.Response:
        def describe(model_id: str, recognizer, streaming: bool) -> dict:
            config = recognizer.config
            record = {
                "id": model_id, "object": "model", "created": int(self.started), "owned_by": "asr",
                "direction": config.model.direction, "unit": config.data.unit, "sample_rate": recognizer.sample_rate,
                "decoder": config.decode.decoder, "streaming": streaming,
            }
            if streaming:
                record["algorithmic_latency_s"] = round(algorithmic_latency(recognizer.features, config.model), 3)
            return record

        data = [describe(self.name, self.recognizer, self.engine is not None and self.stream_recognizer is self.recognizer)]
        if self.engine is not None and self.stream_recognizer is not self.recognizer:
            data.append(describe(f"{self.name}-stream", self.stream_recognizer, True))
        return web.json_response({"object": "list", "data": data})

    # -- POST /v1/audio/transcriptions -----------------------------------------------------------

    async def transcriptions(self, request: web.Request) -> web.Response:
        limit = int(self.config.max_upload_mb * 1e6)
        if request.content_length is not None and request.content_length > limit + (1 << 20):
            return _error(413, f"the upload is {request.content_length} bytes; this server takes files up to {self.config.max_upload_mb:g} MB", "file")
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError) as e:
            return _error(400, f"expected a multipart/form-data body with a `file` field ({e})")
        fields: dict[str, list[str]] = {}
        upload: tuple[Path, str] | None = None
        try:
            while (part := await reader.next()) is not None:
                if part.name == "file":
                    if upload is not None:
                        return _error(400, "more than one `file` field", "file")
                    upload = await self._save_upload(part, limit)
                    if upload[0] is None:
                        return _error(413, f"{upload[1]}: larger than this server's limit of {self.config.max_upload_mb:g} MB", "file")
                elif part.name:
                    fields.setdefault(part.name.removesuffix("[]"), []).append((await part.text()).strip())
            return await self._transcribe(upload, fields)
        except ValueError as e:  # a malformed multipart body
            return _error(400, f"could not read the request body: {e}")
        finally:
            if upload is not None and upload[0] is not None:
                upload[0].unlink(missing_ok=True)

    async def _save_upload(self, part, limit: int) -> tuple[Path | None, str]:
        """The upload to a temporary file (its size checked as it comes) -> (path or None when too large, its name)."""
        filename = part.filename or "upload"
        fd, name = tempfile.mkstemp(dir=self.tmp, suffix=Path(filename).suffix[:16])
        path, size = Path(name), 0
        with os.fdopen(fd, "wb") as f:
            while chunk := await part.read_chunk(UPLOAD_CHUNK):
                size += len(chunk)
                if size > limit:
                    break
                f.write(chunk)
        if size > limit:
            path.unlink(missing_ok=True)
            return None, filename
        return path, filename

    async def _transcribe(self, upload, fields: dict[str, list[str]]) -> web.Response:
        if upload is None:
            return _error(400, "no `file` field: upload the audio as multipart/form-data field `file`", "file")
        path, filename = upload
        response_format = (fields.get("response_format") or ["json"])[-1] or "json"
        if response_format not in RESPONSE_FORMATS:
            return _error(400, f"response_format {response_format!r}: choose one of {', '.join(RESPONSE_FORMATS)}", "response_format")
        granularities = [g for value in fields.get("timestamp_granularities", []) for g in value.replace(",", " ").split()] or ["segment"]
        for g in granularities:
            if g not in GRANULARITIES:
                return _error(400, f"timestamp_granularities {g!r}: choose from {', '.join(GRANULARITIES)}", "timestamp_granularities[]")
        words = response_format == "verbose_json" and "word" in granularities
        try:
            future = self.transcriber.submit(str(path), word_timestamps=words)
        except Busy as e:
            return _error(503, f"the server is busy: {e}; retry later", kind="server_error", code="busy")
        transcript = await asyncio.wrap_future(future)
        if transcript.error is not None:
            return _error(400, transcript.error.replace(str(path), filename), "file", code="unreadable_audio")
        transcript.path = filename
        for i, warning in enumerate(transcript.warnings):
            transcript.warnings[i] = warning.replace(str(path), filename)
        text = transcript.text or ""
        if response_format == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        if response_format == "srt":
            return web.Response(text=format_srt(transcript), content_type="application/x-subrip")
        if response_format == "vtt":
            return web.Response(text=format_vtt(transcript), content_type="text/vtt")
        if response_format == "json":
            return web.json_response({"text": text})
        record = {
            "task": "transcribe", "duration": round(transcript.duration, 3), "text": text,
            "segments": [{"id": i, "seek": 0, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text} for i, s in enumerate(transcript_segments(transcript))],
        }
        if words:  # OpenAI's word records (word, start, end), with the aligner's confidence
            record["words"] = [{"word": w.pop("text"), **w} for w in span_records(transcript.words or [])]
        if transcript.warnings:
            record["warnings"] = transcript.warnings
        return web.json_response(record)

    # -- GET /v1/stream ----------------------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=self.config.max_message_bytes)
        await ws.prepare(request)
        client = f"{request.remote or 'client'}:{id(ws) % 100000}"
        self.websockets.add(ws)
        try:
            await self._serve_stream(ws, client)
        except ClientError as e:
            log.info("stream %s: %s", client, e)
            await self._close(ws, e.code, str(e))
        except Exception:
            log.exception("stream %s failed", client)
            await self._close(ws, WSCloseCode.INTERNAL_ERROR, "internal server error")
        finally:
            self.websockets.discard(ws)
        return ws

    async def _close(self, ws: web.WebSocketResponse, code: int, message: str) -> None:
        if not ws.closed:
            try:
                await ws.send_json({"type": "error", "message": message, "code": code})
            except (ConnectionError, RuntimeError):
                pass
            await ws.close(code=code, message=message[:120].encode())

    async def _serve_stream(self, ws: web.WebSocketResponse, client: str) -> None:
        if self.engine is None:
            raise ClientError(f"this server's model cannot stream: {self.not_streamable}", WSCloseCode.POLICY_VIOLATION)
        self._check_capacity()  # before the config: a busy server says so at once
        rate, dtype = await self._read_config(ws)
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue = asyncio.Queue()

        def deliver(events: list[dict], done: bool) -> None:  # from the engine's thread
            loop.call_soon_threadsafe(outbox.put_nowait, (events, done))

        # and again after it: other clients may have opened streams while this one's config was
        # awaited; from here to `open` nothing awaits, so the check and the open are one step
        self._check_capacity()
        session = self.engine.open(rate, deliver, client)
        sender = asyncio.create_task(self._send_events(ws, outbox))
        try:
            ended = await self._receive_audio(ws, session, rate, dtype, sender)
            if ended == "gone":
                return
            await sender  # the last finals (after an eof or the length limit), or the engine's error
            if ended not in ("eof", "engine"):  # past the stream's length: say why it ends
                raise ClientError(ended)
            if not ws.closed:
                await ws.close()
        finally:
            self.engine.close(session)  # a gone client: its queued audio dropped, nothing more runs for it
            if not sender.done():
                sender.cancel()

    def _check_capacity(self) -> None:
        if len(self.engine.sessions) >= self.config.max_streams:
            raise ClientError(f"the server is busy: {self.config.max_streams} streams are open (its limit, --max-streams); retry later", WSCloseCode.TRY_AGAIN_LATER)

    async def _read_config(self, ws: web.WebSocketResponse) -> tuple[int, str]:
        try:
            msg = await ws.receive(timeout=self.config.config_timeout)
        except asyncio.TimeoutError:
            raise ClientError(f"no config within {self.config.config_timeout:g} s: send {{\"sample_rate\": 16000, \"format\": \"pcm16\"}} first") from None
        if msg.type != WSMsgType.TEXT:
            raise ClientError('the first message must be the JSON config, e.g. {"sample_rate": 16000, "format": "pcm16"}', WSCloseCode.UNSUPPORTED_DATA)
        try:
            config = json.loads(msg.data)
        except json.JSONDecodeError as e:
            raise ClientError(f"the config is not JSON ({e}): send e.g. {{\"sample_rate\": 16000, \"format\": \"pcm16\"}}", WSCloseCode.UNSUPPORTED_DATA) from None
        if isinstance(config, dict) and isinstance(config.get("config"), dict):  # Vosk's {"config": {...}}
            config = config["config"]
        if not isinstance(config, dict):
            raise ClientError("the config must be a JSON object with sample_rate and format", WSCloseCode.UNSUPPORTED_DATA)
        unknown = set(config) - {"type", "sample_rate", "format"}
        if unknown or config.get("type", "config") != "config":
            raise ClientError(f"unknown config {', '.join(sorted(unknown)) or 'type ' + repr(config.get('type'))}: a config holds sample_rate and format")
        rate = config.get("sample_rate", 16000)
        if isinstance(rate, float) and rate.is_integer():
            rate = int(rate)
        if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
            raise ClientError(f"sample_rate {rate!r}: an integer from {MIN_RATE} to {MAX_RATE} Hz")
        dtype = config.get("format", "pcm16")
        if dtype not in SAMPLE_FORMATS:
            raise ClientError(f"format {dtype!r}: choose one of {', '.join(SAMPLE_FORMATS)}")
        return rate, dtype

    async def _receive_audio(self, ws, session, rate: int, dtype: str, sender: asyncio.Task) -> str:
        """Client messages until the stream ends -> how: "eof" (the client's), "gone" (the client
        closed or dropped the connection), "engine" (the engine ended it: an error event went
        out), or why the server ended it (the length limit, after flushing)."""
        numpy_type, width = SAMPLE_FORMATS[dtype]
        started = time.monotonic()
        received = 0  # samples
        while True:
            receive = asyncio.ensure_future(ws.receive(timeout=self.config.idle_timeout))
            done, _ = await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:  # the engine ended the stream (an error event was sent): stop reading
                receive.cancel()
                return "engine"
            try:
                msg = receive.result()
            except asyncio.TimeoutError:
                raise ClientError(f"no message for {self.config.idle_timeout:g} s: the stream is closed") from None
            if msg.type == WSMsgType.CLOSING:  # our own close (the sender's, after the engine's error) is under way:
                return "engine"  # let it finish its handshake (aiohttp hands a pending receive CLOSING then)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED):
                return "gone"
            if msg.type == WSMsgType.ERROR:
                raise ClientError(f"bad message: {ws.exception()}", WSCloseCode.MESSAGE_TOO_BIG if "too big" in str(ws.exception()) else WSCloseCode.PROTOCOL_ERROR)
            if msg.type == WSMsgType.TEXT:
                self._control(msg.data)
                self.engine.finish(session)
                return "eof"
            data = msg.data
            if len(data) % width:
                raise ClientError(f"a binary message of {len(data)} bytes is not whole {dtype} samples ({width} bytes each)", WSCloseCode.INVALID_TEXT)
            samples = np.frombuffer(data, numpy_type)
            samples = samples.astype(np.float32) / 32768.0 if dtype == "pcm16" else samples.astype(np.float32)
            if dtype == "float32" and not (np.isfinite(samples).all() and np.abs(samples).max(initial=0.0) <= FLOAT_LIMIT):
                raise ClientError(f"a binary message holds values that are not float32 audio in [-1, 1] (NaN, inf or beyond +-{FLOAT_LIMIT:g})", WSCloseCode.INVALID_TEXT)
            received += len(samples)
            heard = received / rate
            lead = heard - (time.monotonic() - started)
            if self.config.max_lead_seconds > 0 and lead > self.config.max_lead_seconds:
                raise ClientError(
                    f"audio faster than real time: {heard:.1f} s of audio in {heard - lead:.1f} s, more than "
                    f"{self.config.max_lead_seconds:g} s ahead of the clock (the server's limit, --max-lead-seconds)"
                )
            if heard > self.config.max_stream_seconds:
                keep = len(samples) - math.ceil((heard - self.config.max_stream_seconds) * rate)
                self.engine.submit(session, samples[: max(keep, 0)])
                self.engine.finish(session)
                return f"the stream reached the server's limit of {self.config.max_stream_seconds:g} s of audio (--max-stream-minutes)"
            if len(samples):
                self.engine.submit(session, samples)

    @staticmethod
    def _control(text: str) -> None:
        """A text message after the config: only the end of audio, {"type": "eof"} (or Vosk's {"eof": 1})."""
        try:
            message = json.loads(text)
        except json.JSONDecodeError:
            raise ClientError(f"a text message that is not JSON: {text[:60]!r}; send audio as binary messages and {{\"type\": \"eof\"}} at the end", WSCloseCode.UNSUPPORTED_DATA) from None
        if not (isinstance(message, dict) and (message.get("type") == "eof" or message.get("eof"))):
            raise ClientError(f"unknown message {text[:60]!r}: after the config, send binary audio and {{\"type\": \"eof\"}}", WSCloseCode.UNSUPPORTED_DATA)

    @staticmethod
    async def _send_events(ws: web.WebSocketResponse, outbox: asyncio.Queue) -> None:
        """The engine's events to the client, until the session is done."""
        while True:
            events, done = await outbox.get()
            for event in events:
                if ws.closed:
                    return
                await ws.send_json(event)
            if done:
                if events and events[-1]["type"] == "error":
                    await ws.close(code=events[-1].get("code", WSCloseCode.INTERNAL_ERROR))
                return


async def _serve(app: web.Application, host: str, port: int, ready) -> None:
    runner = web.AppRunner(app, access_log=log)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    ready(runner.addresses)
    try:
        await asyncio.Event().wait()  # until cancelled (Ctrl-C)
    finally:
        await runner.cleanup()


def run_server(app: web.Application, host: str = "127.0.0.1", port: int = 8000, ready=None) -> None:
    """Serve `app` until interrupted; `ready(addresses)` once it listens (port 0: a free one)."""
    try:
        asyncio.run(_serve(app, host, port, ready or (lambda addresses: None)))
    except KeyboardInterrupt:
        pass
