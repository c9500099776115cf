"""The /v1/predict contract: a multipart form with an image file, an audio file and/or text.

Fields: ``image`` (file), ``audio`` (file), ``text`` (a form field, or a text/plain file).
Parsed from the raw bytes with python-multipart, so a text field keeps its bytes and bad
UTF-8 is reported as such (form parsers that decode fields for you fall back to latin-1).
Each file's declared content type must be one the server allows for that modality.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
    data: bytearray = field(default_factory=bytearray)


def media_type(content_type: str | None) -> str | None:
    """"Type/Subtype; params" -> "type/subtype" (lower case), None when absent."""
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def parse_multipart(body: bytes, content_type: str | None) -> list[Part]:
    """Split a multipart/form-data body into its parts; InputError when it is malformed."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise UnsupportedContentType(
            f"/v1/predict takes multipart/form-data (image/audio files, text field), got {media_type(content_type)!r}"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise InputError("multipart body has no boundary parameter in its Content-Type")
    parts: list[Part] = []
    header = {"field": bytearray(), "value": bytearray()}

    def begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise InputError(f"multipart body has more than {MAX_PARTS} parts")
        parts.append(Part())

    def header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def header_end() -> None:
        name = bytes(header["field"]).decode("latin-1").strip().lower()
        value = bytes(header["value"]).decode("latin-1")
        header["field"], header["value"] = bytearray(), bytearray()
        part = parts[-1]
        if name == "content-type":
            part.content_type = value
        elif name == "content-disposition":
            _, options = parse_options_header(value)
            part.name = options.get(b"name", b"").decode("utf-8", "replace")
            if b"filename" in options:
                part.filename = options[b"filename"].decode("utf-8", "replace")

    def part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data += data[start:end]

    callbacks = {
        "on_part_begin": begin, "on_header_field": header_field, "on_header_value": header_value,
        "on_header_end": header_end, "on_part_data": part_data,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except InputError:
        raise
    except Exception as err:  # python-multipart's MultipartParseError and friends
        raise InputError(f"malformed multipart body: {err}") from None
    return parts


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
        data = bytes(part.data)
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
