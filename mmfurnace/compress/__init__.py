"""Compression: FP16/BF16, INT8 dynamic/static/QAT, sensitivity-guided mixed precision,
unstructured and fusion-aware structured pruning, distillation — each variant measured
against its parent (accuracy, latency, size, MACs).

Read like torchao: ``quantize_(model, config, filter_fn=...)`` and ``prune_(model, config)``
work in place; configs are dataclasses validated when built. ``compress(checkpoint, method,
out_dir=..., **options)`` runs a whole method end to end (what the CLI calls).

``mmfurnace.compress(checkpoint, method, out_dir=..., **options)`` runs :func:`mmfurnace.compress.api.compress`.
"""

from mmfurnace.compress.api import (
    METHODS,
    CompressResult,
    compress,
    compress_together,
    known_methods,
    load_compressed,
)
from mmfurnace.compress.config import (
    ChannelConfig,
    DistillConfig,
    FinetuneConfig,
    HalfConfig,
    Int8DynamicConfig,
    Int8StaticConfig,
    MagnitudeConfig,
    QATConfig,
    SensitivityConfig,
)
from mmfurnace.compress.prune import make_permanent_, prune_
from mmfurnace.compress.qat import prepare_qat_
from mmfurnace.compress.quantize import quantize_, quantize_onnx

__all__ = [
    "METHODS",
    "ChannelConfig",
    "CompressResult",
    "DistillConfig",
    "FinetuneConfig",
    "HalfConfig",
    "Int8DynamicConfig",
    "Int8StaticConfig",
    "MagnitudeConfig",
    "QATConfig",
    "SensitivityConfig",
    "compress",
    "compress_together",
    "known_methods",
    "load_compressed",
    "make_permanent_",
    "prepare_qat_",
    "prune_",
    "quantize_",
    "quantize_onnx",
]

from mmfurnace.entrypoints import make_callable  # noqa: E402

make_callable(__name__, "mmfurnace.compress.api:compress")
