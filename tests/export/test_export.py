"""export_model: files, sidecar, and the exported graphs run by stock tools match eager."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import ConfigError, InputError
from mmfurnace.export import ExportError, export_model, load_spec
from mmfurnace.export.spec import sha256_file
from mmfurnace.models import build_model
from tests.export.conftest import PREPROCESSING, Exported, small_config, tol

GRAPHS = ["model", "encoder_audio", "encoder_image", "encoder_text", "fusion_head"]
FULL_INPUTS = [
    ("audio", "float32", ["batch", "audio_frames", 20]),
    ("audio_mask", "bool", ["batch", "audio_frames"]),
    ("audio_present", "bool", ["batch"]),
    ("image", "float32", ["batch", 1, 28, 28]),
    ("image_present", "bool", ["batch"]),
    ("text", "int64", ["batch", "text_tokens"]),
    ("text_mask", "bool", ["batch", "text_tokens"]),
    ("text_present", "bool", ["batch"]),
]
FULL_NAMES = [n for n, _, _ in FULL_INPUTS]


def numpy_feed(batch, names):
    """Flat numpy inputs by the documented names — all a deployment needs to build."""
    flat = {**batch.inputs, **{f"{m}_mask": v for m, v in batch.valid.items()}}
    flat.update({f"{m}_present": v for m, v in batch.present.items()})
    return {n: flat[n].numpy() for n in names}


def test_export_writes_every_graph_in_both_formats(exported: Exported) -> None:
    for graph in GRAPHS:
        for suffix in (".onnx", ".ts"):
            assert (exported.dir / f"{graph}{suffix}").is_file(), f"{graph}{suffix}"
        onnx.checker.check_model(str(exported.dir / f"{graph}.onnx"), full_check=True)
    assert (exported.dir / "model.safetensors").is_file()
    assert not list(exported.dir.parent.glob(".*staging*"))


def test_sidecar_describes_the_deployment(exported: Exported, info: DatasetInfo) -> None:
    raw = json.loads((exported.dir / "export.json").read_text())
    assert raw["format"] == "mmfurnace-export"
    assert raw["format_version"] == 1
    assert raw["opset"] == 17
    assert raw["class_names"] == [str(i) for i in range(10)]
    assert DatasetInfo.from_dict(raw["info"]) == info
    assert raw["preprocessing"] == PREPROCESSING
    assert raw["model"]["config"]["fusion"] == exported.config.fusion
    model = raw["graphs"]["model"]
    assert [(t["name"], t["dtype"], t["shape"]) for t in model["inputs"]] == FULL_INPUTS
    assert model["inputs"][0]["dynamic_axes"] == {"0": "batch", "1": "audio_frames"}
    assert [(t["name"], t["shape"]) for t in model["outputs"]] == [("logits", ["batch", 10])]
    assert model["files"] == {"onnx": "model.onnx", "torchscript": "model.ts"}
    enc = raw["graphs"]["encoder_audio"]
    assert [t["name"] for t in enc["inputs"]] == ["audio", "audio_mask", "audio_present"]
    assert [t["name"] for t in enc["outputs"]] == [
        "audio_sequence",
        "audio_pooled",
        "audio_sequence_mask",
    ]
    assert enc["outputs"][0]["shape"] == ["batch", "audio_encoded", 32]
    assert [t["name"] for t in raw["graphs"]["encoder_image"]["outputs"]] == [
        "image_sequence",
        "image_pooled",
    ]
    for name, entry in raw["files"].items():
        assert sha256_file(exported.dir / name) == entry["sha256"], name
    # The ONNX file declares the names and dynamic axes the sidecar promises.
    proto = onnx.load(str(exported.dir / "model.onnx"))
    declared = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in proto.graph.input
    }
    for name, _, shape in FULL_INPUTS:
        assert declared[name] == shape, name
    assert [o.name for o in proto.graph.output] == ["logits"]


def test_stock_onnxruntime_matches_eager(exported: Exported, odd_batch) -> None:
    # Plain onnxruntime, no mmfurnace code on the call path: rows with absent modalities,
    # padding, and sequence lengths other than the export's.
    session = ort.InferenceSession(
        str(exported.dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()]
    (logits,) = session.run(["logits"], numpy_feed(odd_batch, names))
    reference = exported.eager(odd_batch)
    assert logits.shape == (6, 10)
    torch.testing.assert_close(torch.from_numpy(logits), reference, rtol=0, atol=tol(reference))


def test_stock_onnxruntime_at_batch_one_and_long_sequences(
    cross: Exported, info: DatasetInfo
) -> None:
    from mmfurnace.export import make_example_batch

    batch = make_example_batch(info, 1, lengths={"audio": 201, "text": 64}, seed=5)
    session = ort.InferenceSession(
        str(cross.dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(None, numpy_feed(batch, [i.name for i in session.get_inputs()]))
    reference = cross.eager(batch)
    torch.testing.assert_close(torch.from_numpy(logits), reference, rtol=0, atol=tol(reference))


def test_split_encoders_and_fusion_head_reproduce_the_full_model(
    exported: Exported, odd_batch
) -> None:
    features = {}
    for m in ("audio", "image", "text"):
        session = ort.InferenceSession(
            str(exported.dir / f"encoder_{m}.onnx"), providers=["CPUExecutionProvider"]
        )
        outputs = session.run(None, numpy_feed(odd_batch, [i.name for i in session.get_inputs()]))
        features.update(zip([o.name for o in session.get_outputs()], outputs, strict=False))
        features[f"{m}_present"] = odd_batch.present[m].numpy()
    head = ort.InferenceSession(
        str(exported.dir / "fusion_head.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = head.run(None, {i.name: features[i.name] for i in head.get_inputs()})
    (full,) = ort.InferenceSession(
        str(exported.dir / "model.onnx"), providers=["CPUExecutionProvider"]
    ).run(None, numpy_feed(odd_batch, FULL_NAMES))
    reference = exported.eager(odd_batch)
    torch.testing.assert_close(torch.from_numpy(logits), reference, rtol=0, atol=tol(reference))
    np.testing.assert_allclose(logits, full, rtol=0, atol=tol(reference))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_file_runs_without_mmfurnace(exported: Exported, odd_batch) -> None:
    module = torch.jit.load(str(exported.dir / "model.ts"))
    args = [torch.from_numpy(a) for a in numpy_feed(odd_batch, FULL_NAMES).values()]
    with torch.no_grad():
        logits = module(*args)
    reference = exported.eager(odd_batch)
    torch.testing.assert_close(logits, reference, rtol=0, atol=tol(reference))


def test_export_leaves_the_callers_model_alone(late: Exported) -> None:
    assert not late.model.training
    assert all(p.requires_grad for p in late.model.parameters())
    late.model.train()
    try:
        export_model(
            late.model,
            late.info,
            late.dir.parent / "again",
            formats=("onnx",),
            split=False,
            verify=False,
        )
        assert late.model.training
    finally:
        late.model.eval()


def test_onnx_only_without_split(late: Exported, tmp_path) -> None:
    out = export_model(
        late.model, late.info, tmp_path / "x", formats="onnx", split=False, config=late.config
    )
    spec = load_spec(out)
    assert sorted(spec.graphs) == ["model"]
    assert sorted(p.name for p in out.iterdir()) == [
        "export.json",
        "model.onnx",
        "model.safetensors",
    ]


def test_model_without_config_is_pickled_for_eager(late: Exported, tmp_path, odd_batch) -> None:
    from mmfurnace.export import RUNTIMES

    out = export_model(
        late.model, late.info, tmp_path / "p", formats="onnx", split=False, verify=False
    )
    assert load_spec(out).model["pickled"] == "model.pt"
    logits = RUNTIMES["eager"](out).run(odd_batch)
    reference = late.eager(odd_batch)
    np.testing.assert_allclose(logits, reference.numpy(), rtol=0, atol=tol(reference))


def test_unimodal_model_exports_only_its_inputs(info: DatasetInfo, tmp_path) -> None:
    from mmfurnace.export import check_parity, parity_exit_code

    model = build_model(small_config("late"), info, modalities=["image", "text"]).eval()
    out = export_model(model, info, tmp_path / "u", formats="onnx", config=small_config("late"))
    spec = load_spec(out)
    assert spec.modalities == ["image", "text"]
    assert spec.graphs["model"].input_names == [
        "image",
        "image_present",
        "text",
        "text_mask",
        "text_present",
    ]
    assert "encoder_audio" not in spec.graphs
    # The default parity batch follows the export's modalities.
    assert parity_exit_code(check_parity(out, runtimes=["eager", "onnxruntime"])) == 0


def test_bad_settings_are_config_errors(late: Exported, tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown export format"):
        export_model(late.model, late.info, tmp_path / "a", formats=("tflite",))
    with pytest.raises(ConfigError, match="opset"):
        export_model(late.model, late.info, tmp_path / "b", opset=99)


def test_refuses_to_overwrite_a_directory_that_is_not_an_export(late: Exported, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an mmfurnace export"):
        export_model(late.model, late.info, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_failed_export_keeps_the_previous_one(late: Exported, tmp_path, monkeypatch) -> None:
    target = tmp_path / "exp"
    shutil.copytree(late.dir, target)
    before = {p.name: sha256_file(p) for p in target.iterdir() if p.is_file()}

    def boom(*args, **kwargs):
        raise ExportError("simulated failure half-way")

    monkeypatch.setattr("mmfurnace.export.exporter.to_torchscript", boom)
    with pytest.raises(ExportError, match="half-way"):
        export_model(late.model, late.info, target)
    assert {p.name: sha256_file(p) for p in target.iterdir() if p.is_file()} == before
    assert not list(tmp_path.glob(".*staging*"))


def test_traceable_restores_the_model(cross: Exported) -> None:
    from mmfurnace.export.traceable import traceable

    fastpath = torch.backends.mha.get_fastpath_enabled()
    mha = [m for m in cross.model.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert mha
    with traceable(cross.model):
        assert all("forward" in m.__dict__ for m in mha)
        assert not torch.backends.mha.get_fastpath_enabled()
    assert all("forward" not in m.__dict__ for m in mha)
    assert torch.backends.mha.get_fastpath_enabled() == fastpath


def test_export_a_training_checkpoint(late: Exported, tmp_path, odd_batch) -> None:
    from mmfurnace.config import RunConfig
    from mmfurnace.export import RUNTIMES, export_checkpoint
    from mmfurnace.train.checkpoint import save_checkpoint

    config = RunConfig(model=late.config)
    ckpt = save_checkpoint(
        tmp_path / "ckpt",
        model=late.model,
        optimizer=None,
        scheduler=None,
        scaler=None,
        epoch=1,
        step=10,
        rng_states=None,
        config=config.model_dump(mode="json"),
        info=late.info,
        metrics={},
    )
    out = export_checkpoint(ckpt, tmp_path / "exp", formats="onnx", split=False)
    spec = load_spec(out)
    assert spec.model["source"] == str(ckpt.resolve())
    assert spec.preprocessing["audio"]["n_mfcc"] == config.data.audio.n_mfcc
    reference = late.eager(odd_batch)
    for backend in ("eager", "onnxruntime"):
        logits = RUNTIMES[backend](out).run(odd_batch)
        np.testing.assert_allclose(logits, reference.numpy(), rtol=0, atol=tol(reference))
