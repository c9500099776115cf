"""The KServe v2 contract without HTTP: requests built by tritonclient itself (binary extension
and JSON) decode into rows; responses decode with tritonclient's own parser; misuse is an
InputError naming the input."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from mmfurnace.errors import InputError
from mmfurnace.serve.protocol import encode_infer_response, model_metadata, parse_infer_request
from mmfurnace.serve.signature import ModelSignature

th = pytest.importorskip("tritonclient.http")
from tritonclient.http._utils import _get_inference_request  # noqa: E402

SIG = ModelSignature(
    name="m", modalities=("audio", "image", "text"), class_names=("a", "b", "c"), multilabel=False,
    input_shapes={"image": (1, 4, 4), "audio": (None, 3), "text": (None,)},
    input_dtypes={"image": "float32", "audio": "float32", "text": "int64"}, vocab_size=10,
    max_steps={"audio": 8, "text": 6},
)


def triton_body(inputs, outputs=None) -> tuple[bytes, int | None]:
    body, json_size = _get_inference_request(
        inputs=inputs, request_id="", outputs=outputs, sequence_id=0, sequence_start=False,
        sequence_end=False, priority=0, timeout=None, custom_parameters=None,
    )
    return (body if isinstance(body, bytes) else body.encode()), json_size


def tensor(name, array, datatype, binary=True):
    x = th.InferInput(name, list(array.shape), datatype)
    x.set_data_from_numpy(array, binary_data=binary)
    return x


def test_tritonclient_binary_request_decodes_into_rows() -> None:
    audio = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=bool)
    inputs = [
        tensor("image", np.array([b"\x89PNG-one", b"\x89PNG-two"], dtype=object), "BYTES"),
        tensor("audio", audio, "FP32"),
        tensor("audio_mask", mask, "BOOL"),
        tensor("text", np.array([b"hello", "caf\u00e9".encode()], dtype=object), "BYTES", binary=False),
        tensor("image_present", np.array([True, False]), "BOOL"),
    ]
    body, header = triton_body(inputs)
    call = parse_infer_request(body, SIG, header_length=header)
    assert len(call.rows) == 2
    assert call.rows[0]["image"] == b"\x89PNG-one"
    assert "image" not in call.rows[1]  # image_present False
    np.testing.assert_array_equal(call.rows[0]["audio"], audio[0, :3])  # trimmed by the mask
    np.testing.assert_array_equal(call.rows[1]["audio"], audio[1])
    assert call.rows[1]["text"] == "caf\u00e9"
    assert call.outputs == {"probabilities": True, "label": True}  # tritonclient's default


def test_response_decodes_with_tritonclients_parser() -> None:
    call = parse_infer_request(json.dumps({"id": "7", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]}],
                                           "outputs": [{"name": "label", "parameters": {"binary_data": True}},
                                                       {"name": "probabilities"}, {"name": "logits", "parameters": {"binary_data": True}}]}).encode(), SIG)
    logits = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], dtype=np.float32)
    body, headers = encode_infer_response(call, SIG, logits)
    result = th.InferResult.from_response_body(body, header_length=int(headers["Inference-Header-Content-Length"]))
    assert [b.decode() for b in result.as_numpy("label")] == ["b", "a"]
    np.testing.assert_allclose(result.as_numpy("logits"), logits)
    probs = result.as_numpy("probabilities")
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    assert probs.argmax(1).tolist() == [1, 0]
    assert result.get_response()["id"] == "7"
    plain, h = encode_infer_response(parse_infer_request(b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}', SIG), SIG, logits[:1])
    assert h == {"Content-Type": "application/json"}
    assert json.loads(plain)["outputs"][1] == {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["b"]}


def test_nested_json_data_and_int32_ids() -> None:
    body = {"inputs": [{"name": "text", "shape": [2, 3], "datatype": "INT32", "data": [[1, 2, 0], [4, 5, 6]]}]}
    rows = parse_infer_request(json.dumps(body).encode(), SIG).rows
    assert rows[0]["text"].tolist() == [1, 2]  # trailing PAD_ID (0) is padding
    assert rows[1]["text"].dtype == np.int64


def bytes_blob(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


@pytest.mark.parametrize(
    ("header", "binary", "header_length", "words"),
    [
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 99}}]}, bytes_blob(b"ab"), True, "runs past"),
        ({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]}, bytes_blob(b"ab"), True, "needs 2 elements"),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]}, struct.pack("<I", 9), True, "runs past the data"),
        ({"inputs": [{"name": "image", "shape": [1, 1, 4, 4], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}, b"\0" * 8, True, "needs 64 bytes"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}, b"extra", True, "belong to no input"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "STRING", "data": ["x"]}]}, b"", False, "unknown datatype 'STRING'"),
    ],
    ids=["size-overrun", "element-count", "element-overrun", "numeric-size", "trailing-bytes", "bad-datatype"],
)
def test_malformed_binary_requests(header, binary, header_length, words) -> None:
    head = json.dumps(header).encode()
    with pytest.raises(InputError, match=words):
        parse_infer_request(head + binary, SIG, header_length=len(head) if header_length else None)


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ([{"name": "audio", "shape": [1, 9, 3], "datatype": "FP32", "data": [0.0] * 27}], "at most 8"),
        ([{"name": "audio", "shape": [1, 2, 3], "datatype": "FP32", "data": [0.0] * 6},
          {"name": "audio_mask", "shape": [1, 2], "datatype": "BOOL", "data": [False, False]}], "no real step"),
        ([{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
          {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}], "disagree on the number of rows"),
        ([{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]},
          {"name": "text_present", "shape": [1], "datatype": "BOOL", "data": [False]}], "row 0 has no modality"),
        ([{"name": "image_mask", "shape": [1], "datatype": "BOOL", "data": [True]}], "no modality input"),
        ([{"name": "text", "shape": [300], "datatype": "BYTES", "data": ["a"] * 300}], "at most 256"),
        ([{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}] * 2, "repeat"),
    ],
    ids=["too-long", "all-padding", "row-mismatch", "all-absent", "mask-only", "too-many-rows", "duplicate"],
)
def test_request_level_errors(inputs, words) -> None:
    with pytest.raises(InputError, match=words):
        parse_infer_request(json.dumps({"inputs": inputs}).encode(), SIG)


def test_model_metadata_lists_raw_and_preprocessed_inputs() -> None:
    meta = model_metadata(SIG)
    assert meta["inputs"][0] == {"name": "audio", "datatype": "BYTES", "shape": [-1]}
    assert meta["parameters"]["preprocessed_inputs"]["audio"] == {"datatype": "FP32", "shape": [-1, -1, 3]}
    assert meta["parameters"]["preprocessed_inputs"]["text"] == {"datatype": "INT64", "shape": [-1, -1]}
