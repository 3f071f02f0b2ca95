"""The server's two workers, each a thread of its own, so that no model call blocks the event
loop that talks to the clients:

    StreamEngine  every WebSocket stream's recognition. The event loop only queues each client's
                  audio; the engine's thread takes what every stream has queued, runs their
                  features, then their model windows together (`EncoderStream.run_batch`: one
                  call of the stack for all the streams with a window ready), then each
                  stream's decoder and endpoint rules (`Stream.events`), and hands the events
                  back. A stream's results are the ones `asr stream` gives on the same audio.
    Transcriber   uploads: each request's file through `Recognizer.transcribe_files` (the
                  long-recording path), the requests that wait together in one call, which
                  batches their segments.

Both hand results back through callbacks / futures and never touch the event loop themselves.
Torch ops and the numba decoders release the GIL, so on two cores the two threads run side by side.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import numpy as np

from asr.models.encoder import EncoderStream
from asr.stream import EndpointConfig, Stream

log = logging.getLogger("asr.serve")

# what the engine hands a session's owner: the events (JSON-ready dicts) and whether the
# session is over (after its eof, or an error: then the last event is {"type": "error",
# "message", "code"}, code the WebSocket close code that follows)
Deliver = Callable[[list[dict], bool], None]


class Busy(RuntimeError):
    """The server holds as much work of this kind as it was told to take: try again later."""


class _Worker:
    """A thread that sleeps on a condition until there is work or `stop()`; the subclass's
    `_loop` takes the work under `_lock` (`_wait_for_work`) and does it outside it."""

    def __init__(self, name: str):
        self._lock = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def _loop(self) -> None:
        raise NotImplementedError

    def _wait_for_work(self, has_work: Callable[[], object]) -> bool:
        """Holding `_lock`: sleep until `has_work()` or `stop()` -> False when stopping."""
        while not has_work() and not self._stopping:
            self._lock.wait()
        return not self._stopping

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._thread.join(timeout=10)


class EngineSession:
    """One client's stream inside the engine: its `Stream`, the audio queued for the engine's next
    step, and where its events go. Made by `StreamEngine.open`; `client` names it in logs and errors."""

    def __init__(self, stream: Stream, sample_rate: int, deliver: Deliver, client: str):
        self.stream, self.sample_rate, self.deliver, self.client = stream, sample_rate, deliver, client
        self.queued: list[np.ndarray] = []  # audio not yet taken by the engine (guarded by its lock)
        self.eof = False  # the client is done: flush and end after the queued audio
        self.closed = False  # gone (or ended): the engine drops it


@dataclass
class EngineStats:
    """What the engine has done since it started (read by /health and scripts/bench_serve.py)."""

    steps: int = 0  # rounds of the loop
    model_calls: int = 0  # calls of the stack (a batch each)
    windows: int = 0  # streams' windows run in them
    busy_seconds: float = 0.0  # time spent working
    errors: int = 0

    def snapshot(self) -> dict:
        return {
            "steps": self.steps, "model_calls": self.model_calls, "windows": self.windows, "errors": self.errors,
            "busy_seconds": round(self.busy_seconds, 3), "mean_batch": round(self.windows / self.model_calls, 2) if self.model_calls else 0.0,
        }


class StreamEngine(_Worker):
    """Runs every open stream of one streaming `Recognizer` on one thread (see the module docstring).
    `batch=False` runs each stream's windows alone (for comparison: scripts/bench_serve.py)."""

    def __init__(self, recognizer, endpoint: EndpointConfig | None = None, batch: bool = True, step_interval: float = 0.04):
        super().__init__("asr-stream-engine")
        self.recognizer = recognizer
        self.endpoint = endpoint or EndpointConfig()
        self.batch = batch
        # at most one step per `step_interval` s: under load, the streams' windows that arrive
        # meanwhile gather into one batch (each waits at most this long); a lone stream, whose
        # chunks come further apart, never waits
        self.step_interval = step_interval
        self._last_step = 0.0
        self.stats = EngineStats()
        self.sessions: set[EngineSession] = set()
        self._waiting: dict[EngineSession, None] = {}  # sessions with queued work, in arrival order
        self._thread.start()

    # -- called from the event loop ----------------------------------------------------------------

    def open(self, sample_rate: int, deliver: Deliver, client: str = "client") -> EngineSession:
        session = EngineSession(self.recognizer.stream(self.endpoint), sample_rate, deliver, client)
        with self._lock:
            self.sessions.add(session)
        return session

    def submit(self, session: EngineSession, samples: np.ndarray) -> None:
        """Queue the next samples (float32 at the session's rate)."""
        with self._lock:
            if session.closed or session.eof:
                return
            session.queued.append(samples)
            self._waiting[session] = None
            self._lock.notify()

    def finish(self, session: EngineSession) -> None:
        """The client's end of audio: the engine flushes the stream, delivers its last finals, and ends it."""
        with self._lock:
            if session.closed or session.eof:
                return
            session.eof = True
            self._waiting[session] = None
            self._lock.notify()

    def close(self, session: EngineSession) -> None:
        """The client is gone (or the session ended): its queued work is dropped, nothing more runs for it."""
        with self._lock:
            session.closed = True
            session.queued.clear()
            self.sessions.discard(session)
            self._waiting.pop(session, None)

    def backlog(self) -> float:
        """Seconds of audio queued and not yet taken, summed over the streams."""
        with self._lock:
            return sum(sum(len(a) for a in s.queued) / s.sample_rate for s in self._waiting)

    # -- the engine's thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._wait_for_work(lambda: self._waiting):
                    return
                while not self._stopping and (wait := self._last_step + self.step_interval - time.perf_counter()) > 0:
                    self._lock.wait(wait)  # submissions go on meanwhile
                if self._stopping:
                    return
                work = []
                for session in self._waiting:
                    work.append((session, session.queued, session.eof))
                    session.queued = []
                self._waiting.clear()
            started = self._last_step = time.perf_counter()
            try:
                self._step(work)
            except Exception:  # a bug, not a client's input: every session in the step is told, the engine goes on
                log.exception("stream engine step failed")
                for session, _, _ in work:
                    self._fail(session, "internal error in the stream engine")
            self.stats.steps += 1
            self.stats.busy_seconds += time.perf_counter() - started

    def _step(self, work: list[tuple[EngineSession, list[np.ndarray], bool]]) -> None:
        live = []
        for session, audio, eof in work:
            if session.closed:
                continue
            try:
                if audio:
                    session.stream.push(np.concatenate(audio) if len(audio) > 1 else audio[0], session.sample_rate)
                live.append((session, eof))
            except Exception as e:  # StreamError (the client's samples) or worse: this session only
                self._fail(session, str(e), exc=e)
        outputs = self._run_model([session for session, _ in live])
        for (session, eof), output in zip(live, outputs):
            if output is None or session.closed:
                continue
            try:
                events = session.stream.events(*output)
                if eof:
                    events += session.stream.close()
                self._deliver(session, [e.event() for e in events], done=eof)
            except Exception as e:
                self._fail(session, str(e), exc=e)

    def _run_model(self, sessions: list[EngineSession]) -> list[tuple | None]:
        """Each session's model outputs for its ready frames; None for a session that failed."""
        encoders = [s.stream.encoder for s in sessions]
        if self.batch and len(encoders) > 1:
            saved = [(e.pending, list(e.states)) for e in encoders]  # tensors are replaced, never changed in place
            sizes: list[int] = []
            try:
                outputs = EncoderStream.run_batch(encoders, sizes)
                self._count(sizes)
                return outputs
            except Exception:  # find whose stream it was: every stream back as it was, each run alone
                log.exception("batched model step failed; running the streams one by one")
                for encoder, (pending, states) in zip(encoders, saved):
                    encoder.pending, encoder.states = pending, states
        outputs: list[tuple | None] = []
        for session, encoder in zip(sessions, encoders):
            sizes = []
            try:
                outputs.append(EncoderStream.run_batch([encoder], sizes)[0])
                self._count(sizes)
            except Exception as e:
                self._fail(session, str(e), exc=e)
                outputs.append(None)
        return outputs

    def _count(self, sizes: list[int]) -> None:
        self.stats.model_calls += len(sizes)
        self.stats.windows += sum(sizes)

    def _deliver(self, session: EngineSession, events: list[dict], done: bool) -> None:
        if done:
            self.close(session)
        if events or done:
            try:
                session.deliver(events, done)
            except Exception:  # the owner's loop is gone (server shutting down): nothing to tell
                log.debug("could not deliver to %s", session.client, exc_info=True)

    def _fail(self, session: EngineSession, message: str, exc: BaseException | None = None) -> None:
        self.stats.errors += 1
        if exc is not None and not isinstance(exc, ValueError):
            log.error("stream of %s failed", session.client, exc_info=exc)
        code = 1007 if isinstance(exc, ValueError) else 1011  # the client's data (StreamError), or ours
        self._deliver(session, [{"type": "error", "message": message, "code": code}], done=True)


