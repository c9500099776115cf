"""Errors raised to users. Each names the file, field or input that caused it."""

from __future__ import annotations


class MMFurnaceError(Exception):
    """Base class for every error mmfurnace raises on purpose."""


class ConfigError(MMFurnaceError, ValueError):
    """A configuration value or key is wrong."""


class InputError(MMFurnaceError, ValueError):
    """An input (file, tensor, request, text) cannot be used as given."""


class UnsupportedFormat(InputError):
    """A file is in a format or encoding that is not read correctly (a server answers 415)."""


class MissingDependencyError(MMFurnaceError, ImportError):
    """An optional dependency (backend, extra) is not installed."""
