"""`asr serve` under load (issue 22): the server as a subprocess on a loopback port, one client
process (asyncio: the `websockets` library for streams, aiohttp for uploads).

    python scripts/bench_serve.py --checkpoint runs/stream/best.pt --corpus demo_out/corpus \
        --streams 8,16,24,32 --compare-no-batch --memory-minutes 60
    (short: --streams 2,4 --stream-seconds 10 --http-requests 8 --memory-minutes 1)

Sections (each selectable):
  1. streams (--streams N,N,..., --skip-streams): N WebSocket streams at once, fed at real time
     (--chunk-ms pcm16 chunks paced by the wall clock, started at random over the first second),
     each a few test utterances joined with --pause s pauses (about --stream-seconds of audio),
     then an eof. The pauses are low noise (--pause-noise), not digital zeros: 1.5 s of exact
     silence throws the demo model's running CMVN off for the next utterance (in-process `asr
     stream` too). The server runs endpoint rule 2 at --rule2 s (rules 1 and 3 at their defaults).
     Before any server starts, each stream's audio goes through the library's `Stream` in this
     process (asr/stream.py; one torch thread, the server's own flags parsed by asr's parser:
     the same decoder and endpoint rules), cut into the same chunks: `stream.feed(chunk, rate)`
     per chunk, `stream.close()` at the end, and for each final the chunk whose feed returned it
     ("eof" for close()'s). The server's results equal those (its endpoints are asked every
     model chunk of frames, whatever its batching or merging of messages), so the server's k-th
     final of a stream is the in-process k-th: matched by order (by order and text where the
     counts differ), their texts compared (batched float sums may differ by ~1e-6: a rare text
     that differs is counted and shown, as is every final left unmatched). A final's latency,
     the server's delay (queueing, model, decoder, network): its arrival less the wall time the
     client sent that chunk (close()'s finals: less the eof's). That is on top of the model's
     algorithmic latency and the endpoint rule's wait, which in-process streaming has as well
     (both printed beside it: rule 2's silence counts from the model's last emitted label). The
     user-felt delay, the total: arrival less when the client sent the chunk holding the final's
     aligned end (event["end"]). Per N: the server's finals and the in-process count, matched /
     texts that differ, server delay p50 / p90 / max, how many over --goal, the eof finals'
     delay apart, the user-felt delay, partial events, WER of the finals against the references
     (jiwer), the server's CPU seconds (/proc/PID/stat) per second of streamed audio, the
     engine's mean batch (/health, over the run), the most audio queued in the engine (/health's
     stream_backlog_s, sampled each second), the client's CPU.
     --compare-no-batch runs the same N on the same audio against a second server started with
     --no-batch: the CPU ratio, and each final's server delay in both runs (a final slow in both
     is slow by its own work -- e.g. aligning a long utterance -- or what both runs share, not
     by batching).
  2. uploads (--skip-http): --http-requests POSTs of --http-seconds s wavs (test utterances
     joined with pauses) to /v1/audio/transcriptions, --http-concurrency at a time (a list: one
     row each); 200s vs 503s (the server's --max-pending-requests 8), requests/s, audio s/s, latency.
  3. memory (--memory-minutes M, 0 skips): one stream of M minutes of audio through a server with
     --max-lead-seconds 0, sent as fast as the server takes it (at most --memory-in-flight s of
     audio sent beyond the last event's end), the server's RSS (/proc/PID/status VmRSS) after each
     minute of audio; growth after minute 1.

The server always gets --threads 1 (the stream engine and the uploads a thread each) and is
stopped in a finally (and killed with this process: PR_SET_PDEATHSIG). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime
import difflib
import hashlib
import io
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import aiohttp
import numpy as np

try:  # websockets >= 13
    from websockets.asyncio.client import connect as ws_connect
except ImportError:  # the legacy client
    from websockets import connect as ws_connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from asr.metrics import score_wer  # noqa: E402
from asr.text import normalize_text  # noqa: E402

RATE = 16000


# -- small helpers -------------------------------------------------------------------------------

def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER, %, over the pairs whose reference has words."""
    pairs = [(r, h) for r, h in zip(references, hypotheses) if r.strip()]
    if not pairs:
        return float("nan")
    return 100 * score_wer([r for r, _ in pairs], [h for _, h in pairs]).rate


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def ms(value: float) -> str:
    return "-" if value != value else f"{1000 * value:.0f}"


def machine() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5).stdout.strip()
        commit += " (modified)" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    return {
        "cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model, "load_avg": os.getloadavg(), "python": platform.python_version(), "commit": commit,
    }


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != RATE:
            raise SystemExit(f"{path}: expected 16 kHz 16-bit mono, got {w.getparams()}")
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").copy()


def wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


def load_corpus(corpus: Path, limit: int) -> list[tuple[np.ndarray, str]]:
    utterances = []
    with open(corpus / "test.jsonl") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                utterances.append((read_wav(corpus / record["audio"]), normalize_text(record["text"])))
                if limit and len(utterances) >= limit:
                    break
    if not utterances:
        raise SystemExit(f"{corpus / 'test.jsonl'}: no utterances")
    return utterances


