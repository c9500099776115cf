"""Backends behind one interface: ``RUNTIMES[name](export_dir, **options)``.

eager, compile, torchscript (PyTorch); onnxruntime (CPU EP), onnxruntime-cuda,
onnxruntime-tensorrt (GPU EPs); openvino (CPU); tensorrt (GPU). Each module imports its heavy
dependency only when a runtime is built, so listing them is cheap; ``available()`` says whether
one can run here and why not.
"""

from mmfurnace.export.runtimes.registry import RUNTIMES  # isort: skip
from mmfurnace.export.runtimes import (  # noqa: F401  (register the backends)
    compile,
    eager,
    onnxruntime,
    openvino,
    tensorrt,
    torchscript,
)
from mmfurnace.export.runtimes.base import PRECISIONS, Runtime


def available_runtimes() -> dict[str, tuple[bool, str]]:
    """name -> (available, reason) for every registered backend."""
    return {name: RUNTIMES[name].available() for name in RUNTIMES}


__all__ = ["PRECISIONS", "RUNTIMES", "Runtime", "available_runtimes"]
