"""The hostile-input corpus over real HTTP: every case is a 4xx whose message names the problem
(or a valid answer where the input is valid), the server keeps serving, and its answers to a
fixed request are the same before and after."""

from __future__ import annotations

import base64
import json
import socket
import struct
import time
import zlib

import httpx
import numpy as np
import pytest

from mmfurnace.serve.config import ServeConfig
from mmfurnace.serve.engine import InferenceEngine
from mmfurnace.serve.server import BackgroundServer

from .conftest import png_bytes, wav_bytes

MAX_UPLOAD = 256 * 1024
INFER = "/v2/models/mmfurnace/infer"


@pytest.fixture(scope="module")
def server(export_dir):
    cfg = ServeConfig(max_upload_bytes=MAX_UPLOAD, preprocess_workers=1)
    with BackgroundServer(InferenceEngine.from_export(export_dir, cfg)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


REFERENCE = {"image": ("r.png", png_bytes(3), "image/png"), "audio": ("r.wav", wav_bytes(500), "audio/wav")}


def reference_answer(client) -> dict:
    r = client.post("/v1/predict", files=REFERENCE, data={"text": "three"})
    assert r.status_code == 200, r.text
    return r.json()["probabilities"]


def png_with_exif(exif: bytes) -> bytes:
    png = png_bytes(5)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return png[:33] + chunk(b"eXIf", exif) + png[33:]  # after the IHDR chunk


def wav_header(bits: int, fmt: int = 1, data: bytes = bytes(range(256)) * 40) -> bytes:
    block = max(1, (bits + 7) // 8)
    fmt_chunk = struct.pack("<HHIIHH", fmt, 1, 16000, 16000 * block, block, bits)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt_chunk) + 8 + len(data)) + b"WAVE" + b"fmt "
            + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + b"data" + struct.pack("<I", len(data)) + data)


def nested(depth: int) -> bytes:
    return b'{"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": ' + b"[" * depth + b"]" * depth + b"}]}"