def pause_audio(seconds: float, noise: float, rng: random.Random) -> np.ndarray:
    """`seconds` of silence: Gaussian noise of standard deviation `noise` (int16 units), or zeros."""
    n = int(seconds * RATE)
    if noise <= 0:
        return np.zeros(n, np.int16)
    return np.clip(np.random.default_rng(rng.getrandbits(32)).normal(0.0, noise, n), -32768, 32767).astype(np.int16)


def join_utterances(utterances, rng: random.Random, seconds: float, pause: float, noise: float) -> tuple[np.ndarray, str]:
    """Random utterances joined with `pause` s of silence (see pause_audio) until at least
    `seconds` of audio (no silence after the last one: its final comes with the eof) -> (int16
    samples, the reference)."""
    pieces, texts, total = [], [], 0
    while total < seconds * RATE:
        audio, text = rng.choice(utterances)
        if pieces:
            pieces.append(pause_audio(pause, noise, rng))
            total += len(pieces[-1])
        pieces.append(audio)
        texts.append(text)
        total += len(audio)
    return np.concatenate(pieces), " ".join(texts)


def fixed_length(utterances, rng: random.Random, seconds: float, pause: float, noise: float) -> tuple[np.ndarray, str]:
    """Random utterances joined with `pause` s of silence while they fit in `seconds`, then
    silence to exactly `seconds` (an upload of a fixed length) -> (int16 samples, the reference)."""
    pieces, texts, total, size = [], [], 0, int(seconds * RATE)
    for _ in range(1000):
        audio, text = rng.choice(utterances)
        gap = pause_audio(pause, noise, rng) if pieces else np.zeros(0, np.int16)
        if pieces and total + len(gap) + len(audio) > size:
            break
        pieces += [gap, audio[: size - total - len(gap)]]
        texts.append(text)
        total += len(gap) + len(pieces[-1])
    pieces.append(pause_audio((size - total) / RATE, noise, rng))
    return np.concatenate(pieces)[:size], " ".join(texts)


# -- the server ----------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when this script dies (Linux), so no server outlives it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Server:
    """`python -m asr serve CKPT --port 0 --threads 1 ...` as a subprocess; `url` once it listens."""

    def __init__(self, checkpoint: str, args: list[str], startup_timeout: float = 120.0):
        self.command = [sys.executable, "-m", "asr", "serve", checkpoint, "--host", "127.0.0.1", "--port", "0", "--threads", "1", *args]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="bench_serve-", suffix=".log", delete=False)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)
        self.pid = self.process.pid
        deadline = time.monotonic() + startup_timeout
        self.url = None
        while self.url is None:
            match = re.search(r"listening on (http://\S+)", Path(self.log.name).read_text())
            if match:
                self.url = match.group(1)
            elif self.process.poll() is not None or time.monotonic() > deadline:
                output = Path(self.log.name).read_text()
                self.stop()
                raise RuntimeError(f"the server did not start ({' '.join(self.command)}):\n{output[-3000:]}")
            else:
                time.sleep(0.1)
        self.ws_url = self.url.replace("http://", "ws://") + "/v1/stream"

    def cpu_seconds(self) -> float:
        """utime + stime of the server process (all its threads), s."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def output_tail(self, chars: int = 2000) -> str:
        try:
            return Path(self.log.name).read_text()[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


async def get_json(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
        return await response.json()


# -- 1. streams ----------------------------------------------------------------------------------

async def run_stream(ws_url: str, audio: np.ndarray, chunk: int, delay: float, timeout: float, pace: bool = True) -> dict:
    """One stream: the config, `audio` in `chunk`-sample pcm16 messages (at real time when `pace`,
    from `delay` s on), the eof; every event with its arrival time. Times are time.perf_counter()."""
    await asyncio.sleep(delay)
    events: list[tuple[float, dict]] = []
    sent: list[float] = []  # when chunk i went out
    result = {"events": events, "sent": sent, "eof_at": None, "error": None, "close_code": None}
    async def talk() -> None:
        async with ws_connect(ws_url, compression=None, max_size=None, open_timeout=30, ping_interval=None) as ws:
            await ws.send(json.dumps({"sample_rate": RATE, "format": "pcm16"}))

            async def receive() -> None:
                async for message in ws:
                    event = json.loads(message)
                    events.append((time.perf_counter(), event))
                    if event.get("type") == "error":
                        result["error"] = event.get("message")

            receiver = asyncio.create_task(receive())
            started = time.perf_counter()
            for i, at in enumerate(range(0, len(audio), chunk)):
                if pace:
                    wait = started + i * chunk / RATE - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                if receiver.done():  # the server ended the stream
                    break
                await ws.send(audio[at : at + chunk].tobytes())
                sent.append(time.perf_counter())
            if not receiver.done():
                await ws.send(json.dumps({"type": "eof"}))
                result["eof_at"] = time.perf_counter()
            await receiver
            result["close_code"] = ws.close_code

    try:
        await asyncio.wait_for(talk(), timeout)
    except Exception as e:  # noqa: BLE001  (a failed stream is counted, the run goes on)
        result["error"] = result["error"] or f"{type(e).__name__}: {e}"
    return result


# -- the in-process reference: what the server must say, and after which chunk -----------------------

def load_reference(checkpoint: str, server_args: list[str]):
    """The streaming recognizer and endpoint rules the server runs, in this process: the server's
    own flags (`server_args`, the script's --rule2 and every --server-arg) parsed by asr's own
    parser and applied as `asr serve` applies them (asr.cli.apply_decoder_options,
    asr.cli.endpoint_config: rule 2 at --rule2, rules 1 and 3 at their defaults 2.4 s and 20 s
    unless a --server-arg sets them) -> (recognizer, EndpointConfig, algorithmic latency s). One
    torch thread."""
    import torch

    from asr.cli import apply_decoder_options, build_parser, endpoint_config
    from asr.inference import Recognizer
    from asr.stream import algorithmic_latency

    torch.set_num_threads(1)
    flags = build_parser().parse_args(["serve", checkpoint, *server_args])
    recognizer = Recognizer.from_checkpoint(flags.stream_checkpoint or checkpoint, device=flags.device)
    apply_decoder_options(recognizer, flags)
    return recognizer, endpoint_config(flags), algorithmic_latency(recognizer.features, recognizer.config.model)


def reference_finals(recognizer, endpoint, audio: np.ndarray, chunk: int) -> list[dict]:
    """`audio` through the library's `Stream` in process, cut into the client's `chunk`-sample
    messages: `stream.feed(chunk, rate)` per message, `stream.close()` at the end (asr/stream.py).
    Each final: its text, end, and the index of the message whose feed returned it ("eof": from
    close()). The endpoint rules are asked every model chunk of frames, so where they fire does
    not depend on how the server batches or merges the messages: the server's finals are these."""
    stream = recognizer.stream(endpoint)
    finals = []
    for i, at in enumerate(range(0, len(audio), chunk)):
        finals += [{"chunk": i, "text": e.text, "end": e.end} for e in stream.feed(audio[at : at + chunk], RATE) if e.final]
    finals += [{"chunk": "eof", "text": e.text, "end": e.end} for e in stream.close() if e.final]
    return finals


def audio_key(audio: np.ndarray) -> str:
    return hashlib.sha1(audio.tobytes()).hexdigest()


def match_finals(server: list[str], reference: list[str]) -> list[tuple[int, int]]:
    """(server index, in-process index) pairs of the same final. The same count: by order (a text
    that differs is still that final, counted as a mismatch). Else what can be matched by order
    and text: difflib's runs of equal texts, and the runs of differing texts of equal length
    between them, by order; the rest stays unmatched (counted)."""
    if len(server) == len(reference):
        return list(zip(range(len(server)), range(len(reference))))
    pairs = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=server, b=reference, autojunk=False).get_opcodes():
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
            pairs += zip(range(i1, i2), range(j1, j2))
    return pairs


