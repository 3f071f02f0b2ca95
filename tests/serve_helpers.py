"""An `asr serve` app running in the test process, on a loopback port of its own, so that tests
can talk to it with real clients (requests, websockets, Chromium) and look inside it (its engine)."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from asr.serve import ServeConfig, create_app
from asr.serve.app import SERVER


class RunningServer:
    """`with RunningServer(recognizer, config) as server:` serves on http://127.0.0.1:<server.port>."""

    def __init__(self, recognizer, config: ServeConfig | None = None, stream_recognizer=None):
        self.app = create_app(recognizer, config, stream_recognizer, name="test-model")
        self.server = self.app[SERVER]  # its engine, transcriber, limits
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def __enter__(self) -> "RunningServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"
