"""Runtime "openvino": the ONNX graph compiled by OpenVINO for its CPU plugin."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from mmfurnace.errors import ConfigError
from mmfurnace.export.runtimes.base import Runtime, wrap_engine_error
from mmfurnace.export.runtimes.registry import RUNTIMES

HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16"}


@functools.cache
def _core() -> Any:
    import openvino as ov

    return ov.Core()


@functools.cache
def _cpu_capabilities() -> tuple[str, ...]:
    import openvino.properties as props

    return tuple(_core().get_property("CPU", props.device.capabilities))


@RUNTIMES.register("openvino")
class OpenVinoRuntime(Runtime):
    """Options: device ("CPU"), hint ("LATENCY" / "THROUGHPUT" / "CUMULATIVE_THROUGHPUT" —
    OpenVINO's PERFORMANCE_HINT), threads (INFERENCE_NUM_THREADS), streams (NUM_STREAMS).
    Precision is OpenVINO's INFERENCE_PRECISION_HINT: fp32, and bf16 / fp16 where the CPU
    reports the capability (bf16 on AVX512-BF16 / AMX CPUs)."""

    name = "openvino"
    precisions = ("fp32", "bf16", "fp16")

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return False, "openvino not installed (pip install 'mmfurnace[openvino]')"
        return True, ""

    @classmethod
    def supported_precisions(cls) -> tuple[str, ...]:
        caps = _cpu_capabilities()
        return tuple(p for p in cls.precisions if _CAPABILITY[p] in caps)

    def __init__(
        self,
        export_dir: str | Path,
        *,
        device: str = "CPU",
        hint: str = "LATENCY",
        streams: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(export_dir, **kwargs)  # raises MissingDependencyError without OpenVINO
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        if hint.upper() not in HINTS:
            raise ConfigError(f"openvino hint {hint!r} is unknown; known: {', '.join(HINTS)}")
        self.onnx_path = self.spec.file(self.graph.name, "onnx", verify=self.verify)
        config: dict[Any, Any] = {
            hints.performance_mode: getattr(hints.PerformanceMode, hint.upper()),
            hints.inference_precision: getattr(ov.Type, _OV_PRECISION[self.precision]),
        }
        if self.threads is not None:
            config[props.inference_num_threads] = self.threads
        if streams is not None:
            config[props.num_streams] = streams
        core = _core()
        try:
            model = core.read_model(str(self.onnx_path))
            self.compiled = core.compile_model(model, device, config)
        except Exception as err:  # OpenVINO raises RuntimeError with a long C++ trace
            raise wrap_engine_error(self.onnx_path, err) from None
        self.request = self.compiled.create_infer_request()
        self.device, self.hint = device, hint.upper()
        outputs = {o.get_any_name(): o for o in self.compiled.outputs}
        self._outputs = [outputs[n] for n in self.graph.output_names]

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(self.onnx_feed(feed))
        return [np.array(result[o]) for o in self._outputs]

    def _describe(self) -> dict[str, Any]:
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        return {
            "version": ov.get_version(),
            "device": self.device,
            "threads": int(self.compiled.get_property(props.inference_num_threads)),
            "providers": [self.device],
            "hint": self.hint,
            "inference_precision": self.compiled.get_property(
                hints.inference_precision
            ).get_type_name(),
            "streams": str(self.compiled.get_property(props.num_streams)),
        }
