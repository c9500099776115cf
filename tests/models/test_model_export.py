"""Export-friendliness: torch.jit.trace of a thin fixed-dict wrapper matches eager, also on a
presence pattern different from the one traced (nothing data-dependent baked in)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from mmfurnace.models import FUSIONS, MultimodalClassifier, build_model
from tests.models.conftest import make_inputs, tiny_config


class FixedInputs(nn.Module):
    """forward(audio, image, text, audio_valid, text_valid, *present) -> logits."""

    def __init__(self, model: MultimodalClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        audio: Tensor,
        image: Tensor,
        text: Tensor,
        audio_valid: Tensor,
        text_valid: Tensor,
        audio_present: Tensor,
        image_present: Tensor,
        text_present: Tensor,
    ) -> Tensor:
        inputs = {"audio": audio, "image": image, "text": text}
        present = {"audio": audio_present, "image": image_present, "text": text_present}
        valid = {"audio": audio_valid, "text": text_valid}
        return self.model(inputs, present, valid).logits


def arguments(seed: int, batch: int = 6) -> tuple[Tensor, ...]:
    torch.manual_seed(seed)
    inputs, valid = make_inputs(batch=batch)
    present = torch.rand(3, batch) > 0.4
    return (
        inputs["audio"],
        inputs["image"],
        inputs["text"],
        valid["audio"],
        valid["text"],
        *present,
    )


@pytest.mark.parametrize("name", ["cross_attention", "late"])
def test_jit_trace_matches_eager(tiny_info, name: str) -> None:
    wrapper = FixedInputs(build_model(tiny_config(name), tiny_info).eval())
    example = arguments(1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, example)
        for seed in (1, 2, 3):
            args = arguments(seed)
            torch.testing.assert_close(traced(*args), wrapper(*args), rtol=1e-5, atol=1e-5)


NAMES = [
    "audio",
    "image",
    "text",
    "audio_valid",
    "text_valid",
    "audio_present",
    "image_present",
    "text_present",
]


@pytest.mark.parametrize("name", FUSIONS.names())
def test_onnx_export_runs_on_onnxruntime(tiny_info, name: str, tmp_path) -> None:
    """Not required by the models package, but cheap to keep true: the TorchScript-based
    exporter handles every fusion with a dynamic batch axis."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    wrapper = FixedInputs(build_model(tiny_config(name), tiny_info).eval())
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            arguments(1),
            str(path),
            input_names=NAMES,
            output_names=["logits"],
            dynamic_axes={n: {0: "batch"} for n in NAMES},
            opset_version=17,
            dynamo=False,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    args = arguments(7, batch=3)
    (got,) = session.run(None, {n: a.numpy() for n, a in zip(NAMES, args, strict=True)})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), wrapper(*args), rtol=1e-4, atol=1e-5)
