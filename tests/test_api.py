"""The public Python API at the top level: the README's ten lines, on the tiny packed data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmfurnace
from mmfurnace.data.cache import pack_datasets
from tests.compress.tinydata import tiny_model_config, tiny_splits

FAST = {"rounds": 2, "latency_samples": 2, "throughput_batch": 8, "threads": 1}


def test_import_is_light_and_the_names_are_there():
    code = "import sys, mmfurnace; print('torch' in sys.modules, sorted(mmfurnace.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False")  # nothing heavy until a name is used
    for name in ("load_config", "build_model", "train", "load", "evaluate", "compress", "export", "serve"):
        assert name in out
        assert callable(getattr(mmfurnace, name))
    # the callable names are still the packages: their modules stay reachable
    from mmfurnace.export import RUNTIMES
    from mmfurnace.train.recipe import train as recipe_train

    assert mmfurnace.export.RUNTIMES is RUNTIMES
    assert mmfurnace.train.recipe.train is recipe_train
    with pytest.raises(AttributeError):
        mmfurnace.no_such_thing  # noqa: B018


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path, monkeypatch):
    pack_datasets(tmp_path / "data", tiny_splits())
    model = json.dumps(tiny_model_config().model_dump(mode="json"))  # JSON is YAML: one override
    overrides = [f"data.root={tmp_path / 'data'}", "data.dataset=packed", "data.batch_size=32",
                 f"model={model}", "train.epochs=1", f"train.out_dir={tmp_path / 'run'}"]

    # the README's lines (a short fine-tune and measurement: tiny data)
    cfg = mmfurnace.load_config(None, overrides)
    run = mmfurnace.train(cfg, progress=False)
    model, meta = mmfurnace.load(run.out_dir / "best")
    metrics = mmfurnace.evaluate(run.out_dir / "best")["metrics"]
    pruned = mmfurnace.compress(run.out_dir / "best", "prune-channel", out_dir=tmp_path / "pruned", sparsity=0.5,
                                finetune_epochs=1, max_steps=2, report_dir=None,
                                accuracy_budget=100, **FAST)  # tiny data: the gate is not the point
    out = mmfurnace.export(pruned.artifacts["pruned-channel-50@torch"], tmp_path / "export", formats=("onnx",))

    assert metrics["accuracy"] == pytest.approx(run.test_metrics["accuracy"])
    assert isinstance(model, torch.nn.Module)
    assert meta.config.train.epochs == 1
    assert pruned.row("pruned-channel-50")["params"] < 0.5 * sum(p.numel() for p in model.parameters())
    assert (Path(out) / "export.json").is_file()
    served = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: served.update(app=app, **kwargs))
    mmfurnace.serve(out, port=8123)  # uvicorn.run would block until Ctrl-C
    assert served["port"] == 8123
    assert served["app"] is not None