def stream_finals(result: dict, reference: list[dict], chunk_seconds: float) -> tuple[list[dict], dict]:
    """(the stream's finals matched to the in-process ones: kind, latency, felt, text, end, same
    text; counts: partials, server finals, in-process finals, matched, text mismatches, untimed).
    A final's latency, the server's own delay: its arrival less when the client sent the message
    whose in-process feed returned it (for a final from close(): less when the eof was sent).
    felt, the user-felt delay: its arrival less when the client sent the message holding the
    final's aligned end (event["end"])."""
    sent, eof_at = result["sent"], result["eof_at"]
    server = [(arrived, event) for arrived, event in result["events"] if event.get("type") == "final"]
    counts = {"partials": sum(event.get("type") == "partial" for _, event in result["events"]),
              "server": len(server), "reference": len(reference), "matched": 0, "mismatched": 0, "untimed": 0}
    records = []
    for s, r in match_finals([event["text"] for _, event in server], [f["text"] for f in reference]):
        arrived, event = server[s]
        chunk = reference[r]["chunk"]
        counts["matched"] += 1
        counts["mismatched"] += event["text"] != reference[r]["text"]
        at = eof_at if chunk == "eof" else (sent[chunk] if chunk < len(sent) else None)
        if at is None:  # a message the client never sent (the stream ended early): not timed
            counts["untimed"] += 1
            continue
        holding = min(max(int(np.ceil(event["end"] / chunk_seconds - 1e-9)) - 1, 0), len(sent) - 1) if sent else None
        records.append({
            "index": r, "kind": "eof" if chunk == "eof" else "endpoint", "latency": arrived - at, "felt": arrived - sent[holding] if holding is not None else float("nan"),
            "text": event["text"], "end": event["end"], "chunk": chunk, "same_text": event["text"] == reference[r]["text"],
            "reference_text": reference[r]["text"],
        })
    return records, counts


def stream_plan(n: int, utterances, args, seed: int) -> dict:
    """N streams' audio (and references) and start delays; the same for the batched and the no-batch run."""
    rng = random.Random(seed)
    streams = [join_utterances(utterances, rng, args.stream_seconds, args.pause, args.pause_noise) for _ in range(n)]
    delays = [rng.uniform(0.0, 1.0) for _ in range(n)]
    return {"n": n, "streams": streams, "delays": delays}


