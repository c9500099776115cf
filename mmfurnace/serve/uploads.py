"""The /v1/predict contract: a multipart form with an image file, an audio file and/or text.

Fields: ``image`` (file), ``audio`` (file), ``text`` (a form field, or a text/plain file).
Parsed from the raw bytes here (not by a form library), so a text field keeps its bytes and
bad UTF-8 is reported as such (form parsers that decode fields for you fall back to latin-1).
Each file's declared content type must be one the server allows for that modality.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mmfurnace.errors import InputError
from mmfurnace.serve.errors import UnsupportedContentType
from mmfurnace.serve.signature import Row, decode_text

MAX_PARTS = 16


@dataclass
class Part:
    """One form part: field name, file name (None for a plain field), content type, bytes."""

    name: str = ""
    filename: str | None = None
    content_type: str | None = None
    data: bytes = b""


def media_type(content_type: str | None) -> str | None:
    """"Type/Subtype; params" -> "type/subtype" (lower case), None when absent."""
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


# name=value parameters of a header (value a token or a quoted string).
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_ESCAPED = re.compile(r"\\(.)")


def header_params(value: str) -> dict[str, str]:
    """``type; a=1; b="x y"`` -> {"a": "1", "b": "x y"} (names lower-cased, quotes removed)."""
    out = {}
    for name, raw in _PARAM.findall(value):
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1]
            if "\\" in raw:  # quoted-pair; most values have none (the per-call re.sub showed in profiles)
                raw = _ESCAPED.sub(r"\1", raw)
        out[name.lower()] = raw
    return out


def parse_multipart(body: bytes, content_type: str | None) -> list[Part]:
    """Split a multipart/form-data body (RFC 7578) into its parts; InputError when it is
    malformed. The parts are found with ``bytes.find`` (C speed, no per-byte callbacks): on
    the server this runs on the event loop, where python-multipart took 69 us per request
    and this takes a tenth of that."""
    if media_type(content_type) != "multipart/form-data":
        raise UnsupportedContentType(
            f"/v1/predict takes multipart/form-data (image/audio files, text field), got {media_type(content_type)!r}"
        )
    boundary = header_params(content_type or "").get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise InputError("multipart body has no (valid) boundary parameter in its Content-Type")
    delim = b"--" + boundary.encode("latin-1", "replace")
    first = body.find(delim)
    if first < 0:
        raise InputError("malformed multipart body: the boundary of its Content-Type never occurs")
    parts: list[Part] = []
    pos = first + len(delim)
    while True:
        if body.startswith(b"--", pos):
            return parts
        if not body.startswith(b"\r\n", pos):
            raise InputError(f"malformed multipart body: expected CRLF after the boundary at byte {pos}")
        if len(parts) >= MAX_PARTS:
            raise InputError(f"multipart body has more than {MAX_PARTS} parts")
        head_end = body.find(b"\r\n\r\n", pos + 2)
        if head_end < 0:
            raise InputError(f"malformed multipart body: part {len(parts)} has no end of headers")
        part = _part_headers(body[pos + 2 : head_end], len(parts))
        close = body.find(b"\r\n" + delim, head_end + 4)
        if close < 0:
            raise InputError(f"malformed multipart body: part {len(parts)} has no closing boundary")
        part.data = body[head_end + 4 : close]
        parts.append(part)
        pos = close + 2 + len(delim)


def _part_headers(block: bytes, index: int) -> Part:
    part = Part()
    for line in block.split(b"\r\n") if block else []:
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise InputError(f"malformed multipart body: part {index} has a header line without ':'")
        name, value = name.strip().lower(), value.strip()
        if name == "content-type":
            part.content_type = value
        elif name == "content-disposition":
            options = header_params(value)
            part.name = _utf8(options.get("name", ""))
            if "filename" in options:
                part.filename = _utf8(options["filename"])
    return part


def _utf8(latin: str) -> str:
    """Header values were read as latin-1; browsers send names as UTF-8 bytes."""
    return latin.encode("latin-1").decode("utf-8", "replace")


def form_row(
    parts: Sequence[Part], modalities: Sequence[str], allowed: Mapping[str, Sequence[str]]
) -> Row:
    """The row a /v1/predict form describes; raises InputError / UnsupportedContentType."""
    row: Row = {}
    for part in parts:
        m = part.name
        if m not in modalities:
            raise InputError(f"unknown form field {m!r}; this model takes {', '.join(modalities)}")
        if m in row:
            raise InputError(f"form field {m!r} given twice")
        is_file = part.filename is not None
        if is_file:
            ctype = media_type(part.content_type)
            accepted = list(allowed.get(m, ()))
            if ctype not in accepted:
                raise UnsupportedContentType(
                    f"{m}: content type {ctype!r} of file {part.filename!r} is not accepted; "
                    f"allowed: {', '.join(accepted) or 'none'}"
                )
        data = part.data
        if m == "text":
            row[m] = decode_text(data, "text")
        elif not is_file:
            raise InputError(f"{m}: upload it as a file (multipart part with a filename), not a form field")
        elif not data:
            raise InputError(f"{m}: uploaded file {part.filename!r} is empty")
        else:
            row[m] = data
    if not row:
        raise InputError(f"no modality in the form; send at least one of {', '.join(modalities)}")
    return row
