"""A model made of the pretrained encoders (frozen EfficientNet-Lite0 + MiniLM) and a fusion
goes through the whole life unchanged, on a tiny real set (PNG files and sentences): trained on
the feature cache, exported (ONNX, TorchScript) with parity, quantized to INT8 (dynamic and
static, ONNX Runtime), and served from raw bytes."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from mmfurnace.config import RunConfig  # noqa: E402
from mmfurnace.data.datasets import build_dataset  # noqa: E402
from mmfurnace.data.loader import make_loader  # noqa: E402
from mmfurnace.data.text import tokenizer_file  # noqa: E402
from mmfurnace.models.encoders.efficientnet_lite import IMAGE_MEAN, IMAGE_STD  # noqa: E402
from mmfurnace.models.feature_cache import cache_features  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}
SHAPES = ("circle", "square")
SIZE = 64  # EfficientNet takes any side >= 32; 224 would only make the test slower


def png(colour: tuple[int, int, int], shape: str, shift: int) -> bytes:
    image = Image.new("RGBA", (96, 96), (0, 0, 0, 0))  # transparent: composited on white
    box = (16 + shift, 16 + shift, 70 + shift, 70 + shift)
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=(*colour, 255))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("pretrained")
    (root / "img").mkdir()
    rows = []
    for i in range(18):  # train 12, valid 3, test 3
        name = list(COLOURS)[i % 3]
        shape = SHAPES[(i // 3) % 2]
        (root / "img" / f"{i}.png").write_bytes(png(COLOURS[name], shape, shift=i % 5))
        split = "train" if i < 12 else ("valid" if i < 15 else "test")
        rows.append({"id": str(i), "split": split, "image": f"img/{i}.png",
                     "text": f"a {name} {shape} on white paper", "label": name})
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = RunConfig.model_validate({
        "data": {"dataset": "manifest", "root": str(root), "modalities": ["image", "text"],
                 "batch_size": 4,
                 "image": {"size": [SIZE, SIZE], "channels": 3, "mean": [IMAGE_MEAN],
                           "std": [IMAGE_STD]},
                 "text": {"tokenizer": "pretrained:minilm", "max_length": 16}},
        "model": {"fusion": "cross_attention", "hidden_dim": 32, "heads": 4, "proj_dim": 16,
                  "encoders": {"image": {"name": "efficientnet_lite0", "freeze": True},
                               "text": {"name": "minilm", "freeze": True}}},
        "train": {"epochs": 2, "lr": 3e-3, "out_dir": str(root / "run"), "seed": 0,
                  "feature_cache_dir": str(root / "features"), "feature_threads": 1},
    })
    from mmfurnace.train.recipe import train

    result = train(cfg, progress=False)
    return cfg, root, result


def batches(cfg: RunConfig, split: str, datasets=None):
    dataset = (datasets or {}).get(split) or build_dataset(cfg.data, split)
    return list(make_loader(dataset, modalities=["image", "text"], batch_size=8, shuffle=False))


def logits_of(model, loader) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.eval()(b.inputs, b.present, b.valid).logits for b in loader])


@pytest.mark.slow
def test_trained_on_the_cache_the_checkpoint_runs_the_real_encoders(trained) -> None:
    from mmfurnace.train.checkpoint import load_model

    cfg, root, result = trained
    start = json.loads((root / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert sorted(start["feature_cache"]) == ["image", "text"]
    assert result.test_metrics["samples"] == 3
    model, _ = load_model(root / "run" / "best")
    splits = {s: build_dataset(cfg.data, s) for s in ("train", "valid", "test")}
    cache = cache_features(model, splits, cache_dir=root / "features")
    assert all(s["hit"] for s in cache.stats.values())
    # The cached features give the logits of running EfficientNet and MiniLM on the inputs.
    direct = logits_of(model, batches(cfg, "train"))
    cached = logits_of(cache.view(model), batches(cfg, "train", cache.datasets(splits)))
    torch.testing.assert_close(cached, direct, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_export_int8_and_serving_work_on_the_pretrained_model(trained, tmp_path: Path) -> None:
    from mmfurnace.compress.api import parents, prepare, run_method
    from mmfurnace.export import assert_parity, export_checkpoint
    from mmfurnace.serve.config import ServeConfig
    from mmfurnace.serve.engine import InferenceEngine
    from mmfurnace.train.checkpoint import load_model

    cfg, root, _ = trained
    best = root / "run" / "best"
    export = export_checkpoint(best, tmp_path / "export")  # ONNX + TorchScript, verified
    assert (export / "tokenizer.json").read_bytes() == tokenizer_file("pretrained:minilm").read_bytes()
    test = batches(cfg, "test")[0]
    results = assert_parity(export, test, runtimes=["onnxruntime", "torchscript"])
    assert {r.runtime for r in results if r.status == "pass"} == {"onnxruntime", "torchscript"}

    # INT8 on ONNX Runtime: dynamic and static (calibrated on training batches). With three
    # test rows accuracy says little; judge the quantized logits by SQNR against FP32.
    ctx = prepare(best, out_dir=tmp_path / "int8", threads=1)
    fp32 = parents(ctx, {"onnxruntime"})[0].predict(test)
    for method in ("int8-dynamic", "int8-static"):
        (variant,) = run_method(ctx, method, {"num_batches": 2} if method == "int8-static" else {})
        int8 = variant.predict(test)
        sqnr = 10 * torch.log10(fp32.pow(2).mean() / (int8 - fp32).pow(2).mean())
        assert sqnr > 15, (method, float(sqnr))

    # Served from raw PNG bytes and text, the answers are the trained model's on those files.
    model, _ = load_model(best)
    engine = InferenceEngine.from_export(export, ServeConfig(
        stages={"image": {"runtime": "onnxruntime"}, "text": {"runtime": "onnxruntime"}},
        fusion={"runtime": "onnxruntime"}, max_wait_ms=20, intra_op_threads=1))
    manifest = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    requests = [{"image": (root / r["image"]).read_bytes(), "text": r["text"]}
                for r in manifest if r["split"] == "test"]

    async def serve(engine):
        async with engine:
            return np.stack([p.logits for p in await engine.infer_many(requests)])

    expected = logits_of(model, [test]).numpy()
    np.testing.assert_allclose(asyncio.run(serve(engine)), expected, rtol=1e-4, atol=1e-4)
    # Straight from the checkpoint too: its data config names the tokenizer pretrained:minilm.
    eager = InferenceEngine.from_checkpoint(best, ServeConfig(mode="whole", intra_op_threads=1))
    np.testing.assert_allclose(asyncio.run(serve(eager)), expected, rtol=1e-4, atol=1e-4)
