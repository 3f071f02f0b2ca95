"""The page `asr serve` serves (GET /) in headless Chromium, driven by Selenium: it records from a
microphone (Chromium's fake one, which plays a wav file) through its AudioWorklet, sends 16 kHz
PCM on the WebSocket and lists the finals the server finds in what it received; it uploads a file
and shows what POST /v1/audio/transcriptions returns; its worklet resamples other rates to 16 kHz.

Needs Debian's `chromium` and `chromium-driver` (CI installs them: .ci/run); skipped without them.
Selenium is given the driver's path, so Selenium Manager never downloads anything."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import requests
import soundfile
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from serve_helpers import RunningServer
from test_stream import make_recognizer, speechy

from asr.serve import ServeConfig
from asr.stream import EndpointConfig, EndpointRule

RATE = 16000
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Chromium and its driver (Debian: apt-get install chromium chromium-driver)",
)
# the random model never hears silence: a final every second of audio, so one comes quickly
ENDPOINT = EndpointConfig(rule3=EndpointRule(False, 0.0, 1.0))
WAIT = 30.0  # s, for anything the page should do within a few


def chromium(fake_mic: str) -> webdriver.Chrome:
    """Headless Chromium whose microphone plays `fake_mic` (a wav, once: `%noloop`), no permission prompt."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(flag)
    options.add_argument("--use-fake-ui-for-media-stream")
    options.add_argument("--use-fake-device-for-media-stream")
    options.add_argument(f"--use-file-for-fake-audio-capture={fake_mic}%noloop")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(WAIT)
    return driver


def best_alignment(captured: np.ndarray, reference: np.ndarray) -> tuple[int, float, int]:
    """The lag at which `captured` best matches `reference` (captured[lag + i] ~ reference[i]) ->
    (lag, their normalized cross-correlation over the overlap there, the overlap in samples)."""
    n = len(captured) + len(reference)
    spectrum = np.fft.rfft(captured, n) * np.conj(np.fft.rfft(reference, n))
    correlation = np.fft.irfft(spectrum, n)  # index k: lag k; index n - k: lag -k
    k = int(np.argmax(correlation))
    lag = k if k < len(captured) else k - n
    a = captured[max(lag, 0) :]
    b = reference[max(-lag, 0) :]
    m = min(len(a), len(b))
    a, b = a[:m].astype(np.float64), b[:m].astype(np.float64)
    return lag, float(a @ b / np.sqrt((a @ a) * (b @ b) + 1e-12)), m


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory) -> tuple[str, np.ndarray]:
    """5 s of speech-shaped noise, band-limited to 4 kHz (so that Chromium's resampling to its
    device's rate and back keeps it: white noise would lose its correlation to a fraction of a
    sample's delay), as 16-bit PCM at 16 kHz -> (path, the samples as the file holds them)."""
    audio = speechy(5.0, seed=3)
    spectrum = np.fft.rfft(audio)
    spectrum[np.fft.rfftfreq(len(audio), 1 / RATE) > 4000] = 0
    audio = np.fft.irfft(spectrum, len(audio))
    audio = (0.5 * audio / np.abs(audio).max()).astype(np.float32)
    path = tmp_path_factory.mktemp("page") / "mic.wav"
    soundfile.write(path, audio, RATE, subtype="PCM_16")
    return str(path), soundfile.read(path, dtype="float32")[0]


@pytest.fixture(scope="module")
def server():
    recognizer = make_recognizer()
    with RunningServer(recognizer, ServeConfig(endpoint=ENDPOINT)) as running:
        yield running


@pytest.fixture(scope="module")
def browser(mic_wav):
    driver = chromium(mic_wav[0])
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser, server) -> None:
    browser.get(server.url + "/")
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "model").text.startswith("model test-model"))


