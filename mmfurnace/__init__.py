"""mmfurnace: train, compress, export and serve multimodal classifiers.

The Python API, at the top level (each name is imported on first use, so ``import mmfurnace``
stays fast and needs no optional backend)::

    cfg = mmfurnace.load_config("configs/default.yaml", ["train.epochs=3"])   # RunConfig
    run = mmfurnace.train(cfg)                          # the training recipe -> TrainResult
    model, meta = mmfurnace.load(run.out_dir / "best")  # any checkpoint: trained, pruned, ...
    mmfurnace.evaluate(run.out_dir / "best")            # test metrics (noise="all": robustness)
    small = mmfurnace.compress(run.out_dir / "best", "int8-static", out_dir="runs/int8")
    out = mmfurnace.export(run.out_dir / "best", "exports/model")   # ONNX + TorchScript
    mmfurnace.serve(out)                                # HTTP (KServe v2) until interrupted

``mmfurnace.build_model(cfg.model, info)`` builds a fresh model. ``train``, ``compress``,
``export`` and ``serve`` are also the packages of those names (``mmfurnace.export.RUNTIMES``);
calling one runs its entry point (see :mod:`mmfurnace.entrypoints`).
"""

from __future__ import annotations

import importlib
from typing import Any

from mmfurnace.errors import ConfigError, InputError, MMFurnaceError

__version__ = "0.1.0"

# name -> "module:attribute" (a function) or "module" (a callable package)
_API = {
    "load_config": "mmfurnace.config:load_run_config",
    "build_model": "mmfurnace.models:build_model",
    "load": "mmfurnace.train.checkpoint:load_model",
    "evaluate": "mmfurnace.train.checkpoint_eval:evaluate_checkpoint",
    "train": "mmfurnace.train",
    "compress": "mmfurnace.compress",
    "export": "mmfurnace.export",
    "serve": "mmfurnace.serve",
}

__all__ = ["ConfigError", "InputError", "MMFurnaceError", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'mmfurnace' has no attribute {name!r}")
    module, _, attr = _API[name].partition(":")
    value = importlib.import_module(module)
    if attr:
        value = getattr(value, attr)
    globals()[name] = value  # resolved once; a package import sets the same value itself
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
