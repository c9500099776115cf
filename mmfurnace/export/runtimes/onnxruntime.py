"""Runtimes "onnxruntime" (CPU EP), "onnxruntime-cuda" and "onnxruntime-tensorrt" (GPU EPs)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mmfurnace.errors import ConfigError
from mmfurnace.export.int8_format import (
    AUTO,
    INT8_FORMATS,
    ORT_PRECISION_MODE,
    RECORD_KEY,
    Int8FormatWarning,
    load_advice,
    resolve_int8_format,
)
from mmfurnace.export.runtimes.base import (
    Runtime,
    cache_dir,
    cuda_device_count,
    profile_shapes,
    wrap_engine_error,
)
from mmfurnace.export.runtimes.registry import RUNTIMES

OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "layout": "ORT_ENABLE_LAYOUT",
    "all": "ORT_ENABLE_ALL",
}


def _ort_available(provider: str | None) -> tuple[bool, str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime not installed (pip install 'mmfurnace[onnx]')"
    if provider is None:
        return True, ""
    if provider not in ort.get_available_providers():
        return False, f"this onnxruntime build has no {provider} (install onnxruntime-gpu)"
    if cuda_device_count() == 0:
        return False, "needs a CUDA GPU; none is visible"
    return True, ""


@RUNTIMES.register("onnxruntime")
class OnnxRuntime(Runtime):
    """ONNX Runtime on the CPU execution provider.

    Options: graph_optimization ("disable", "basic", "extended", "layout", "all"),
    optimized_model (True: save the optimized graph to <cache>/<graph>.ort-<level>.onnx via
    ``SessionOptions.optimized_model_filepath``; a path: save there; False: don't),
    threads (intra-op), inter_op_threads, parallel (ORT_PARALLEL execution mode),
    cache_dir. Precision fp32, or int8 (dynamic quantization of MatMul/Gemm weights by
    ``onnxruntime.quantization.quantize_dynamic`` in the INT8 format exact on this CPU, cached
    by ONNX hash and format). FP16 is not offered on the CPU EP: it needs a converted graph
    (onnxconverter-common) and ORT's CPU kernels mostly run it in float32 anyway.

    INT8 across CPUs: an export quantized as u8s8 (8-bit weights) loaded on an x86 CPU without
    VNNI, whose U8S8 kernels saturate, warns (:class:`Int8FormatWarning`) and turns on ORT's
    precision mode (``session.x64quantprecision``: such weights run on U8U8 kernels, exact,
    slower); ``precision_mode=True/False`` forces it. See mmfurnace.export.int8_format.
    """

    name = "onnxruntime"
    precisions = ("fp32", "int8")
    provider: ClassVar[str | None] = None  # the GPU EP a subclass needs

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return _ort_available(cls.provider)

    def __init__(
        self,
        export_dir: str | Path,
        *,
        graph_optimization: str = "all",
        optimized_model: bool | str | Path = True,
        inter_op_threads: int | None = None,
        parallel: bool = False,
        cache_dir: str | Path | None = None,
        precision_mode: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(export_dir, **kwargs)  # raises MissingDependencyError without ORT / its EP
        import onnxruntime as ort

        if graph_optimization not in OPT_LEVELS:
            raise ConfigError(
                f"graph_optimization {graph_optimization!r} is unknown; known: {', '.join(OPT_LEVELS)}"
            )
        self.onnx_path = self.spec.file(self.graph.name, "onnx", verify=self.verify)
        self.cache = _cache_or_temp(self.spec, cache_dir)
        model_path = self._model_for_precision()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: shape-hint warnings are noise here
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, OPT_LEVELS[graph_optimization]
        )
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        if inter_op_threads is not None:
            options.inter_op_num_threads = inter_op_threads
        options.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        self.int8_record = self._int8_record()
        self.precision_mode = bool(precision_mode)
        if self.provider is None:  # the GPU EPs run INT8 on their own kernels
            advice = load_advice(self.int8_record, what=str(self.spec.directory), precision_mode=precision_mode)
            if advice.warning:
                warnings.warn(advice.warning, Int8FormatWarning, stacklevel=2)
            self.precision_mode = advice.precision_mode
        if self.precision_mode:
            options.add_session_config_entry(ORT_PRECISION_MODE, "1")
        self.optimized_path: Path | None = None
        if optimized_model:
            self.optimized_path = (
                Path(optimized_model)
                if not isinstance(optimized_model, bool)
                else self.cache
                / f"{self.graph.name}.{self.precision}.ort-{graph_optimization}.onnx"
            )
            options.optimized_model_filepath = str(self.optimized_path)
        self.graph_optimization = graph_optimization
        try:
            self.session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=self._providers()
            )
        except Exception as err:  # ORT raises its own Fail/InvalidGraph/... types
            raise wrap_engine_error(model_path, err) from None
        self._outputs = self.graph.output_names

    def _providers(self) -> list[Any]:
        return ["CPUExecutionProvider"]

    def _int8_record(self) -> dict[str, Any] | None:
        """The INT8 format of the graph this session runs: the export's own
        (``compression.int8``) or, at precision int8, the one chosen here."""
        if self.precision == "int8":
            return self._dynamic_format
        return (self.spec.raw.get("compression") or {}).get(RECORD_KEY)

    def _model_for_precision(self) -> Path:
        if self.precision != "int8":
            return self.onnx_path
        from onnxruntime.quantization import QuantType, quantize_dynamic

        self._dynamic_format = resolve_int8_format(AUTO)
        fmt = INT8_FORMATS[self._dynamic_format["format"]]
        key = self.spec.hashes.get(self.onnx_path.name, "")[:16]
        target = self.cache / f"{self.graph.name}.int8-dynamic-{fmt.name}.{key}.onnx"
        if not target.is_file():
            tmp = target.with_suffix(f".{os.getpid()}.tmp.onnx")
            quantize_dynamic(
                self.onnx_path,
                tmp,
                op_types_to_quantize=["MatMul", "Gemm"],
                weight_type=QuantType.QInt8,
                reduce_range=fmt.reduce_range,
            )
            tmp.replace(target)
        return target

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self._outputs, self.onnx_feed(feed))

    def _describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        options = self.session.get_session_options()
        return {
            "version": ort.__version__,
            "device": "cuda" if self.provider else "cpu",
            "threads": options.intra_op_num_threads or os.cpu_count(),
            "providers": self.session.get_providers(),
            "graph_optimization": self.graph_optimization,
            "optimized_model": str(self.optimized_path) if self.optimized_path else None,
            "int8_format": (self.int8_record or {}).get("format"),
            "precision_mode": self.precision_mode,
        }


@RUNTIMES.register("onnxruntime-cuda")
class OnnxRuntimeCuda(OnnxRuntime):
    """ONNX Runtime on the CUDA execution provider (CPU fallback for unsupported nodes).
    Option device_id. Precision fp32."""

    name = "onnxruntime-cuda"
    precisions = ("fp32",)
    provider = "CUDAExecutionProvider"

    def __init__(self, export_dir: str | Path, *, device_id: int = 0, **kwargs: Any) -> None:
        self.device_id = device_id
        super().__init__(export_dir, **kwargs)

    def _providers(self) -> list[Any]:
        return [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]


@RUNTIMES.register("onnxruntime-tensorrt")
class OnnxRuntimeTensorRT(OnnxRuntime):
    """ONNX Runtime on the TensorRT execution provider (CUDA, then CPU, for the rest).

    Options: device_id, batch (min, opt, max) and lengths {modality: (min, opt, max)} for the
    explicit optimization profile, workspace_gb. Engines are cached under
    <cache>/ort-trt (TensorRT EP's own cache, keyed by graph and profile). Precision fp32 or
    fp16 (``trt_fp16_enable``).
    """

    name = "onnxruntime-tensorrt"
    precisions = ("fp32", "fp16")
    provider = "TensorrtExecutionProvider"

    def __init__(
        self,
        export_dir: str | Path,
        *,
        device_id: int = 0,
        batch: tuple[int, int, int] = (1, 8, 128),
        lengths: dict[str, tuple[int, int, int]] | None = None,
        workspace_gb: float = 2.0,
        **kwargs: Any,
    ) -> None:
        self.device_id, self.batch_profile, self.lengths, self.workspace_gb = (
            device_id,
            batch,
            lengths,
            workspace_gb,
        )
        super().__init__(export_dir, **kwargs)

    def _providers(self) -> list[Any]:
        shapes = profile_shapes(
            self.spec, self.graph, batch=self.batch_profile, lengths=self.lengths
        )

        def fmt(i: int) -> str:
            return ",".join(
                f"{name}:{'x'.join(str(d) for d in s[i])}" for name, s in shapes.items()
            )

        engines = self.cache / "ort-trt"
        engines.mkdir(parents=True, exist_ok=True)
        trt_options = {
            "device_id": self.device_id,
            "trt_fp16_enable": self.precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(engines),
            "trt_timing_cache_enable": True,
            "trt_max_workspace_size": int(self.workspace_gb * (1 << 30)),
            "trt_profile_min_shapes": fmt(0),
            "trt_profile_opt_shapes": fmt(1),
            "trt_profile_max_shapes": fmt(2),
        }
        return [
            ("TensorrtExecutionProvider", trt_options),
            ("CUDAExecutionProvider", {"device_id": self.device_id}),
            "CPUExecutionProvider",
        ]


def _cache_or_temp(spec: Any, option: str | Path | None) -> Path:
    # A read-only export directory (a deployed artefact) still runs: cache in a temp dir.
    try:
        return cache_dir(spec, option)
    except OSError:
        digest = hashlib.sha256(json.dumps(sorted(spec.hashes.items())).encode()).hexdigest()[:12]
        path = Path(tempfile.gettempdir()) / f"mmfurnace-cache-{digest}"
        path.mkdir(parents=True, exist_ok=True)
        return path
