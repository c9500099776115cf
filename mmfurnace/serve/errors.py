"""Errors the serving path raises on purpose; the HTTP app maps each to one status code."""

from __future__ import annotations

from mmfurnace.errors import InputError, MMFurnaceError


class Overloaded(MMFurnaceError):
    """A queue or the concurrency limit is full: the request was shed at once (HTTP 503)."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeout(MMFurnaceError, TimeoutError):
    """The request did not finish within its deadline (HTTP 504)."""


class NotReady(MMFurnaceError):
    """The engine has not been started, or is shutting down (HTTP 503)."""


class UnsupportedContentType(InputError):
    """A request or an uploaded file has a content type the server does not accept (HTTP 415)."""
