"""Errors the serving path raises on purpose; the HTTP app maps each to one status code."""

from __future__ import annotations

from mmfurnace.errors import InputError, MMFurnaceError, UnsupportedFormat


class Overloaded(MMFurnaceError):
    """A queue or the concurrency limit is full: the request was shed at once (HTTP 503)."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeout(MMFurnaceError, TimeoutError):
    """The request did not finish within its deadline (HTTP 504)."""


class NotReady(MMFurnaceError):
    """The engine has not been started, or is shutting down (HTTP 503)."""


class UnsupportedContentType(UnsupportedFormat):
    """A request or an uploaded file has a content type the server does not accept (HTTP 415)."""


class NonFiniteOutput(InputError):
    """The model gave NaN/inf for a row — its input is far outside what the model was trained
    on (e.g. finite but huge tensor values): HTTP 422, never a bare NaN in JSON."""


NON_FINITE = ("the model's output is not finite (NaN/inf) for this input: its values are far outside "
              "the range the model was trained on")


class WorkerFailed(MMFurnaceError):
    """A worker process died or failed while running a batch (HTTP 500; it is restarted)."""