async def stream_load(server: Server, plan: dict, references: dict[str, list[dict]], args) -> dict:
    """N streams at real time against `server`; the row of the table."""
    n, streams, delays = plan["n"], plan["streams"], plan["delays"]
    chunk = RATE * args.chunk_ms // 1000
    longest = max(len(a) for a, _ in streams) / RATE
    timeout = longest + 1.0 + args.stream_timeout_extra
    backlog, open_streams = [0.0], [0]
    async with aiohttp.ClientSession() as session:
        before = await get_json(session, server.url + "/health")
        cpu_before, client_before, wall_before = server.cpu_seconds(), time.process_time(), time.perf_counter()
        tasks = [asyncio.create_task(run_stream(server.ws_url, audio, chunk, delay, timeout)) for (audio, _), delay in zip(streams, delays)]

        async def sample() -> None:
            while True:
                await asyncio.sleep(1.0)
                health = await get_json(session, server.url + "/health")
                backlog[0] = max(backlog[0], health.get("stream_backlog_s", 0.0))
                open_streams[0] = max(open_streams[0], health.get("streams", 0))

        sampler = asyncio.create_task(sample())
        results = await asyncio.gather(*tasks)
        sampler.cancel()
        wall = time.perf_counter() - wall_before
        cpu, client_cpu = server.cpu_seconds() - cpu_before, time.process_time() - client_before
        after = await get_json(session, server.url + "/health")
    records, hyps, errors = [], [], []
    counts = {"partials": 0, "server": 0, "reference": 0, "matched": 0, "mismatched": 0, "untimed": 0}
    for i, ((audio, _), result) in enumerate(zip(streams, results)):
        finals, c = stream_finals(result, references[audio_key(audio)], chunk / RATE)
        records += [{"stream": i, **f} for f in finals]  # index: the final's place in the in-process stream
        hyps.append(" ".join(event["text"] for _, event in result["events"] if event.get("type") == "final" and event["text"]))
        counts = {k: counts[k] + c[k] for k in counts}
        if result["error"]:
            errors.append(result["error"])
    audio_seconds = sum(len(a) for a, _ in streams) / RATE
    stats = {k: after["engine"][k] - before["engine"][k] for k in ("steps", "model_calls", "windows", "busy_seconds", "errors")}
    finals = [r["latency"] for r in records]
    felt = [r["felt"] for r in records]
    eof = [r["latency"] for r in records if r["kind"] == "eof"]
    return {
        "n": n, "audio_s": audio_seconds, "wall_s": wall, "finals": counts["server"], "eof_finals": len(eof),
        "reference_finals": counts["reference"], "matched": counts["matched"], "mismatched": counts["mismatched"], "untimed": counts["untimed"],
        "p50": pct(finals, 50), "p90": pct(finals, 90), "max": max(finals, default=float("nan")), "min": min(finals, default=float("nan")),
        "eof_p50": pct(eof, 50), "eof_p90": pct(eof, 90), "eof_max": max(eof, default=float("nan")),
        "felt_p50": pct(felt, 50), "felt_p90": pct(felt, 90), "felt_max": max(felt, default=float("nan")),
        "partials": counts["partials"], "wer": wer([ref for _, ref in streams], hyps),
        "cpu_s": cpu, "cpu_per_stream_s": cpu / audio_seconds, "client_cpu_s": client_cpu,
        "mean_batch": stats["windows"] / stats["model_calls"] if stats["model_calls"] else float("nan"),
        "engine_busy_s": stats["busy_seconds"], "steps": stats["steps"], "engine_errors": stats["errors"],
        "max_backlog_s": backlog[0], "max_open": open_streams[0], "errors": errors, "records": records,
        "over_goal": sum(latency > args.goal for latency in finals),
    }


