"""The HTTP app: KServe v2 / Open Inference Protocol routes, /v1/predict, health, /metrics.

    GET  /v2                              server metadata
    GET  /v2/health/live                  200 while the process runs
    GET  /v2/health/ready                 200 once the engine is started, else 503
    GET  /v2/models/{name}[/versions/v]   model metadata (inputs, outputs, classes, stages)
    GET  /v2/models/{name}[/versions/v]/ready
    POST /v2/models/{name}[/versions/v]/infer   v2 JSON, or JSON + binary tensors
    POST /v1/predict                      multipart: image file, audio file, text field
    GET  /metrics                         Prometheus text format (the engine's registry)

Errors are JSON ``{"error": "..."}`` naming the problem: 400 bad input, 404 unknown model,
413 body over ``max_upload_bytes`` (a declared Content-Length at once, before any byte of the
body is read or a 100 Continue sent; a chunked stream when it passes the limit), 415 content
type or media format not accepted, 422 a model output that is not finite, 503 + Retry-After
when shedding load, 504 on timeout. Bad input never gives a 500; a 500 means a bug, and the
server keeps serving after it.

The two inference routes are served by :class:`InferenceRoutes`, a plain ASGI handler in
front of FastAPI: it sheds load at the door (latency budget, before the body is read), reads
the body, parses it and answers, with none of a framework's per-request routing, request
objects and middleware stack on the event loop. Everything else (health, metadata,
/metrics) is a FastAPI route. A request may carry its own deadline: ``X-Request-Timeout-Ms``
(or, on /infer, the v2 ``parameters.timeout`` in microseconds, as Triton's clients send it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import mmfurnace
from mmfurnace.errors import MMFurnaceError
from mmfurnace.serve.config import ServeConfig
from mmfurnace.serve.engine import InferenceEngine
from mmfurnace.serve.metrics import CONTENT_TYPE
from mmfurnace.serve.protocol import model_metadata
from mmfurnace.serve.routes import InferenceRoutes, error_answer

log = logging.getLogger("mmfurnace.serve")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class CountRequests:
    """ASGI middleware: count each HTTP response by route template and status code, and turn
    an unexpected exception into a logged 500 JSON answer on a connection that stays usable
    (re-raised to the server, it would close the connection under the client). A plain ASGI
    wrapper: Starlette's BaseHTTPMiddleware costs a task group per request."""

    def __init__(self, app: Any, *, count: Any) -> None:
        self.app = app
        self.count = count

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, started = 500, False

        async def send_status(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception as exc:
            if started:
                raise
            log.exception("unhandled error while serving %s", scope.get("path"))
            response = error_response(500, f"internal error ({type(exc).__name__}); see the server log")
            await response(scope, receive, send)
        finally:
            # A request refused before routing (413 from BodyLimit) has no route template.
            self.count(getattr(scope.get("route"), "path", "unmatched"), status)


def create_app(engine: InferenceEngine, cfg: ServeConfig | None = None, *, manage_engine: bool = True) -> Any:
    """The ASGI app serving ``engine``: the inference routes (:mod:`mmfurnace.serve.routes`)
    in front of a FastAPI app with the rest. manage_engine: start/stop the engine with the
    app's lifespan (leave False when the caller runs the engine itself)."""
    cfg = cfg or engine.cfg
    sig = engine.signature
    metrics = engine.metrics

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_engine:
            await engine.start()
        try:
            yield
        finally:
            if manage_engine:
                await engine.stop()

    app = FastAPI(title="mmfurnace", version=mmfurnace.__version__, lifespan=lifespan)

    def count(route: str, status: int) -> None:
        metrics.requests.labels(route, str(status)).inc()

    @app.exception_handler(MMFurnaceError)
    async def on_error(_: Request, exc: MMFurnaceError) -> JSONResponse:
        return _map_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        return error_response(400, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")

    def check_model(name: str, version: str | None = None) -> None:
        if name != sig.name:
            raise StarletteHTTPException(404, f"unknown model {name!r}; this server serves {sig.name!r}")
        if version is not None and version != sig.version:
            raise StarletteHTTPException(404, f"model {name!r} has no version {version!r}; it has {sig.version!r}")

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "mmfurnace", "version": mmfurnace.__version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        if not engine.ready:
            return error_response(503, "engine is not ready")
        return JSONResponse({"ready": True})

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(name: str, version: str | None = None) -> dict[str, Any]:
        check_model(name, version)
        return {**model_metadata(sig), "engine": engine.describe()}

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> Response:
        check_model(name, version)
        if not engine.ready:
            return error_response(503, f"model {name!r} is not ready")
        return JSONResponse({"name": name, "ready": True})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.add_middleware(CountRequests, count=count)  # sees every final status of the other routes
    return InferenceRoutes(app, engine, max_bytes=cfg.max_upload_bytes, max_rows=cfg.max_request_rows,
                           allowed_types=cfg.allowed_content_types, count=count)


def _map_error(exc: MMFurnaceError) -> JSONResponse:
    status, body, headers = error_answer(exc)
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})  # type: ignore[return-value]
