"""Checks on uploaded media before a decoder sees it, and a guard around the decoders.

Decoders (Pillow, libsndfile) accept some files they do not decode correctly, and raise
exception types of their own on others; on a server every such case is the request's fault
and must be a 4xx naming the modality, not a 500:
  * WAV: libsndfile reads PCM with a bit depth that is not a whole number of bytes (7, 12,
    17 bits per sample) as the next byte width, so the samples come out scaled wrong. Plain
    PCM must be 8/16/24/32 bits, IEEE float 32/64, A-law/u-law 8 (WAVE_FORMAT_EXTENSIBLE
    carries its valid bits separately and libsndfile decodes it correctly).
  * Anything a decoder raises that is not an InputError (e.g. Pillow's SyntaxError for
    garbage EXIF, struct.error, ValueError from a corrupt header) becomes an InputError.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from mmfurnace.errors import InputError
from mmfurnace.serve.errors import UnsupportedContentType

# WAVE format tag -> bits per sample libsndfile decodes correctly for it.
_WAV_BITS: dict[int, tuple[int, ...]] = {
    0x0001: (8, 16, 24, 32),  # PCM
    0x0003: (32, 64),  # IEEE float
    0x0006: (8,),  # A-law
    0x0007: (8,),  # u-law
}
_WAV_EXTENSIBLE = 0xFFFE


def check_wav(data: bytes, where: str) -> None:
    """Raise UnsupportedContentType (HTTP 415) when ``data`` is a RIFF/WAVE file whose sample
    format libsndfile would decode wrongly; other containers pass untouched."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(data):
        kind, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if kind == b"fmt ":
            if size < 16 or pos + 8 + 16 > len(data):
                raise InputError(f"{where}: WAV fmt chunk is truncated ({size} bytes)")
            tag, _, _, _, _, bits = struct.unpack_from("<HHIIHH", data, pos + 8)
            _check_format(tag, bits, where)
            return
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    raise InputError(f"{where}: WAV file has no fmt chunk")


def _check_format(tag: int, bits: int, where: str) -> None:
    if tag == _WAV_EXTENSIBLE:
        return
    allowed = _WAV_BITS.get(tag)
    if allowed is None:
        return  # compressed formats (ADPCM, GSM, MP3): libsndfile decodes them or refuses
    if bits not in allowed:
        raise UnsupportedContentType(
            f"{where}: WAV sample format {bits} bits per sample (format tag {tag:#06x}) is not "
            "decoded correctly; send 8/16/24/32-bit PCM, 32/64-bit float, A-law or u-law"
        )


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
