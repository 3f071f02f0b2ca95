"""A screenshot of the page `asr serve` serves, in use: headless Chromium whose (fake) microphone
plays some wavs, the page's live transcript (finals and the current partial) and an upload's
result. Needs Debian's chromium and chromium-driver, and selenium.

    python scripts/screenshot_page.py /tmp/demo_stream/run/best.pt --name demo_stream \\
        --mic /tmp/demo_stream/corpus/wav/test/test-000{00,06,10,14}.wav \\
        --upload /tmp/demo_stream/corpus/wav/test/test-000{12,19}.wav --out docs/serve-page.png

The --mic wavs play one after another with --pause s of silence after each (the fake microphone's
file: 16-bit PCM at 16 kHz, with a faint noise floor); the shot is taken while the last one is a
partial, once the ones before it are finals. The --upload wavs, joined the same way, go through
the page's upload form first.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile

RATE = 16000


def join_wavs(paths: list[str], pause: float, noise: float, out: Path) -> float:
    """The wavs at 16 kHz, mono, `pause` s of silence after each, a microphone's noise floor (Gaussian,
    std `noise`) over it all -> out (16-bit PCM); its seconds. (Digital silence, exact zeros, is
    what no microphone gives, and a model with running CMVN mishears the speech after a lot of it.)"""
    from asr.audio import load_audio

    gap = np.zeros(int(pause * RATE), np.float32)
    audio = np.concatenate([piece for path in paths for piece in (np.asarray(load_audio(path, RATE), np.float32).reshape(-1), gap)])
    audio += noise * np.random.default_rng(0).standard_normal(len(audio)).astype(np.float32)
    soundfile.write(out, audio, RATE, subtype="PCM_16")
    return len(audio) / RATE


def start_server(checkpoint: str, name: str, rule2: float):
    """`asr serve CHECKPOINT` on a free loopback port, on a thread -> its URL."""
    from asr.inference import Recognizer
    from asr.serve import ServeConfig, create_app, run_server
    from asr.stream import EndpointConfig, EndpointRule

    recognizer = Recognizer.from_checkpoint(checkpoint)
    config = ServeConfig(endpoint=EndpointConfig(rule2=EndpointRule(True, rule2, 0.0)))
    app = create_app(recognizer, config, name=name)
    ready = threading.Event()
    ports: list[int] = []

    def listening(addresses) -> None:
        ports.append(addresses[0][1])
        ready.set()

    threading.Thread(target=run_server, args=(app, "127.0.0.1", 0, listening), daemon=True).start()
    if not ready.wait(120):
        raise SystemExit("the server did not start")
    return f"http://127.0.0.1:{ports[0]}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a streaming model's checkpoint (latency_controlled or unidirectional)")
    p.add_argument("--mic", nargs="+", required=True, help="wavs the fake microphone plays, in order")
    p.add_argument("--upload", nargs="+", required=True, help="wavs joined into the file the page uploads")
    p.add_argument("--format", default="srt", help="the upload's response format (default srt)")
    p.add_argument("--name", help="the model's id on the page (default: the checkpoint's file name)")
    p.add_argument("--pause", type=float, default=1.0, help="silence between the wavs, s (default 1)")
    p.add_argument("--noise", type=float, default=3e-4, help="the noise floor added, a standard deviation (default 3e-4, -70 dB)")
    p.add_argument("--rule2", type=float, default=0.5, help="endpoint after this much silence after speech, s (default 0.5: less than --pause)")
    p.add_argument("--size", default="1100,900", help="the page's viewport (the PNG), width,height (default 1100,900)")
    p.add_argument("--out", default="docs/serve-page.png")
    args = p.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    chromium, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        raise SystemExit("needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    work = Path(tempfile.mkdtemp(prefix="asr-shot-"))
    try:
        mic, upload = work / "microphone.wav", work / "recording.wav"
        seconds = join_wavs(args.mic, args.pause, args.noise, mic)
        join_wavs(args.upload, args.pause, args.noise, upload)
        url = start_server(args.checkpoint, args.name or Path(args.checkpoint).stem, args.rule2)

        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={args.size}",
                     "--hide-scrollbars", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                     f"--use-file-for-fake-audio-capture={mic}%noloop"):
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        try:
            width, height = (int(x) for x in args.size.split(","))
            browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
            browser.get(url + "/")
            wait = WebDriverWait(browser, 120, poll_frequency=0.05)
            wait.until(lambda d: d.find_element(By.ID, "model").text.startswith("model "))
            # the upload first (its result stays on the page), then the microphone
            browser.find_element(By.ID, "file").send_keys(str(upload))
            Select(browser.find_element(By.ID, "format")).select_by_value(args.format)
            browser.find_element(By.ID, "upload").click()
            wait.until(lambda d: d.find_element(By.ID, "output").is_displayed() or "error" in d.find_element(By.ID, "upload-status").get_attribute("class"))
            print(browser.find_element(By.ID, "upload-status").text, file=sys.stderr)

            browser.find_element(By.ID, "start").click()
            finals = lambda d: len(d.find_elements(By.CSS_SELECTOR, "#finals li"))  # noqa: E731
            wait.until(lambda d: finals(d) >= len(args.mic) - 1)
            # mid-way through the last one: a partial of five words or more
            WebDriverWait(browser, seconds + 30, poll_frequency=0.05).until(
                lambda d: len(d.find_element(By.ID, "partial").text.split()) >= 5 or finals(d) >= len(args.mic)
            )
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(args.out)
            print(f"wrote {args.out}: finals {[li.text for li in browser.find_elements(By.CSS_SELECTOR, '#finals li')]}, "
                  f"partial {browser.find_element(By.ID, 'partial').text!r}", file=sys.stderr)
            browser.find_element(By.ID, "stop").click()
            wait.until(lambda d: d.find_element(By.ID, "status").text == "idle")
        finally:
            browser.quit()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
