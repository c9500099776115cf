"""A guard around the decoders: whatever they raise on hostile bytes is the request's fault.

The decoders themselves (:mod:`mmfurnace.data.image`, :mod:`mmfurnace.data.audio`, shared with
training) name the problems they know — a corrupt image or EXIF block, a WAV sample format
libsndfile would not decode as declared (``UnsupportedFormat``: HTTP 415). Anything else a
library raises on bytes it was never meant to see (struct.error, a ValueError from a corrupt
header, ...) becomes an InputError naming the modality here, so a server answers 4xx, not 500.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from mmfurnace.errors import InputError


def guarded(modality: str, decode: Callable[..., Any], value: Any) -> Any:
    """``decode(value, source=modality)``; any exception that is not an InputError (the
    decoder failing on hostile bytes) becomes one naming ``modality``."""
    try:
        return decode(value, source=modality)
    except InputError:
        raise
    except (MemoryError, RecursionError, ValueError, TypeError, SyntaxError, OSError, struct.error,
            KeyError, IndexError, ZeroDivisionError, OverflowError, UnicodeError, RuntimeError) as exc:
        raise InputError(f"{modality}: cannot decode ({type(exc).__name__}: {exc})") from None
