"""The inference routes as plain ASGI: POST /v1/predict and POST /v2/models/{name}[/versions/v]/infer.

Per request, in this order (each step refuses as early and as cheaply as it can):
    content type (415) -> declared Content-Length (413, at once, Connection: close)
    -> admission at the door (503 + Retry-After; the body is never read)
    -> body (413 when a chunked stream passes the limit) -> parse (400/415)
    -> engine (400/415/422 bad input, 503 shed, 504 deadline) -> JSON answer
Every other request goes on to the FastAPI app. Responses are counted by route and status.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from mmfurnace.errors import InputError, MMFurnaceError, UnsupportedFormat
from mmfurnace.serve.errors import (
    NonFiniteOutput,
    NotReady,
    Overloaded,
    RequestTimeout,
    UnsupportedContentType,
)
from mmfurnace.serve.protocol import HEADER_LENGTH, encode_infer_response, parse_infer_request
from mmfurnace.serve.uploads import form_row, media_type, parse_multipart

log = logging.getLogger("mmfurnace.serve")
INFER_CONTENT_TYPES = {None, "application/json", "application/octet-stream"}
_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
DEADLINE_HEADER = "x-request-timeout-ms"


class BodyTooLarge(InputError):
    """The body is over max_upload_bytes (HTTP 413)."""


Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]


def json_answer(status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> Answer:
    # allow_nan=False: a bare NaN is not JSON; the engine refuses non-finite outputs before this.
    return status, json.dumps(payload, allow_nan=False).encode(), [(b"content-type", b"application/json"), *(headers or [])]


def error_answer(exc: BaseException) -> Answer:
    """The status, body and headers that answer an exception (see the app's docstring)."""
    if isinstance(exc, BodyTooLarge):
        return json_answer(413, {"error": str(exc)}, [(b"connection", b"close")])
    if isinstance(exc, UnsupportedFormat):  # incl. UnsupportedContentType
        return json_answer(415, {"error": str(exc)})
    if isinstance(exc, NonFiniteOutput):
        return json_answer(422, {"error": str(exc)})
    if isinstance(exc, Overloaded | NotReady):
        retry = str(max(1, round(getattr(exc, "retry_after_s", 1)))).encode()
        return json_answer(503, {"error": str(exc)}, [(b"retry-after", retry)])
    if isinstance(exc, RequestTimeout):
        return json_answer(504, {"error": str(exc)})
    if isinstance(exc, MMFurnaceError):
        return json_answer(400, {"error": str(exc)})
    log.error("unhandled error while serving a request", exc_info=exc)
    return json_answer(500, {"error": f"internal error ({type(exc).__name__}); see the server log"})


class InferenceRoutes:
    """ASGI: the inference routes of ``engine``; anything else goes to ``app`` (FastAPI).

    count(route, status) is called once per answered request.
    """

    def __init__(self, app: Any, engine: Any, *, max_bytes: int, max_rows: int,
                 allowed_types: Any, count: Callable[[str, int], None]) -> None:
        self.app, self.engine = app, engine
        self.max_bytes, self.max_rows, self.allowed_types = max_bytes, max_rows, allowed_types
        self.count = count
        self.drain_bytes = min(64 << 20, 8 * max_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        handler: Callable[..., Awaitable[Answer]]
        if path == "/v1/predict":
            route, handler, args = "/v1/predict", self._predict, ()
        else:
            match = _INFER.fullmatch(path)
            if match is None:
                await self.app(scope, receive, send)
                return
            name, version = match.groups()
            route = "/v2/models/{name}/versions/{version}/infer" if version else "/v2/models/{name}/infer"
            handler, args = self._infer, (name, version)
        headers = _headers(scope)
        try:
            answer = await handler(headers, receive, *args)
        except Exception as exc:  # noqa: BLE001 - every error becomes one mapped answer
            answer = error_answer(exc)
            if isinstance(exc, BodyTooLarge) and not exc.args[0].startswith("declared"):
                await self._drain(receive)
        status, body, extra = answer
        self.count(route, status)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode()), *extra]})
        await send({"type": "http.response.body", "body": body})

    # -- the two routes ---------------------------------------------------------------------

    async def _predict(self, headers: dict[str, str], receive: Any) -> Answer:
        ctype = headers.get("content-type")
        if media_type(ctype) != "multipart/form-data":
            raise UnsupportedContentType(
                f"/v1/predict takes multipart/form-data (image/audio files, text field), got {media_type(ctype)!r}")
        deadline = self._door(headers, rows=1)
        parts = parse_multipart(await self._body(receive), ctype)
        sig = self.engine.signature
        row = form_row(parts, sig.modalities, self.allowed_types)
        p = await self.engine.infer(row, deadline_s=deadline)
        return json_answer(200, {
            "model": sig.name,
            "label": p.label,
            "probabilities": {n: float(v) for n, v in zip(sig.class_names, p.probabilities, strict=True)},
            "modalities": sorted(row),
            "timings_ms": {k: round(v * 1000.0, 3) for k, v in p.timings.items()},
        })

    async def _infer(self, headers: dict[str, str], receive: Any, name: str, version: str | None) -> Answer:
        sig = self.engine.signature
        if name != sig.name:
            return json_answer(404, {"error": f"unknown model {name!r}; this server serves {sig.name!r}"})
        if version is not None and version != sig.version:
            return json_answer(404, {"error": f"model {name!r} has no version {version!r}; it has {sig.version!r}"})
        ctype = media_type(headers.get("content-type"))
        if ctype not in INFER_CONTENT_TYPES:
            raise UnsupportedContentType(
                f"/infer takes application/json (or the binary extension's application/octet-stream), got {ctype!r}")
        header = headers.get(HEADER_LENGTH.lower())
        if header is not None and not header.strip().isdigit():
            raise InputError(f"{HEADER_LENGTH} must be an integer, got {header!r}")
        deadline = self._door(headers, rows=1)
        call = parse_infer_request(await self._body(receive), sig,
                                   header_length=int(header) if header is not None else None, max_rows=self.max_rows)
        if call.timeout_s is not None:
            deadline = call.timeout_s if deadline is None else min(deadline, call.timeout_s)
        predictions = await self.engine.infer_many(call.rows, deadline_s=deadline)
        body, out_headers = encode_infer_response(call, sig, np.stack([p.logits for p in predictions]))
        return 200, body, [(k.lower().encode(), v.encode()) for k, v in out_headers.items()]

    # -- shared steps -----------------------------------------------------------------------

    def _door(self, headers: dict[str, str], rows: int) -> float | None:
        """Encoding, declared length, the request's deadline, then admission; its deadline (s)."""
        encoding = (headers.get("content-encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise UnsupportedContentType(f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed")
        declared = headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            raise BodyTooLarge(f"declared request body of {int(declared)} bytes exceeds max_upload_bytes "
                               f"({self.max_bytes} bytes)")
        deadline = deadline_header(headers.get(DEADLINE_HEADER))
        self.engine.admit(rows, deadline)
        return deadline

    async def _body(self, receive: Any) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InputError("client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise BodyTooLarge(f"request body exceeds max_upload_bytes ({self.max_bytes} bytes)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _drain(self, receive: Any) -> None:
        """Read and drop what a client streams past the limit (up to drain_bytes), so it sees
        the 413 instead of a reset connection."""
        drained = 0
        while drained < self.drain_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


def _headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


def deadline_header(value: str | None) -> float | None:
    """``X-Request-Timeout-Ms`` -> seconds (None when absent); InputError when not a positive number."""
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        ms = float("nan")
    if not 0 < ms <= 3_600_000:
        raise InputError(f"{DEADLINE_HEADER} must be a number of milliseconds in (0, 3600000], got {value!r}")
    return ms / 1000.0