class Transcriber(_Worker):
    """Uploads through `Recognizer.transcribe_files` on a thread of its own: `submit` queues a file
    and returns a Future of its `Transcript`; the requests waiting when the worker comes round go
    through one call (up to `batch_files` files), so their segments share the model's batches.
    More than `max_pending` requests waiting or running: `Busy`."""

    def __init__(self, recognizer, max_pending: int = 8, batch_files: int = 16, batch_size: int = 16):
        super().__init__("asr-transcriber")
        self.recognizer = recognizer
        self.max_pending, self.batch_files, self.batch_size = max_pending, batch_files, batch_size
        self.pending = 0  # requests queued or running
        self.done = 0
        self._queue: list[tuple[str, bool, Future]] = []
        self._thread.start()

    def submit(self, path: str, word_timestamps: bool = False) -> Future:
        future: Future = Future()
        with self._lock:
            if self.pending >= self.max_pending:
                raise Busy(f"{self.pending} transcriptions are queued or running (the server's limit, --max-pending-requests)")
            self.pending += 1
            self._queue.append((path, word_timestamps, future))
            self._lock.notify()
        return future

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._wait_for_work(lambda: self._queue):
                    for _, _, future in self._queue:
                        future.cancel()
                    return
                jobs, self._queue = self._queue[: self.batch_files], self._queue[self.batch_files :]
            for words in (False, True):  # with word times and without: one call each
                group = [job for job in jobs if job[1] == words]
                if group:
                    self._run(group, words)

    def _run(self, jobs: list[tuple[str, bool, Future]], word_timestamps: bool) -> None:
        transcripts, error = [], None
        try:
            transcripts = list(self.recognizer.transcribe_files([path for path, _, _ in jobs], batch_size=self.batch_size, word_timestamps=word_timestamps))
        except Exception as e:  # a bug, not a bad file (those come back as the transcript's error)
            log.exception("transcription failed")
            error = e
        # counted as finished before any client hears of it: a client's next request must not
        # find its own finished one still pending (a 503 at max_pending_requests=1 under load)
        with self._lock:
            self.pending -= len(jobs)
            self.done += len(jobs)
        for index, (_, _, future) in enumerate(jobs):
            if error is None:
                future.set_result(transcripts[index])
            elif not future.done():
                future.set_exception(error)