async def warm_up(server: Server, utterances, noise: float) -> None:
    """One short stream, not paced, and one upload: the first calls (the aligner's compiled code,
    torch's first runs) out of the way before anything is timed."""
    audio, _ = join_utterances(utterances, random.Random(1), 4.0, 1.5, noise)
    result = await run_stream(server.ws_url, audio, RATE // 10, 0.0, 120.0, pace=False)
    if result["error"]:
        raise RuntimeError(f"warm-up stream failed: {result['error']}\n{server.output_tail()}")
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("file", wav_bytes(audio), filename="warmup.wav", content_type="audio/wav")
        async with session.post(server.url + "/v1/audio/transcriptions", data=form) as response:
            await response.read()


def paired(batched: dict, unbatched: dict, goal: float) -> tuple[list[float], int]:
    """The same finals (same stream, same place, same text) in the batched and the no-batch run of
    one N: their server delays' differences, and how many were over `goal` in both (slow not
    because of batching: that final's own work, e.g. aligning a long utterance, or what both
    runs share)."""
    other = {(r["stream"], r["index"], r["text"]): r["latency"] for r in unbatched["records"]}
    deltas, both = [], 0
    for r in batched["records"]:
        twin = other.get((r["stream"], r["index"], r["text"]))
        if twin is not None:
            deltas.append(r["latency"] - twin)
            both += r["latency"] > goal and twin > goal
    return deltas, both


def stream_rows(rows: list[dict], label: str) -> None:
    print(f"\n{label}")
    print("| streams | finals (eof) | in-process finals | matched / text differs | server delay p50 / p90 / max ms | > goal | min ms "
          "| eof final p50 / p90 / max ms | user-felt p50 / p90 / max ms | partials | WER % "
          "| server CPU s | CPU s per stream-s | mean batch | max backlog s | client CPU s | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['finals']} ({r['eof_finals']}) | {r['reference_finals']} | {r['matched']} / {r['mismatched']} "
              f"| {ms(r['p50'])} / {ms(r['p90'])} / {ms(r['max'])} | {r['over_goal']} | {ms(r['min'])} "
              f"| {ms(r['eof_p50'])} / {ms(r['eof_p90'])} / {ms(r['eof_max'])} | {ms(r['felt_p50'])} / {ms(r['felt_p90'])} / {ms(r['felt_max'])} "
              f"| {r['partials']} | {r['wer']:.2f} "
              f"| {r['cpu_s']:.1f} | {r['cpu_per_stream_s']:.4f} | {r['mean_batch']:.2f} | {r['max_backlog_s']:.2f} | {r['client_cpu_s']:.1f} "
              f"| {len(r['errors']) + r['engine_errors']} |")
    for r in rows:
        if r["finals"] != r["reference_finals"] or r["matched"] != r["finals"]:
            print(f"  N={r['n']}: the server sent {r['finals']} finals, the in-process Stream gave {r['reference_finals']}: "
                  f"{r['matched']} matched by order and text, {r['finals'] - r['matched']} of the server's and "
                  f"{r['reference_finals'] - r['matched']} in-process unmatched (not timed)")
        if r["untimed"]:
            print(f"  N={r['n']}: {r['untimed']} matched finals not timed (their message was never sent: the stream ended early)")
        for rec in [rec for rec in r["records"] if not rec["same_text"]][:5]:
            print(f"  N={r['n']}: text differs, stream {rec['stream']} final {rec['index']}: server {rec['text']!r}, in-process {rec['reference_text']!r}")
        for error in sorted(set(r["errors"]))[:5]:
            print(f"  N={r['n']}: stream error: {error}")


# -- 2. uploads ----------------------------------------------------------------------------------

async def http_load(server: Server, files: list[tuple[bytes, str, float]], requests: int, concurrency: int) -> dict:
    """`requests` uploads, `concurrency` at a time (no retries): statuses, throughput, latency."""
    latencies, statuses, refs, hyps = [], {}, [], []
    queue = list(range(requests))
    timeout = aiohttp.ClientTimeout(total=300)

    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def worker() -> None:
            while queue:
                i = queue.pop()
                data, ref, _ = files[i % len(files)]
                form = aiohttp.FormData()
                form.add_field("file", data, filename=f"bench-{i}.wav", content_type="audio/wav")
                form.add_field("response_format", "json")
                started = time.perf_counter()
                try:
                    async with session.post(server.url + "/v1/audio/transcriptions", data=form) as response:
                        body = await response.read()
                        status = response.status
                except aiohttp.ClientError as e:
                    status = type(e).__name__
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                    refs.append(ref)
                    hyps.append(json.loads(body).get("text", ""))

        cpu_before, wall_before = server.cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - wall_before, server.cpu_seconds() - cpu_before
    ok = statuses.get(200, 0)
    audio = sum(files[i % len(files)][2] for i in range(requests)) / requests * ok
    return {
        "concurrency": concurrency, "requests": requests, "ok": ok, "busy": statuses.get(503, 0),
        "other": {k: v for k, v in statuses.items() if k not in (200, 503)}, "wall_s": wall,
        "rps": ok / wall, "audio_per_s": audio / wall, "p50": pct(latencies, 50), "p90": pct(latencies, 90),
        "max": max(latencies, default=float("nan")), "cpu_s": cpu, "wer": wer(refs, hyps),
    }


# -- 3. memory -----------------------------------------------------------------------------------

async def memory_run(server: Server, utterances, minutes: float, pause: float, noise: float, chunk_ms: int, in_flight: float, seed: int) -> dict:
    """One stream of `minutes` of audio, sent as fast as the server takes it: at most `in_flight` s
    sent beyond the end of the last event (a partial's or a final's); the server's RSS after each
    minute of audio sent."""
    rng = random.Random(seed)
    chunk = RATE * chunk_ms // 1000
    total = int(minutes * 60 * RATE)
    progress = {"end": 0.0, "finals": [], "error": None, "events": 0}
    arrived = asyncio.Event()
    marks: list[tuple[float, float, float]] = []  # (minute, wall s, RSS MB)
    refs: list[str] = []
    started = time.perf_counter()
    cpu_before = server.cpu_seconds()
    async with ws_connect(server.ws_url, compression=None, max_size=None, open_timeout=30, ping_interval=None) as ws:
        await ws.send(json.dumps({"sample_rate": RATE, "format": "pcm16"}))

        async def receive() -> None:
            async for message in ws:
                event = json.loads(message)
                progress["events"] += 1
                if event.get("type") == "error":
                    progress["error"] = event.get("message")
                elif event.get("type") == "final":
                    progress["finals"].append(event["text"])
                if "end" in event:
                    progress["end"] = max(progress["end"], event["end"])
                arrived.set()

        receiver = asyncio.create_task(receive())
        sent, next_mark, stalls = 0, 60 * RATE, 0
        while sent < total and not receiver.done():
            audio, text = rng.choice(utterances)
            refs.append(text)
            piece = np.concatenate([audio, pause_audio(pause, noise, rng)])[: total - sent]
            for at in range(0, len(piece), chunk):
                while sent / RATE - progress["end"] > in_flight and not receiver.done():
                    arrived.clear()
                    try:  # no event for 2 s (a long silence): send on rather than wait for ever
                        await asyncio.wait_for(arrived.wait(), 2.0)
                    except asyncio.TimeoutError:
                        stalls += 1
                        break
                samples = piece[at : at + chunk]
                await ws.send(samples.tobytes())
                sent += len(samples)
                if sent >= next_mark:
                    marks.append((next_mark / RATE / 60, time.perf_counter() - started, server.rss_mb()))
                    if len(marks) % 10 == 0:
                        print(f"  memory: {marks[-1][0]:.0f} min of audio sent, {marks[-1][1]:.0f} s, RSS {marks[-1][2]:.1f} MB", file=sys.stderr, flush=True)
                    next_mark += 60 * RATE
        if not receiver.done():
            await ws.send(json.dumps({"type": "eof"}))
        await asyncio.wait_for(receiver, 120)
    wall = time.perf_counter() - started
    await asyncio.sleep(0.5)
    return {
        "minutes": sent / RATE / 60, "wall_s": wall, "marks": marks, "rss_after_close": server.rss_mb(), "stalls": stalls,
        "cpu_s": server.cpu_seconds() - cpu_before, "error": progress["error"], "finals": len(progress["finals"]),
        "wer": wer([" ".join(refs)], [" ".join(progress["finals"])]),
    }


# -- main ----------------------------------------------------------------------------------------

def int_list(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


async def main_async(args) -> None:
    utterances = load_corpus(Path(args.corpus), args.limit)
    common = ["--rule2-min-trailing-silence", str(args.rule2), "--max-streams", str(max(args.streams + [1])), *args.server_arg]
    info = machine()
    print(f"# bench_serve  {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {info['cpus']} CPUs ({info['usable_cpus']} usable), {info['cpu_model']}, load average {' '.join(f'{x:.2f}' for x in info['load_avg'])}, "
          f"Python {info['python']}, commit {info['commit']}")
    print(f"checkpoint: {args.checkpoint}")
    print(f"corpus: {args.corpus} ({len(utterances)} test utterances)")
    print(f"server: python -m asr serve CKPT --host 127.0.0.1 --port 0 --threads 1 {' '.join(common)}  (+ --no-batch for the comparison, --max-lead-seconds 0 for memory)")
    print(f"streams: N={','.join(map(str, args.streams))}{' (and --no-batch)' if args.compare_no_batch else ''}; each ~{args.stream_seconds:g} s of audio "
          f"(utterances + {args.pause:g} s pauses of noise at std {args.pause_noise:g}), {args.chunk_ms} ms pcm16 chunks at real time, starts spread over 1 s; "
          f"endpoint rule 2 at {args.rule2:g} s; server delay goal {1000 * args.goal:.0f} ms")
    if not args.skip_http:
        print(f"uploads: {args.http_requests} requests of {args.http_seconds:g} s wavs, concurrency {','.join(map(str, args.http_concurrency))}")
    if args.memory_minutes:
        print(f"memory: one stream of {args.memory_minutes:g} min, at most {args.memory_in_flight:g} s of audio in flight")
    print("latency of a final (the server's delay: queueing, model, decoder, network): arrival - when the client sent the chunk whose "
          "feed() returned that final in the in-process Stream on the same audio and chunks (a final from close(): the eof); "
          "user-felt: arrival - when the client sent the chunk holding the final's aligned end", flush=True)

    batched, unbatched = [], []
    if args.streams and not args.skip_streams:
        # every stream's audio and its in-process finals, before any server runs (one torch thread)
        plans = [stream_plan(n, utterances, args, seed=args.seed + i) for i, n in enumerate(args.streams)]
        started = time.perf_counter()
        recognizer, endpoint, algorithmic = load_reference(args.checkpoint, common)
        chunk = RATE * args.chunk_ms // 1000
        references: dict[str, list[dict]] = {}
        for plan in plans:
            for audio, _ in plan["streams"]:
                key = audio_key(audio)
                if key not in references:
                    references[key] = reference_finals(recognizer, endpoint, audio, chunk)
        reference_audio = sum(len(a) for plan in plans for a, _ in plan["streams"]) / RATE
        rules = ", ".join(f"rule{i} {'after speech, ' if r.must_contain_nonsilence else ''}silence {r.min_trailing_silence:g} s / utterance {r.min_utterance_length:g} s"
                          for i, r in enumerate((endpoint.rule1, endpoint.rule2, endpoint.rule3), 1))
        print(f"in-process reference: {len(references)} streams, {reference_audio:.0f} s of audio, "
              f"{sum(len(f) for f in references.values())} finals, in {time.perf_counter() - started:.0f} s; endpoints: {rules}"
              f"{'' if endpoint.enabled else ' (disabled)'}")
        print(f"the server's delay comes on top of what in-process streaming takes as well: the model's algorithmic latency {algorithmic:.3f} s "
              f"and the endpoint rule's wait (rule 2: {endpoint.rule2.min_trailing_silence:g} s of silence counted from the last emitted label, "
              f"checked every model chunk); the user-felt column holds all of it", flush=True)
        del recognizer
        configs = [("batched", [])] + ([("no-batch", ["--no-batch"])] if args.compare_no_batch else [])
        for label, extra in configs:
            with Server(args.checkpoint, common + extra) as server:
                async with aiohttp.ClientSession() as session:
                    models = await get_json(session, server.url + "/v1/models")
                if label == "batched":
                    latency = models["data"][-1].get("algorithmic_latency_s")
                    print(f"model: {models['data'][-1]['id']}, {models['data'][-1].get('direction')}, algorithmic latency {latency} s "
                          f"(chunk + right context + feature window: the same in process, not in the server delay below; "
                          f"in the user-felt delay with the endpoint rule's wait, rule 2 at {args.rule2:g} s)")
                await warm_up(server, utterances, args.pause_noise)
                for plan in plans:
                    row = await stream_load(server, plan, references, args)
                    (batched if label == "batched" else unbatched).append(row)
                    print(f"  {label} N={plan['n']}: {row['finals']} finals ({row['reference_finals']} in-process, {row['matched']} matched, "
                          f"{row['mismatched']} texts differ), server delay p50 {ms(row['p50'])} / p90 {ms(row['p90'])} / max {ms(row['max'])} ms, "
                          f"user-felt p90 {ms(row['felt_p90'])} ms, "
                          f"WER {row['wer']:.2f} %, server CPU {row['cpu_s']:.1f} s for {row['audio_s']:.0f} s of audio in {row['wall_s']:.0f} s, "
                          f"mean batch {row['mean_batch']:.2f}", file=sys.stderr, flush=True)
        stream_rows(batched, "## Streams at real time, batched (the server's default)")
        if unbatched:
            stream_rows(unbatched, "## Streams at real time, --no-batch")
            print("\n| streams | server CPU per stream-second, batched / no-batch | ratio | p90 / max server delay ms, batched / no-batch "
                  "| same final, batched - no-batch: median / max ms | finals > goal in both runs |")
            print("|---|---|---|---|---|---|")
            for b, u in zip(batched, unbatched):
                deltas, both = paired(b, u, args.goal)
                print(f"| {b['n']} | {b['cpu_per_stream_s']:.4f} / {u['cpu_per_stream_s']:.4f} | {b['cpu_per_stream_s'] / u['cpu_per_stream_s']:.2f} "
                      f"| {ms(b['p90'])} / {ms(b['max'])} / {ms(u['p90'])} / {ms(u['max'])} | {ms(pct(deltas, 50))} / {ms(max(deltas, default=float('nan')))} "
                      f"| {both} of {b['over_goal']} |")
        slow = sorted((r for r in batched[-1]["records"]), key=lambda r: -r["latency"])[:args.show_slowest] if batched else []
        if slow:
            other = {(r["stream"], r["index"]): r for r in unbatched[-1]["records"]} if unbatched else {}
            print(f"\nslowest finals at N={batched[-1]['n']} (batched{'; the same final without batching' if other else ''}):")
            for r in slow:
                twin = other.get((r["stream"], r["index"]))
                unbatched_ms = f" ({ms(twin['latency'])} ms)" if twin else ""
                print(f"  {ms(r['latency']):>5} ms{unbatched_ms}  user-felt {ms(r['felt']):>5} ms  "
                      f"{r['kind']:8}  stream {r['stream']:2} ends {r['end']:6.2f} s, in-process after chunk {r['chunk']}  {r['text'][:60]!r}")
        for label, rows in (("batched", batched), ("no-batch", unbatched)):
            if not rows:
                continue
            strict = [r["n"] for r in rows if r["finals"] and not r["errors"] and r["max"] <= args.goal]
            p90 = [r["n"] for r in rows if r["finals"] and not r["errors"] and r["p90"] <= args.goal]
            print(f"largest N, {label}: every final's server delay within {1000 * args.goal:.0f} ms: {max(strict) if strict else 'none'}; "
                  f"p90 within {1000 * args.goal:.0f} ms: {max(p90) if p90 else 'none'}  (of N = {','.join(map(str, args.streams))})")
        sys.stdout.flush()

    if not args.skip_http:
        rng = random.Random(args.seed + 100)
        files = []
        for _ in range(8):
            audio, ref = fixed_length(utterances, rng, args.http_seconds, 0.5, args.pause_noise)
            files.append((wav_bytes(audio), ref, len(audio) / RATE))
        with Server(args.checkpoint, common) as server:
            await warm_up(server, utterances, args.pause_noise)
            rows = [await http_load(server, files, args.http_requests, c) for c in args.http_concurrency]
        mean_seconds = sum(f[2] for f in files) / len(files)
        print(f"\n## Uploads: POST /v1/audio/transcriptions, {len(files)} distinct wavs of {mean_seconds:.1f} s (utterances + 0.5 s pauses; the server's --max-pending-requests 8)")
        print("| concurrency | requests | 200 | 503 | other | wall s | requests/s | audio s per s | latency p50 / p90 / max ms | server CPU s | WER % |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['concurrency']} | {r['requests']} | {r['ok']} | {r['busy']} | {sum(r['other'].values()) or 0} | {r['wall_s']:.1f} | {r['rps']:.2f} "
                  f"| {r['audio_per_s']:.1f} | {ms(r['p50'])} / {ms(r['p90'])} / {ms(r['max'])} | {r['cpu_s']:.1f} | {r['wer']:.2f} |")
        sys.stdout.flush()

    if args.memory_minutes:
        with Server(args.checkpoint, common + ["--max-lead-seconds", "0"]) as server:
            await warm_up(server, utterances, args.pause_noise)
            before = server.rss_mb()
            r = await memory_run(server, utterances, args.memory_minutes, args.pause, args.pause_noise, args.chunk_ms, args.memory_in_flight, args.seed + 200)
        marks = r["marks"]
        print(f"\n## Memory: one stream, {r['minutes']:.1f} min of audio done in {r['wall_s']:.0f} s wall ({r['wall_s'] / max(r['minutes'], 1e-9):.1f} s per minute of audio; "
              f"server CPU {r['cpu_s']:.0f} s), {r['finals']} finals, WER {r['wer']:.2f} %{', error: ' + r['error'] if r['error'] else ''}"
              + (f", {r['stalls']} waits for events timed out" if r["stalls"] else ""))
        if marks:
            growth = marks[-1][2] - marks[0][2]
            print(f"server RSS: {before:.1f} MB after warm-up, {marks[0][2]:.1f} MB after minute 1, {marks[-1][2]:.1f} MB after minute {marks[-1][0]:.0f}, "
                  f"{r['rss_after_close']:.1f} MB after the stream closed; growth after minute 1: {growth:+.1f} MB "
                  f"({'within' if growth <= 5 else 'over'} the 5 MB target)")
            print("RSS MB by minute: " + " ".join(f"{m[2]:.1f}" for m in marks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a streaming checkpoint (asr serve's CKPT)")
    parser.add_argument("--corpus", default="demo_out/corpus", help="corpus folder with test.jsonl (16 kHz wavs; default: asr demo's)")
    parser.add_argument("--limit", type=int, default=0, help="use the first N test utterances (0 = all)")
    parser.add_argument("--streams", type=int_list, default=[8, 16, 24, 32], help="streams at once, a list (default 8,16,24,32)")
    parser.add_argument("--skip-streams", action="store_true", help="skip section 1")
    parser.add_argument("--compare-no-batch", action="store_true", help="also run each N against a server with --no-batch")
    parser.add_argument("--stream-seconds", type=float, default=20.0, help="audio per stream, about (default 20)")
    parser.add_argument("--pause", type=float, default=1.5, help="silence between a stream's utterances, s (default 1.5)")
    parser.add_argument("--pause-noise", type=float, default=30.0,
                        help="the pauses' noise, standard deviation in int16 units (default 30, about -60 dBFS; 0: digital silence, "
                             "which throws this demo model's running CMVN off for the next utterance)")
    parser.add_argument("--chunk-ms", type=int, default=100, help="audio per WebSocket message, ms (default 100)")
    parser.add_argument("--rule2", type=float, default=0.3, help="the server's --rule2-min-trailing-silence, s (default 0.3)")
    parser.add_argument("--goal", type=float, default=0.5, help="goal for a final's server delay (arrival - the chunk that made it in process), s (default 0.5)")
    parser.add_argument("--show-slowest", type=int, default=8, help="list this many of the slowest finals at the largest N")
    parser.add_argument("--stream-timeout-extra", type=float, default=30.0, help="s a stream may run past its audio before it is abandoned")
    parser.add_argument("--skip-http", action="store_true", help="skip section 2")
    parser.add_argument("--http-requests", type=int, default=40)
    parser.add_argument("--http-concurrency", type=int_list, default=[4, 12], help="requests at once, a list: one row each (default 4,12: 12 > the server's 8 pending shows its 503s)")
    parser.add_argument("--http-seconds", type=float, default=10.0, help="length of the uploaded wavs, about, s")
    parser.add_argument("--memory-minutes", type=float, default=0.0, help="minutes of audio in the memory stream (0 = skip)")
    parser.add_argument("--memory-in-flight", type=float, default=5.0, help="s of audio sent beyond the last event's end, at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-arg", action="append", default=[], help="one more argument for asr serve (repeatable, e.g. --server-arg=--decoder=beam)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the servers' finally blocks run
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
