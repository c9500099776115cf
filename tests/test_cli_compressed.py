"""A compressed checkpoint goes through every command a plain one does, from the command line:
prune (structured, so the layer shapes differ from the config) -> eval -> export --check ->
profile -> serve the export over HTTP. Also a distilled and a half-precision checkpoint through
eval and export. On a packed on-disk copy of the tiny compression data, so each command reads
the data its checkpoint names, as a user's run does."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch
from typer.testing import CliRunner

from mmfurnace.cli import app
from mmfurnace.data.cache import pack_datasets
from mmfurnace.data.config import DataConfig
from mmfurnace.data.loader import make_loader
from mmfurnace.train.checkpoint import load_model
from tests.compress.tinydata import INFO, tiny_run_config, tiny_splits

pytestmark = pytest.mark.slow

runner = CliRunner()


# These tests are about loading compressed checkpoints, not their accuracy: a one-step fine-tune
# on tiny data may lose more than the accuracy gate allows, so its budget is opened (--budget).
def cli(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, f"mmfurnace {' '.join(map(str, args))}\n{result.output[-3000:]}"
    return result.output


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """A cross-attention checkpoint trained on the packed tiny data (the data its config names)."""
    from mmfurnace.train.recipe import train

    base = tmp_path_factory.mktemp("cli_compressed")
    pack_datasets(base / "data", tiny_splits())
    cfg = tiny_run_config(base / "run", epochs=2)
    cfg = cfg.model_copy(update={"data": DataConfig(dataset="packed", root=base / "data", batch_size=32)})
    torch.manual_seed(0)
    train(cfg, progress=False)
    return {"base": base, "best": base / "run" / "best"}


def test_pruned_checkpoint_eval_export_profile_serve(run):
    base = run["base"]
    out = base / "pruned"
    cli("compress", run["best"], "--method", "prune-channel", "-o", "sparsity=0.5", "-o", "finetune_epochs=1",
        "-o", "max_steps=2", "--budget", "100", "--out", out, "--report", base / "report")
    pruned = out / "pruned-channel-50"
    measured = json.loads((out / "result.json").read_text())["rows"]
    torch_row = next(r for r in measured if r["variant"] == "pruned-channel-50" and r["backend"] == "torch")

    # eval: the loaded pruned model scores what compress measured for it on the same test split
    metrics = json.loads(cli("eval", pruned))["metrics"]
    assert metrics["accuracy"] == pytest.approx(torch_row["accuracy"], abs=1e-9)
    model, meta = load_model(pruned)
    assert meta.compression is not None
    assert "shape_attributes" in meta.compression
    assert sum(p.numel() for p in model.parameters()) == torch_row["params"]

    # export --check: every available backend matches eager on a real validation batch
    export = base / "export"
    checked = cli("export", pruned, "--out", export, "--check")
    assert "onnxruntime" in checked
    assert "FAIL" not in checked
    assert "ERROR" not in checked

    # profile: the training step and inference, from the checkpoint and from the export
    cli("profile", pruned, "--steps", "2", "--out", base / "profile")
    profile = json.loads((base / "profile" / "profile.json").read_text())
    assert profile["train"]["rows_per_step"] > 0
    assert profile["inference"]["rows_per_step"] > 0
    cli("profile", export, f"root={base / 'data'}", "--steps", "2", "--mode", "inference",
        "--out", base / "profile_export")

    # serve the export; answers match the pruned checkpoint run eagerly
    _serve_matches_eager(export, model)


def _serve_matches_eager(export: Path, model: torch.nn.Module) -> None:
    from mmfurnace.serve.config import ServeConfig
    from mmfurnace.serve.engine import InferenceEngine
    from mmfurnace.serve.server import BackgroundServer

    g = torch.Generator().manual_seed(5)
    image = torch.randn(3, 1, 28, 28, generator=g)
    text = torch.randint(8, INFO.vocab_size, (3, 7), generator=g)
    body = {"inputs": [
        {"name": "image", "shape": list(image.shape), "datatype": "FP32", "data": image.flatten().tolist()},
        {"name": "text", "shape": list(text.shape), "datatype": "INT64", "data": text.flatten().tolist()},
    ], "outputs": [{"name": "logits"}]}
    with BackgroundServer(InferenceEngine.from_export(export, ServeConfig(max_wait_ms=2))) as server:
        reply = httpx.post(f"{server.url}/v2/models/mmfurnace/infer", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    logits = next(o for o in reply.json()["outputs"] if o["name"] == "logits")
    served = torch.tensor(logits["data"]).reshape(logits["shape"])
    present = {m: torch.ones(3, dtype=torch.bool) for m in ("image", "text")}
    with torch.no_grad():
        want = model({"image": image, "text": text}, present, {"text": text != 0}).logits
    torch.testing.assert_close(served, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("method", "options", "variant"), [
    ("distill", ["width=0.5", "fusion=late", "finetune_epochs=1", "max_steps=2"], "student"),
    ("bf16", [], "bf16"),
])
def test_distilled_and_half_checkpoints_eval_and_export(run, method, options, variant):
    base = run["base"]
    out = base / method
    args = [a for o in options for a in ("-o", o)]
    cli("compress", run["best"], "--method", method, *args, "--budget", "100", "--out", out,
        "--report", base / "report")
    rows = json.loads((out / "result.json").read_text())["rows"]
    row = next(r for r in rows if r["variant"] == variant and r["backend"] == "torch")
    metrics = json.loads(cli("eval", out / variant))["metrics"]
    assert metrics["accuracy"] == pytest.approx(row["accuracy"], abs=1e-9)
    model, meta = load_model(out / variant)
    if method == "bf16":
        assert next(model.parameters()).dtype == torch.bfloat16  # loaded as it was compressed
    cli("profile", out / variant, "--steps", "1", "--out", base / f"profile-{method}")
    cli("export", out / variant, "--out", base / f"export-{method}")
    batch = next(iter(make_loader(tiny_splits()["test"], modalities=INFO.modalities, batch_size=8, shuffle=False)))
    from mmfurnace.export import RUNTIMES

    served = _serve_checkpoint_eagerly(out / variant, batch)
    dtype = next(model.parameters()).dtype
    inputs = {m: x.to(dtype) if x.is_floating_point() else x for m, x in batch.inputs.items()}
    with torch.no_grad():
        as_saved = model(inputs, batch.present, batch.valid).logits.float()
    # served as it was saved (one trimmed row vs a padded batch: BF16 rounds them differently)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(served, as_saved[0], rtol=tol, atol=tol)
    logits = torch.from_numpy(RUNTIMES["onnxruntime"](base / f"export-{method}").run(batch))
    with torch.no_grad():
        want = model.float()(batch.inputs, batch.present, batch.valid).logits
    torch.testing.assert_close(logits, want, rtol=1e-3, atol=1e-3)


def _serve_checkpoint_eagerly(checkpoint: Path, batch) -> torch.Tensor:
    """The logits InferenceEngine.from_checkpoint (PyTorch stages) answers for the first row."""
    import asyncio

    from mmfurnace.serve.config import ServeConfig
    from mmfurnace.serve.engine import InferenceEngine

    eager = {"device": "cpu", "runtime": "eager"}
    cfg = ServeConfig(max_wait_ms=2, stages={m: eager for m in INFO.modalities}, fusion=eager)
    row = {m: batch.inputs[m][0].numpy() for m in INFO.modalities if bool(batch.present[m][0])}
    if "audio" in row:
        row["audio"] = row["audio"][: int(batch.valid["audio"][0].sum())]
    if "text" in row:
        row["text"] = row["text"][: int(batch.valid["text"][0].sum())]

    async def infer():
        async with InferenceEngine.from_checkpoint(checkpoint, cfg) as engine:
            return await engine.infer(row)

    return torch.from_numpy(asyncio.run(infer()).logits).float()
