"""`asr serve`: recognition over HTTP and WebSocket, with a page (the optional `serve` extra:
aiohttp). `app.py` the routes and protocol, `engine.py` the threads that run the model."""

from asr.serve.app import ServeConfig, create_app, run_server  # noqa: F401