def test_microphone_to_finals(browser, server, mic_wav, monkeypatch):
    """The page's finals are what the recognizer says about the audio the server received, and that
    audio is the microphone's (the wav), at 16 kHz, in the worklet's 100 ms blocks."""
    engine = server.server.engine
    received: dict = {}  # session -> the float32 blocks the server queued for it
    submit = engine.submit

    def capture(session, samples):
        received.setdefault(session, []).append(samples.copy())
        submit(session, samples)

    monkeypatch.setattr(engine, "submit", capture)
    open_page(browser, server)
    assert "streams with" in browser.find_element(By.ID, "model").text
    browser.execute_script(  # every partial the page shows
        "window.partials = [];"
        "new MutationObserver(() => { const t = document.getElementById('partial').textContent; if (t) window.partials.push(t); })"
        ".observe(document.getElementById('partial'), {childList: true, characterData: true, subtree: true});"
    )
    status = lambda: browser.find_element(By.ID, "status").text  # noqa: E731

    browser.find_element(By.ID, "start").click()
    WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#finals li") or status().startswith(("error", "could not")))
    assert status() == "listening"  # the final came from an endpoint, mid-stream (not from the stop)
    browser.find_element(By.ID, "stop").click()
    WebDriverWait(browser, WAIT).until(lambda d: status() == "idle" and d.find_element(By.ID, "start").is_enabled())
    assert not engine.sessions  # the stream ended: the page sent its eof, the server closed

    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('#finals li'), li => [li.querySelector('.text').textContent, li.querySelector('.time').textContent])"
    )
    partials = browser.execute_script("return window.partials")

    assert len(received) == 1
    [(session, blocks)] = received.items()
    assert session.sample_rate == RATE  # the page's config: 16 kHz pcm16
    assert all(len(b) == RATE // 10 for b in blocks[:-1])  # the worklet's 100 ms messages
    audio = np.concatenate(blocks)
    assert len(audio) >= RATE  # the rule-3 endpoint (1 s of utterance) came before the stop
    lag, ncc, overlap = best_alignment(audio, mic_wav[1])
    assert ncc > 0.8 and overlap >= RATE, (lag, ncc, overlap)  # the wav, not silence (nor another rate)

    stream = server.server.stream_recognizer.stream(ENDPOINT)
    events = []
    for at in range(0, len(audio), 2400):
        events += stream.feed(audio[at : at + 2400], RATE)
    events += stream.close()
    finals = [e for e in events if e.final]
    assert [text for text, _ in shown] == [e.text for e in finals]
    assert all(e.text for e in finals)
    for (_, times), final in zip(shown, finals):  # "0.00–1.07 s"
        start, end = (float(x) for x in re.findall(r"\d+\.\d+", times))
        assert abs(start - final.start) <= 0.0051 and abs(end - final.end) <= 0.0051, (times, final)
    assert partials  # and it showed the utterance as it went


def test_upload(browser, server, mic_wav):
    """The upload form: the file, format srt -> the page shows what the API returns for that file."""
    open_page(browser, server)
    browser.find_element(By.ID, "file").send_keys(mic_wav[0])
    Select(browser.find_element(By.ID, "format")).select_by_value("srt")
    browser.find_element(By.ID, "upload").click()
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "output").is_displayed() or "error" in d.find_element(By.ID, "upload-status").get_attribute("class"))
    assert "mic.wav: done" in browser.find_element(By.ID, "upload-status").text
    shown = browser.execute_script("return document.getElementById('output').textContent")
    with open(mic_wav[0], "rb") as f:
        response = requests.post(server.url + "/v1/audio/transcriptions", files={"file": ("mic.wav", f, "audio/wav")}, data={"response_format": "srt"}, timeout=60)
    response.raise_for_status()
    assert "-->" in response.text
    assert shown == response.text


RESAMPLE = """
const [rate, seconds, done] = arguments;
(async () => {
  const length = Math.round(rate * seconds);
  const ctx = new OfflineAudioContext(1, length, rate);
  await ctx.audioWorklet.addModule("/worklet.js");
  const node = new AudioWorkletNode(ctx, "pcm16-sender");
  const buffer = ctx.createBuffer(1, length, rate);
  const x = buffer.getChannelData(0);
  for (let i = 0; i < length; i++) {
    const t = i / rate;
    x[i] = 0.3 * Math.sin(2 * Math.PI * 300 * t) + 0.2 * Math.sin(2 * Math.PI * 1100 * t) + 0.1 * Math.sin(2 * Math.PI * 2500 * t);
  }
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(node).connect(ctx.destination);
  source.start();
  const blocks = [];
  const flushed = new Promise((resolve) => {
    node.port.onmessage = (e) => { if (e.data === "flushed") resolve(); else blocks.push(Array.from(new Int16Array(e.data))); };
  });
  await ctx.startRendering();
  node.port.postMessage("flush");
  await flushed;
  done(blocks);
})().catch((e) => done(String(e)));
"""


@pytest.mark.parametrize("rate", [48000, 44100, 22050])
def test_worklet_resamples(browser, server, rate):
    """Where the AudioContext does not run at 16 kHz (Chromium honours the page's 16 kHz, other
    browsers may not), the worklet resamples: tones below 4 kHz come out as the same tones at
    16 kHz, delayed by its moving average's half width, in 100 ms blocks."""
    browser.get(server.url + "/")
    blocks = browser.execute_async_script(RESAMPLE, rate, 1.0)
    assert not isinstance(blocks, str), blocks
    assert [len(b) for b in blocks[:10]] == [RATE // 10] * 10  # 1 s: ten blocks (and a bit of the last quantum)
    out = np.concatenate([np.asarray(b, np.float64) for b in blocks]) / 32768
    taps = round(rate / RATE)
    t = np.arange(len(out)) / RATE - (taps - 1) / 2 / rate
    expected = 0.3 * np.sin(2 * np.pi * 300 * t) + 0.2 * np.sin(2 * np.pi * 1100 * t) + 0.1 * np.sin(2 * np.pi * 2500 * t)
    body = slice(10, RATE - 100)  # not the first samples (the filter fills) nor the last (past the buffer)
    error = float(np.abs(out[body] - expected[body]).max())
    assert error < 0.02, f"the worklet's 16 kHz output is off the tones by up to {error:.3f}"

