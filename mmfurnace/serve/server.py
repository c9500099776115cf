"""Running the HTTP app: in the foreground (``mmfurnace serve``) or in a background thread.

:class:`BackgroundServer` runs uvicorn on its own event loop in a daemon thread, bound to a
free loopback port — what tests and ``benchmarks/serve_load.py`` use to talk real HTTP to an
in-process server.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from mmfurnace.serve.app import create_app
from mmfurnace.serve.config import ServeConfig
from mmfurnace.serve.engine import InferenceEngine


def run_server(
    export_dir: str | Path,
    cfg: ServeConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    tokenizer: Any | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``export_dir`` over HTTP with uvicorn until interrupted (``mmfurnace serve``)."""
    import uvicorn

    cfg = cfg or ServeConfig()
    engine = InferenceEngine.from_export(export_dir, cfg, tokenizer=tokenizer)
    uvicorn.run(create_app(engine, cfg), host=host, port=port, log_level=log_level, access_log=False)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BackgroundServer:
    """uvicorn serving ``engine`` from a daemon thread on ``host``:``port`` (default: a free port).

        with BackgroundServer(engine) as server:
            httpx.get(server.url + "/v2/health/ready")
    """

    def __init__(self, engine: InferenceEngine, cfg: ServeConfig | None = None, *, host: str = "127.0.0.1",
                 port: int | None = None, startup_timeout_s: float = 120.0) -> None:
        import uvicorn

        self.engine = engine
        self.host = host
        self.port = port or free_port(host)
        config = uvicorn.Config(
            create_app(engine, cfg), host=host, port=self.port, log_level="warning", access_log=False,
            lifespan="on", timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.startup_timeout_s = startup_timeout_s
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not (self.server.started and self.engine.ready):
            if not self._thread.is_alive():
                raise RuntimeError(f"server on {self.url} exited during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server on {self.url} did not start within {self.startup_timeout_s:g} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
