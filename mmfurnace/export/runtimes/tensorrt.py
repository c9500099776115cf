"""Runtime "tensorrt": a TensorRT engine built from the ONNX graph, cached on disk (GPU only).

The engine is built with one optimization profile covering a batch range (min/opt/max) and
the sequence lengths, with FP16 / BF16 / INT8 builder flags per precision, and is cached as
``<cache>/<graph>.<precision>.<key>.engine`` where the key hashes the ONNX file's SHA-256,
the build settings, the TensorRT version and the GPU name — so a changed model, setting or
machine builds a new engine and an unchanged one loads in milliseconds. Device buffers are
torch CUDA tensors (no pycuda needed). Uses the TensorRT 10 name-based tensor API
(``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmfurnace.data.batch import Batch
from mmfurnace.errors import ConfigError, InputError, MMFurnaceError
from mmfurnace.export.runtimes.base import Runtime, profile_shapes
from mmfurnace.export.runtimes.base import cache_dir as _cache
from mmfurnace.export.runtimes.registry import RUNTIMES


class EngineBuildError(MMFurnaceError, RuntimeError):
    """TensorRT could not parse the ONNX graph or build an engine from it."""


@RUNTIMES.register("tensorrt")
class TensorRTRuntime(Runtime):
    """Options: device_id, batch (min, opt, max) = (1, 8, 128), lengths {modality: (min, opt,
    max)}, workspace_gb, cache_dir, calibration (Batches for INT8 entropy calibration;
    default: the export's synthetic example batch). Precision fp32, fp16, bf16 or int8."""

    name = "tensorrt"
    precisions = ("fp32", "fp16", "bf16", "int8")

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return False, "tensorrt not installed"
        import torch

        if not torch.cuda.is_available():
            return False, "needs a CUDA GPU (and a CUDA build of torch for device buffers)"
        return True, ""

    def __init__(
        self,
        export_dir: str | Path,
        *,
        device_id: int = 0,
        batch: tuple[int, int, int] = (1, 8, 128),
        lengths: dict[str, tuple[int, int, int]] | None = None,
        workspace_gb: float = 2.0,
        cache_dir: str | Path | None = None,
        calibration: Sequence[Batch] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(export_dir, **kwargs)  # raises MissingDependencyError without TensorRT/GPU
        import tensorrt as trt
        import torch

        self.device = torch.device("cuda", device_id)
        self.onnx_path = self.spec.file(self.graph.name, "onnx", verify=self.verify)
        self.batch_profile = tuple(batch)
        self.profile = profile_shapes(
            self.spec, self.graph, batch=self.batch_profile, lengths=lengths
        )  # type: ignore[arg-type]
        self.workspace_gb = workspace_gb
        self.logger = trt.Logger(trt.Logger.WARNING)
        settings = {
            "precision": self.precision,
            "profile": {k: [list(s) for s in v] for k, v in self.profile.items()},
            "workspace_gb": workspace_gb,
            "tensorrt": trt.__version__,
            "gpu": torch.cuda.get_device_name(self.device),
            "onnx_sha256": self.spec.hashes.get(self.onnx_path.name, ""),
        }
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.engine_path = (
            _cache(self.spec, cache_dir) / f"{self.graph.name}.{self.precision}.{key}.engine"
        )
        self.built = False
        with torch.cuda.device(self.device):
            if not self.engine_path.is_file():
                self._build(calibration)
                self.built = True
            runtime = trt.Runtime(self.logger)
            self.engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if self.engine is None:
                raise EngineBuildError(
                    f"{self.engine_path}: TensorRT could not load the cached engine; delete it to rebuild"
                )
            self.context = self.engine.create_execution_context()
        self.inputs = [
            n for n in self._io_names() if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        ]

    # -- build ---------------------------------------------------------------------------

    def _build(self, calibration: Sequence[Batch] | None) -> None:
        import tensorrt as trt

        builder = trt.Builder(self.logger)
        flags = 0
        if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TRT 10
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(self.onnx_path.read_bytes(), str(self.onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineBuildError(f"{self.onnx_path}: TensorRT cannot parse it: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(
            trt.MemoryPoolType.WORKSPACE, int(self.workspace_gb * (1 << 30))
        )
        profile = builder.create_optimization_profile()
        for name, (lo, mid, hi) in self.profile.items():
            profile.set_shape(name, lo, mid, hi)
        config.add_optimization_profile(profile)
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif self.precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
        elif self.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.set_flag(trt.BuilderFlag.FP16)  # layers without INT8 kernels fall back to FP16
            calibrator = _calibrator(self, calibration)
            config.int8_calibrator = calibrator
            config.set_calibration_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineBuildError(
                f"{self.onnx_path}: TensorRT failed to build an engine ({self.precision}); see its log above"
            )
        tmp = self.engine_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(bytes(serialized))
        tmp.replace(self.engine_path)

    # -- run -----------------------------------------------------------------------------

    def _io_names(self) -> list[str]:
        return [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        import tensorrt as trt
        import torch

        feed = self.onnx_feed(feed)
        self._check_profile(feed)
        keep = []  # device tensors must outlive the launch
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            for name in self.inputs:
                want = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
                t = torch.from_numpy(np.ascontiguousarray(feed[name], dtype=want)).to(self.device)
                self.context.set_input_shape(name, tuple(t.shape))
                self.context.set_tensor_address(name, t.data_ptr())
                keep.append(t)
            outputs = {}
            for name in self.graph.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                dtype = torch.from_numpy(
                    np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                ).dtype
                out = torch.empty(shape, dtype=dtype, device=self.device)
                self.context.set_tensor_address(name, out.data_ptr())
                outputs[name] = out
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise EngineBuildError(f"{self.engine_path}: TensorRT execution failed")
            stream.synchronize()
        return [
            outputs[n].float().cpu().numpy()
            if outputs[n].is_floating_point()
            else outputs[n].cpu().numpy()
            for n in self.graph.output_names
        ]

    def _check_profile(self, feed: dict[str, np.ndarray]) -> None:
        for name, (lo, _, hi) in self.profile.items():
            shape = feed[name].shape
            if any(s < a or s > b for s, a, b in zip(shape, lo, hi, strict=False)):
                raise InputError(
                    f"input {name!r} has shape {tuple(shape)}; this TensorRT engine was built for "
                    f"{tuple(lo)}..{tuple(hi)} (rebuild with batch=/lengths= covering it)"
                )

    def _describe(self) -> dict[str, Any]:
        import tensorrt as trt
        import torch

        return {
            "version": trt.__version__,
            "device": f"cuda:{self.device.index} ({torch.cuda.get_device_name(self.device)})",
            "providers": ["TensorRT"],
            "engine": str(self.engine_path),
            "engine_built_now": self.built,
            "profile": {k: [list(s) for s in v] for k, v in self.profile.items()},
        }


def _calibrator(runtime: TensorRTRuntime, batches: Sequence[Batch] | None) -> Any:
    """An IInt8EntropyCalibrator2 feeding ``batches`` (validated like any input)."""
    import tensorrt as trt
    import torch

    from mmfurnace.export.inputs import make_example_batch

    if batches is None:
        batches = [
            make_example_batch(
                runtime.spec.info,
                runtime.batch_profile[1],
                seed=s,
                modalities=runtime.spec.modalities,
            )
            for s in range(8)
        ]
    feeds = [runtime.onnx_feed(runtime.feed(b)) for b in batches]
    sizes = {next(iter(f.values())).shape[0] for f in feeds}
    if len(sizes) != 1:
        raise ConfigError(
            f"INT8 calibration batches must share one batch size, got {sorted(sizes)}"
        )
    batch_size = sizes.pop()
    cache_path = runtime.engine_path.with_suffix(".calib")

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.index = 0
            self.held: list[torch.Tensor] = []

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(feeds):
                return None
            feed = feeds[self.index]
            self.index += 1
            self.held = [torch.from_numpy(feed[n]).to(runtime.device) for n in names]
            return [t.data_ptr() for t in self.held]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_path.write_bytes(bytes(cache))

    return Calibrator()
