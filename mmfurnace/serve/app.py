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
413 body over ``max_upload_bytes`` (Content-Length checked first, the stream counted too),
415 content type not accepted, 503 + Retry-After when shedding load, 504 on timeout.
Bad input never gives a 500; a 500 means a bug, and the server keeps serving after it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import mmfurnace
from mmfurnace.errors import InputError, MMFurnaceError
from mmfurnace.serve.config import ServeConfig
from mmfurnace.serve.engine import InferenceEngine
from mmfurnace.serve.errors import (
    NotReady,
    Overloaded,
    RequestTimeout,
    UnsupportedContentType,
)
from mmfurnace.serve.metrics import CONTENT_TYPE
from mmfurnace.serve.protocol import (
    HEADER_LENGTH,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
)
from mmfurnace.serve.uploads import form_row, media_type, parse_multipart

log = logging.getLogger("mmfurnace.serve")
INFER_CONTENT_TYPES = {None, "application/json", "application/octet-stream"}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: read a request body up to ``max_bytes`` and hand it on, or answer 413.

    A declared Content-Length over the limit is refused before reading; a body that streams
    past it (chunked, or lying about its length) is refused when it does. The excess is read
    and dropped (up to ``drain_bytes``) so the client sees the 413 instead of a reset socket.
    """

    def __init__(self, app: Any, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = min(64 << 20, 8 * max_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send, f"request body of {int(declared)} bytes", int(declared))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send, "request body", size, more=message.get("more_body", False))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: dict, receive: Any, send: Any, what: str, size: int, more: bool = True) -> None:
        drained = size if not more else 0
        while more and drained < self.drain_bytes:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            drained += len(message.get("body", b""))
            more = message.get("more_body", False)
        response = error_response(
            413, f"{what} exceeds max_upload_bytes ({self.max_bytes} bytes)",
            headers={"Connection": "close"} if more else None,
        )
        await response(scope, receive, send)


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


def create_app(engine: InferenceEngine, cfg: ServeConfig | None = None, *, manage_engine: bool = True) -> FastAPI:
    """The FastAPI app serving ``engine``. manage_engine: start/stop it with the app's lifespan
    (leave False when the caller runs the engine itself)."""
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

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        check_model(name, version)
        ctype = media_type(request.headers.get("content-type"))
        if ctype not in INFER_CONTENT_TYPES:
            raise UnsupportedContentType(
                f"/infer takes application/json (or the binary extension's application/octet-stream), got {ctype!r}"
            )
        _check_encoding(request)
        header = request.headers.get(HEADER_LENGTH)
        if header is not None and not header.strip().isdigit():
            raise InputError(f"{HEADER_LENGTH} must be an integer, got {header!r}")
        body = await request.body()
        call = parse_infer_request(
            body, sig, header_length=int(header) if header is not None else None, max_rows=cfg.max_request_rows
        )
        predictions = await engine.infer_many(call.rows)
        content, headers = encode_infer_response(call, sig, np.stack([p.logits for p in predictions]))
        return Response(content=content, headers=headers, media_type=headers["Content-Type"])

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        _check_encoding(request)
        body = await request.body()
        parts = parse_multipart(body, request.headers.get("content-type"))
        row = form_row(parts, sig.modalities, cfg.allowed_content_types)
        p = await engine.infer(row)
        return JSONResponse({  # a ready response: skips FastAPI's per-field re-encoding
            "model": sig.name,
            "label": p.label,
            "probabilities": {n: float(v) for n, v in zip(sig.class_names, p.probabilities, strict=True)},
            "modalities": sorted(row),
            "timings_ms": {k: round(v * 1000.0, 3) for k, v in p.timings.items()},
        })

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.add_middleware(BodyLimit, max_bytes=cfg.max_upload_bytes)
    app.add_middleware(CountRequests, count=count)  # outermost: sees every final status
    return app


def _check_encoding(request: Request) -> None:
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedContentType(f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed")


def _map_error(exc: MMFurnaceError) -> JSONResponse:
    if isinstance(exc, UnsupportedContentType):
        return error_response(415, str(exc))
    if isinstance(exc, InputError):
        return error_response(400, str(exc))
    if isinstance(exc, Overloaded):
        return error_response(503, str(exc), headers={"Retry-After": str(max(1, round(exc.retry_after_s)))})
    if isinstance(exc, NotReady):
        return error_response(503, str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, RequestTimeout):
        return error_response(504, str(exc))
    return error_response(400, str(exc))
