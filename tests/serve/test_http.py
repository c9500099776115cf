"""The HTTP app against a live uvicorn server on 127.0.0.1: tritonclient (v2, binary and
JSON), multipart /v1/predict with real files, bad input -> 4xx with a message, /metrics."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
import torch

from mmfurnace.serve.config import ServeConfig
from mmfurnace.serve.engine import InferenceEngine
from mmfurnace.serve.server import BackgroundServer

from .conftest import png_bytes, wav_bytes

th = pytest.importorskip("tritonclient.http")

MAX_UPLOAD = 256 * 1024


@pytest.fixture(scope="module")
def server(export_dir):
    cfg = ServeConfig(max_wait_ms=5, max_upload_bytes=MAX_UPLOAD, request_timeout_s=30)
    with BackgroundServer(InferenceEngine.from_export(export_dir, cfg)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def triton(server):
    c = th.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=30)
    yield c
    c.close()


def test_tritonclient_health_and_metadata(triton) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("mmfurnace")
    assert triton.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    meta = triton.get_model_metadata("mmfurnace")
    assert [i["name"] for i in meta["inputs"]] == ["audio", "image", "text"]
    assert {o["name"] for o in meta["outputs"]} == {"probabilities", "label", "logits"}
    assert meta["parameters"]["preprocessed_inputs"]["image"] == {"datatype": "FP32", "shape": [-1, 1, 28, 28]}
    assert not triton.is_model_ready("other")


def bytes_input(name: str, values: list[bytes], binary: bool = True):
    x = th.InferInput(name, [len(values)], "BYTES")
    x.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
    return x


def test_tritonclient_infer_raw_bytes_with_binary_extension(triton, info) -> None:
    # tritonclient sends tensors and asks for outputs in the binary extension by default.
    inputs = [
        bytes_input("image", [png_bytes(1), png_bytes(7)]),
        bytes_input("audio", [wav_bytes(300), wav_bytes(700, seconds=0.8)]),
        bytes_input("text", [b"one", b"seven eight"]),
    ]
    result = triton.infer("mmfurnace", inputs)
    probs = result.as_numpy("probabilities")
    assert probs.shape == (2, info.num_classes)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert [b.decode() for b in result.as_numpy("label")] == [info.class_names[i] for i in probs.argmax(1)]


def test_tritonclient_preprocessed_tensors_match_eager_model(triton, model, info) -> None:
    g = torch.Generator().manual_seed(3)
    image = torch.randn(3, 1, 28, 28, generator=g)
    text = torch.randint(1, info.vocab_size, (3, 6), generator=g)
    text[1, 4:] = 0  # padding: trailing PAD ids
    x = th.InferInput("image", list(image.shape), "FP32")
    x.set_data_from_numpy(image.numpy(), binary_data=False)  # JSON data
    t = th.InferInput("text", list(text.shape), "INT64")
    t.set_data_from_numpy(text.numpy())  # binary data
    outputs = [th.InferRequestedOutput("logits", binary_data=True), th.InferRequestedOutput("label", binary_data=False)]
    result = triton.infer("mmfurnace", [x, t], outputs=outputs, request_id="r-1")
    assert result.get_response()["id"] == "r-1"
    with torch.no_grad():
        want = model({"image": image, "text": text}, {m: torch.ones(3, dtype=torch.bool) for m in ("image", "text")},
                     {"text": text != 0}).logits
    torch.testing.assert_close(torch.from_numpy(result.as_numpy("logits").copy()), want, rtol=1e-4, atol=1e-4)


def test_v2_json_with_base64_files(client, info) -> None:
    body = {"inputs": [
        {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(png_bytes(4)).decode()]},
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["four"]},
    ]}
    r = client.post("/v2/models/mmfurnace/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["probabilities"]["shape"] == [1, info.num_classes]
    assert out["label"]["data"][0] in info.class_names


def test_multipart_predict_with_real_files(client, info) -> None:
    files = {"image": ("seven.png", png_bytes(7), "image/png"), "audio": ("seven.wav", wav_bytes(440), "audio/wav")}
    r = client.post("/v1/predict", files=files, data={"text": "seven"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] in info.class_names
    assert list(body["probabilities"]) == list(info.class_names)
    assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-5
    assert body["modalities"] == ["audio", "image", "text"]
    assert {"preprocess", "queue_model", "model", "total"} <= set(body["timings_ms"])  # whole mode: the default
    only_text = client.post("/v1/predict", files={"text": (None, b"three")})
    assert only_text.status_code == 200
    assert only_text.json()["modalities"] == ["text"]


def v2(inputs: list[dict], **extra) -> dict:
    return {"inputs": inputs, **extra}


BAD_REQUESTS = {
    "corrupt image": ("multipart", {"image": ("x.png", b"\x89PNG\r\n\x1a\n garbage", "image/png")}, 400, "image"),
    "audio that is not audio": ("multipart", {"audio": ("x.wav", b"RIFF1234WAVEnot really", "audio/wav")}, 400, "audio"),
    "bad utf-8 text": ("multipart", {"text": (None, b"caf\xe9 \xff")}, 400, "UTF-8"),
    "empty text": ("multipart", {"text": (None, b"   ")}, 400, "empty text"),
    "no modality": ("multipart", {"other": (None, b"x")}, 400, "unknown form field"),
    "image content type": ("multipart", {"image": ("x.gif", png_bytes(1), "application/pdf")}, 415, "allowed: image/png"),
    "oversize upload": ("multipart", {"image": ("big.png", b"\0" * (MAX_UPLOAD + 10), "image/png")}, 413, "max_upload_bytes"),
    "NaN in tensor": ("v2", v2([{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [float("nan")] * 784}]), 400, "NaN"),
    "wrong tensor shape": ("v2", v2([{"name": "image", "shape": [1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]), 400, "does not fit [rows, 1, 28, 28]"),
    "wrong tensor dtype": ("v2", v2([{"name": "text", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]), 400, "expected INT64"),
    "data/shape mismatch": ("v2", v2([{"name": "text", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3]}]), 400, "needs 4 elements"),
    "token id out of range": ("v2", v2([{"name": "text", "shape": [1, 2], "datatype": "INT64", "data": [1, 99999]}]), 400, "token ids"),
    "no modality in v2": ("v2", v2([]), 400, "no modality"),
    "unknown input": ("v2", v2([{"name": "video", "shape": [1], "datatype": "BYTES", "data": ["x"]}]), 400, "unknown input"),
    "unknown output": ("v2", v2([{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["one"]}], outputs=[{"name": "embedding"}]), 400, "unknown output"),
    "bad base64": ("v2", v2([{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]), 400, "base64"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_input_is_4xx_with_a_message_and_server_keeps_serving(client, case) -> None:
    kind, payload, status, words = BAD_REQUESTS[case]
    if kind == "multipart":
        r = client.post("/v1/predict", files=payload)
    else:
        r = client.post("/v2/models/mmfurnace/infer", content=json.dumps(payload), headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    ok = client.post("/v1/predict", files={"text": (None, b"two")})
    assert ok.status_code == 200


def test_protocol_level_errors(client) -> None:
    assert client.post("/v2/models/mmfurnace/infer", content=b"{not json").status_code == 400
    r = client.post("/v2/models/nope/infer", json=v2([]))
    assert r.status_code == 404
    assert "unknown model 'nope'" in r.json()["error"]
    r = client.post("/v2/models/mmfurnace/infer", content=b"a=b", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    r = client.post("/v1/predict", json={"text": "one"})
    assert r.status_code == 415
    assert "multipart/form-data" in r.json()["error"]
    r = client.post("/v2/models/mmfurnace/infer", content=b"{}", headers={"Inference-Header-Content-Length": "99"})
    assert r.status_code == 400
    assert "Inference-Header-Content-Length" in r.json()["error"]


def test_streamed_body_over_the_limit_is_413(client) -> None:
    def chunks():  # no Content-Length: the limit is enforced on the stream
        for _ in range(8):
            yield b"x" * (MAX_UPLOAD // 4)

    r = client.post("/v2/models/mmfurnace/infer", content=chunks())
    assert r.status_code == 413


def test_metrics_exposes_counts_latencies_batches_and_queue_depth(client) -> None:
    client.post("/v1/predict", files={"text": (None, b"five")})
    text = client.get("/metrics").text
    assert 'mmfurnace_requests_total{route="/v1/predict",status="200"}' in text
    assert 'mmfurnace_stage_seconds_bucket{le="0.005",stage="preprocess"}' in text
    assert 'mmfurnace_stage_seconds_count{stage="model"}' in text
    assert 'mmfurnace_batch_size_count{stage="model"}' in text
    assert 'mmfurnace_queue_depth{stage="model"}' in text
    assert 'status="500"' not in text