def v2(*inputs: dict, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def image_tensor(value, datatype: str = "FP32") -> dict:
    return {"name": "image", "shape": [1, 1, 28, 28], "datatype": datatype, "data": [value] * 784}


# case -> (route, body or files, expected status, words in the error)
CASES = {
    "png with garbage exif": ("multipart", {"image": ("x.png", png_with_exif(b"garbage!garbage!"), "image/png")}, 400, "image"),
    "7-bit wav": ("multipart", {"audio": ("x.wav", wav_header(7), "audio/wav")}, 415, "7 bits per sample"),
    "12-bit wav": ("multipart", {"audio": ("x.wav", wav_header(12), "audio/wav")}, 415, "12 bits per sample"),
    "wav without fmt chunk": ("multipart", {"audio": ("x.wav", b"RIFF\x10\x00\x00\x00WAVEdata\x00\x00\x00\x00", "audio/wav")}, 400, "audio"),
    "lone surrogate in v2 text": ("v2", b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a\\ud800b"]}]}', 400, "lone surrogate"),
    "json nested 5,000 deep": ("v2", nested(5_000), 400, "nested too deeply"),
    "json nested 100,000 deep": ("v2", nested(100_000), 400, "nested too deeply"),
    "data nested deeper than shape": ("v2", v2({"name": "text", "shape": [1, 2], "datatype": "INT64", "data": [[[1, 2]]]}), 400, "nested deeper"),
    "binary shape product overflows": ("binary", ({"inputs": [{"name": "image", "shape": [2**40, 2**40, 2**40], "datatype": "FP32",
                                                               "parameters": {"binary_data_size": 8}}]}, b"\0" * 8), 400, "needs"),
    "numeric strings as FP32": ("v2", v2(image_tensor("0.5")), 400, "FP32 data must be JSON numbers; got strings"),
    "booleans as FP32": ("v2", v2(image_tensor(True)), 400, "got booleans"),
    "floats as INT64": ("v2", v2({"name": "text", "shape": [1, 2], "datatype": "INT64", "data": [1.5, 2.0]}), 400, "INT64 data must be JSON integers; got floats"),
    "integers as BOOL": ("v2", v2({"name": "text", "shape": [1], "datatype": "BYTES", "data": ["one"]},
                                  {"name": "text_present", "shape": [1], "datatype": "BOOL", "data": [1]}), 400, "BOOL data must be true/false"),
    "INT64 out of range": ("v2", v2({"name": "text", "shape": [1, 1], "datatype": "INT64", "data": [2**70]}), 400, "does not fit INT64"),
    "huge finite FP32 inputs": ("v2", v2(image_tensor(3.0e38)), 422, "not finite"),
    "FP32 beyond float32 range": ("v2", v2(image_tensor(1e300)), 400, "does not fit FP32"),
    "bad timeout parameter": ("v2", v2({"name": "text", "shape": [1], "datatype": "BYTES", "data": ["one"]}, parameters={"timeout": "soon"}), 400, "parameters.timeout"),
    "bad deadline header": ("multipart-deadline", {"text": (None, b"one")}, 400, "x-request-timeout-ms"),
    "shape given as strings": ("v2", v2({"name": "text", "shape": ["1"], "datatype": "BYTES", "data": ["one"]}), 400, "shape"),
    "b64 object that is not base64": ("v2", v2({"name": "image", "shape": [1], "datatype": "BYTES", "data": [{"b64": "%%"}]}), 400, "base64"),
    "multipart without closing boundary": ("raw-multipart", b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\none', 400, "closing boundary"),
    "multipart header without colon": ("raw-multipart", b"--b\r\nnonsense\r\n\r\none\r\n--b--\r\n", 400, "without ':'"),
}


def send(client, kind: str, payload) -> httpx.Response:
    if kind == "multipart":
        return client.post("/v1/predict", files=payload)
    if kind == "multipart-deadline":
        return client.post("/v1/predict", files=payload, headers={"X-Request-Timeout-Ms": "-5"})
    if kind == "raw-multipart":
        return client.post("/v1/predict", content=payload, headers={"Content-Type": "multipart/form-data; boundary=b"})
    if kind == "binary":
        head, blob = payload
        head = json.dumps(head).encode()
        return client.post(INFER, content=head + blob, headers={"Inference-Header-Content-Length": str(len(head))})
    return client.post(INFER, content=payload, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_hostile_input_is_a_4xx_naming_the_problem(client, case) -> None:
    before = reference_answer(client)
    kind, payload, status, words = CASES[case]
    r = send(client, kind, payload)
    assert r.status_code == status, r.text
    assert words.lower() in r.json()["error"].lower()
    assert reference_answer(client) == before  # still serving, same answer


VALID = {
    "png with harmless exif": {"image": ("x.png", png_with_exif(b"MM\x00*\x00\x00\x00\x08\x00\x00"), "image/png")},
    "16-bit wav": {"audio": ("x.wav", wav_bytes(400), "audio/wav")},
    "8-bit unsigned wav": {"audio": ("x.wav", wav_header(8), "audio/wav")},
}


@pytest.mark.parametrize("case", list(VALID), ids=list(VALID))
def test_valid_edge_inputs_are_answered(client, case) -> None:
    r = client.post("/v1/predict", files=VALID[case])
    assert r.status_code == 200, r.text
    assert abs(sum(r.json()["probabilities"].values()) - 1.0) < 1e-5


def test_v2_json_bytes_as_triton_clients_send_them(client) -> None:
    """A file in JSON mode: standard base64, URL-safe without padding, wrapped in newlines,
    or {"b64": ...}; all give the binary extension's answer."""
    png = png_bytes(8)
    png_b64 = base64.b64encode(png).decode()
    forms = [png_b64, base64.urlsafe_b64encode(png).decode().rstrip("="),
             "\n".join(png_b64[i:i + 76] for i in range(0, len(png_b64), 76)), {"b64": png_b64}]
    answers = []
    for form in forms:
        r = client.post(INFER, content=v2({"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": [[form]]},
                                          outputs=[{"name": "logits"}]))
        assert r.status_code == 200, r.text
        answers.append(r.json()["outputs"][0]["data"])
    head = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 4 + len(png)}}], "outputs": [{"name": "logits"}]}).encode()
    r = client.post(INFER, content=head + struct.pack("<I", len(png)) + png,
                    headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 200, r.text
    assert all(a == r.json()["outputs"][0]["data"] for a in answers)


def raw_exchange(server, head: bytes, body: bytes = b"", wait_s: float = 5.0) -> tuple[float, bytes]:
    """Send ``head`` (+ ``body``) on a fresh socket; (seconds until the answer, its bytes)."""
    with socket.create_connection((server.host, server.port), timeout=wait_s) as s:
        t0 = time.monotonic()
        s.sendall(head + body)
        data = s.recv(65536)
        return time.monotonic() - t0, data


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
def test_declared_oversize_body_is_413_at_once(server, client, expect) -> None:
    before = reference_answer(client)
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000000000\r\n" + (b"Expect: 100-continue\r\n" if expect else b"") + b"\r\n")
    seconds, answer = raw_exchange(server, head, b"" if expect else b"x" * 1000)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]  # no "100 Continue" first
    assert b"max_upload_bytes" in answer
    assert seconds < 3.0
    assert reference_answer(client) == before


def test_deadline_header_sheds_what_cannot_make_it(export_dir) -> None:
    """A request whose own deadline is shorter than the work queued ahead is a 503 at once."""
    cfg = ServeConfig(preprocess_workers=1, latency_budget_ms=None)
    engine = InferenceEngine.from_export(export_dir, cfg)
    with BackgroundServer(engine) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.post("/v1/predict", files={"text": (None, b"one")}).status_code == 200  # times a batch
        engine.admission.stages["model"].per_row_s = 1.0  # as if each row took a second
        engine.gate.inflight += 3  # three rows ahead
        try:
            r = c.post("/v1/predict", files={"text": (None, b"one")}, headers={"X-Request-Timeout-Ms": "500"})
            assert r.status_code == 503, r.text
            assert "request deadline" in r.json()["error"]
            assert r.headers["retry-after"] == "1"
        finally:
            engine.gate.inflight -= 3
        assert c.post("/v1/predict", files={"text": (None, b"one")}, headers={"X-Request-Timeout-Ms": "5000"}).status_code == 200


def test_non_finite_logits_never_reach_json(client) -> None:
    r = client.post(INFER, content=v2(image_tensor(3.0e38)))
    assert r.status_code == 422
    json.loads(r.text, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON answer"))
    assert all(np.isfinite(list(reference_answer(client).values())))


def test_image_decoder_errors_of_any_type_are_input_errors() -> None:
    from mmfurnace.errors import InputError
    from mmfurnace.serve.media import guarded

    def explode(value, source):
        raise SyntaxError("not a TIFF file")

    with pytest.raises(InputError, match="image: cannot decode"):
        guarded("image", explode, b"x")
