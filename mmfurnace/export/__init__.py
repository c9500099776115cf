"""Export: ONNX / TorchScript graphs + an export.json sidecar, runtimes behind one interface
(``RUNTIMES["onnxruntime"](export_dir)``), and a parity check against eager PyTorch.

``mmfurnace.export(checkpoint, out_dir, **options)`` runs :func:`mmfurnace.export.exporter.export_checkpoint`.
"""

from mmfurnace.export.exporter import ExportError, export_checkpoint, export_model
from mmfurnace.export.inputs import build_feed, make_example_batch
from mmfurnace.export.parity import (
    ParityResult,
    assert_parity,
    check_parity,
    format_parity,
    parity_exit_code,
)
from mmfurnace.export.runtimes import RUNTIMES, Runtime, available_runtimes
from mmfurnace.export.spec import ExportSpec, GraphSpec, TensorSpec, load_spec

__all__ = [
    "RUNTIMES",
    "ExportError",
    "ExportSpec",
    "GraphSpec",
    "ParityResult",
    "Runtime",
    "TensorSpec",
    "assert_parity",
    "available_runtimes",
    "build_feed",
    "check_parity",
    "export_checkpoint",
    "export_model",
    "format_parity",
    "load_spec",
    "make_example_batch",
    "parity_exit_code",
]

from mmfurnace.entrypoints import make_callable  # noqa: E402

make_callable(__name__, "mmfurnace.export.exporter:export_checkpoint")
