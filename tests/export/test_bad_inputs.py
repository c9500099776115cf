"""Foreign or damaged files and wrong batches give InputErrors naming the file or input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from mmfurnace.errors import InputError
from mmfurnace.export import RUNTIMES, check_parity, load_spec
from tests.export.conftest import Exported

ENGINES = ["onnxruntime", "openvino", "torchscript", "eager"]


def tiny_onnx(path: Path) -> Path:
    """A valid ONNX graph that has nothing to do with mmfurnace: y = x + x."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def copied(late: Exported, tmp_path: Path) -> Path:
    return Path(shutil.copytree(late.dir, tmp_path / "copy"))


def test_foreign_onnx_file_without_sidecar(tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "foreign.onnx")
    with pytest.raises(InputError, match=r"foreign\.onnx has no export\.json sidecar"):
        RUNTIMES["onnxruntime"](path)
    with pytest.raises(InputError, match="export.json"):
        check_parity(tmp_path)


def test_foreign_onnx_file_in_place_of_ours(copied: Path) -> None:
    tiny_onnx(copied / "model.onnx")
    for name in ("onnxruntime", "openvino"):
        with pytest.raises(
            InputError, match=r"model\.onnx: file does not match export\.json \(sha256"
        ):
            RUNTIMES[name](copied)


def test_truncated_onnx_file(copied: Path) -> None:
    path = copied / "model.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match=r"model\.onnx: file does not match"):
        RUNTIMES["onnxruntime"](copied)
    # Even with hash checks off, the engine's load error comes back naming the file.
    for name in ("onnxruntime", "openvino"):
        with pytest.raises(InputError, match=r"model\.onnx: cannot be loaded"):
            RUNTIMES[name](copied, verify=False)


def test_truncated_torchscript_file(copied: Path) -> None:
    path = copied / "model.ts"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputError, match=r"model\.ts: cannot be loaded"):
        RUNTIMES["torchscript"](copied, verify=False)


def test_missing_sidecar(copied: Path) -> None:
    (copied / "export.json").unlink()
    for name in ENGINES:
        with pytest.raises(InputError, match=r"has no export\.json sidecar"):
            RUNTIMES[name](copied)


def test_damaged_sidecar(copied: Path) -> None:
    sidecar = copied / "export.json"
    sidecar.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_spec(copied)
    sidecar.write_text(json.dumps({"format": "mmfurnace-export", "format_version": 99}))
    with pytest.raises(InputError, match="format version 99"):
        load_spec(copied)
    sidecar.write_text(
        json.dumps({"format": "mmfurnace-export", "format_version": 1, "graphs": {}})
    )
    with pytest.raises(InputError, match="malformed sidecar"):
        load_spec(copied)


def test_missing_graph_file(copied: Path) -> None:
    (copied / "model.ts").unlink()
    with pytest.raises(InputError, match=r"model\.ts: listed in export\.json but missing"):
        RUNTIMES["torchscript"](copied)


@pytest.mark.parametrize("engine", ENGINES)
def test_wrong_feature_size_names_input_and_shapes(engine: str, late: Exported, odd_batch) -> None:
    runtime = RUNTIMES[engine](late.dir)
    feed = {**odd_batch.inputs, "audio": torch.zeros(6, 50, 13)}
    with pytest.raises(
        InputError,
        match=r"input 'audio' has shape \(6, 50, 13\); expected \(batch, audio_frames, 20\)",
    ):
        runtime.run(feed)


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_wrong_image_layout(engine: str, late: Exported, odd_batch) -> None:
    runtime = RUNTIMES[engine](late.dir)
    with pytest.raises(
        InputError, match=r"'image' has shape \(6, 28, 28\); expected \(batch, 1, 28, 28\)"
    ):
        runtime.run({**odd_batch.inputs, "image": torch.zeros(6, 28, 28)})


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_wrong_dtypes(engine: str, late: Exported, odd_batch) -> None:
    runtime = RUNTIMES[engine](late.dir)
    with pytest.raises(InputError, match=r"'text' has dtype float32; expected int64"):
        runtime.run({**odd_batch.inputs, "text": odd_batch.inputs["text"].float()})
    with pytest.raises(InputError, match=r"'audio_mask' has dtype int64; expected bool"):
        runtime.run({**odd_batch.inputs, "audio_mask": odd_batch.valid["audio"].long()})
    # Within a kind, values are cast: float64 audio and int32 tokens are fine.
    ok = runtime.run(
        {
            **odd_batch.inputs,
            "audio": odd_batch.inputs["audio"].double(),
            "text": odd_batch.inputs["text"].int(),
        }
    )
    assert ok.shape == (6, 10)


def test_inconsistent_axes(late: Exported, odd_batch) -> None:
    runtime = RUNTIMES["onnxruntime"](late.dir)
    with pytest.raises(
        InputError, match=r"axis 'audio_frames' is 50 in 'audio' but 49 in 'audio_mask'"
    ):
        runtime.run({**odd_batch.inputs, "audio_mask": odd_batch.valid["audio"][:, :49]})
    with pytest.raises(InputError, match="disagree on the batch size"):
        runtime.run({**odd_batch.inputs, "image": odd_batch.inputs["image"][:5]})


def test_bad_values_and_names(late: Exported, odd_batch) -> None:
    runtime = RUNTIMES["onnxruntime"](late.dir)
    too_big = odd_batch.inputs["text"].clone()
    too_big[0, 0] = 5000
    with pytest.raises(InputError, match=r"token ids in \[0, 5000\]; the vocabulary has 1000"):
        runtime.run({**odd_batch.inputs, "text": too_big})
    nan = odd_batch.inputs["audio"].clone()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="'audio' holds NaN"):
        runtime.run({**odd_batch.inputs, "audio": nan})
    with pytest.raises(InputError, match=r"unknown input\(s\) \['video'\]"):
        runtime.run({**odd_batch.inputs, "video": np.zeros((6, 3))})
    with pytest.raises(InputError, match="marks rows as having audio"):
        runtime.run({"image": odd_batch.inputs["image"], "audio_present": np.ones(6, dtype=bool)})
    with pytest.raises(InputError, match="batch size 0"):
        runtime.run({k: v[:0] for k, v in odd_batch.inputs.items()})
