"""Runtime "openvino": the ONNX graph compiled by OpenVINO for its CPU plugin.

Why it keeps static-shape models of the shapes it sees often: the exported graph has dynamic
batch and sequence axes, and OpenVINO's CPU plugin runs a dynamic graph through per-call shape
inference and buffer (re)allocation and without its static-shape kernels and fusions. On the
demo's cross-attention model that cost a third of each call (CPU time per call of the same
inputs: 10.7 ms dynamic vs 7.1 ms static at batch 32, 1.87 vs 1.20 ms at batch 1). So when
the same input shapes come ``specialize_after`` times, a static-shape copy is compiled for
them in a background thread (0.3-1 s; OpenVINO releases the GIL) while calls keep running on
the dynamic model, which they leave once the copy is ready: no call waits for a compile. At
most ``static_shapes`` copies are ever compiled by one runtime (the first shapes that recur;
later ones stay on the dynamic model): requests of ever new lengths, or more recurring shapes
than slots, cannot keep the CPU busy compiling.
"""

from __future__ import annotations

import functools
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mmfurnace.cpu import cpu_isa, u8s8_kernel
from mmfurnace.errors import ConfigError
from mmfurnace.export.int8_format import (
    RECORD_KEY,
    REQUANTIZE,
    SATURATES,
    Int8FormatWarning,
    load_advice,
)
from mmfurnace.export.runtimes.base import Runtime, wrap_engine_error
from mmfurnace.export.runtimes.registry import RUNTIMES

HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16"}

Shapes = tuple[tuple[str, tuple[int, ...]], ...]


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
    OpenVINO's PERFORMANCE_HINT), threads (INFERENCE_NUM_THREADS), streams (NUM_STREAMS),
    static_shapes (how many static-shape copies may be compiled for recurring input shapes;
    0: always the dynamic graph), specialize_after (calls with the same shapes before a copy
    is compiled for them).
    Precision is OpenVINO's INFERENCE_PRECISION_HINT, always set (never left to the plugin's
    default): fp32, and bf16 / fp16 where the CPU reports the capability (bf16 on
    AVX512-BF16 / AMX CPUs). An INT8 (QDQ) export runs on OpenVINO's INT8 kernels at any of
    them; one quantized as u8s8 on a CPU whose INT8 kernels saturate gets a warning."""

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
        static_shapes: int = 4,
        specialize_after: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(export_dir, **kwargs)  # raises MissingDependencyError without OpenVINO
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        if hint.upper() not in HINTS:
            raise ConfigError(f"openvino hint {hint!r} is unknown; known: {', '.join(HINTS)}")
        if static_shapes < 0 or specialize_after < 1:
            raise ConfigError(f"openvino needs static_shapes >= 0 and specialize_after >= 1, "
                              f"got {static_shapes} and {specialize_after}")
        self.onnx_path = self.spec.file(self.graph.name, "onnx", verify=self.verify)
        self.config: dict[Any, Any] = {
            hints.performance_mode: getattr(hints.PerformanceMode, hint.upper()),
            hints.inference_precision: getattr(ov.Type, _OV_PRECISION[self.precision]),
        }
        if self.threads is not None:
            self.config[props.inference_num_threads] = self.threads
        if streams is not None:
            self.config[props.num_streams] = streams
        self.device, self.hint = device, hint.upper()
        self.static_shapes, self.specialize_after = static_shapes, specialize_after
        self._warn_int8()
        self.compiled = self._compile(None)
        self.request = self.compiled.create_infer_request()
        self._static: dict[Shapes, Any] = {}  # shapes -> infer request of the static copy
        self._pending: dict[Shapes, Future] = {}  # shapes -> compile in the background
        self._seen: dict[Shapes, int] = {}
        self._compiler: ThreadPoolExecutor | None = None

    def _compile(self, shapes: Shapes | None) -> Any:
        """The ONNX graph compiled for ``device``; with static ``shapes`` when given."""
        core = _core()
        config = self.config
        if shapes is not None:
            # OpenVINO 2026.4's CPU plugin segfaults compiling the late and gated fusion heads
            # with static shapes when its "snippets" subgraph compiler is on; without it the
            # static copy keeps its speed (demo model, CPU ms per call at batch 32: 6.4 with,
            # 6.6 without, 9.3 dynamic)
            config = {**config, "SNIPPETS_MODE": "DISABLE"}
        try:
            model = core.read_model(str(self.onnx_path))
            if shapes is not None:
                model.reshape({name: list(shape) for name, shape in shapes})
            return core.compile_model(model, self.device, config)
        except Exception as err:  # OpenVINO raises RuntimeError with a long C++ trace
            raise wrap_engine_error(self.onnx_path, err) from None

    def _warn_int8(self) -> None:
        compression = self.spec.raw.get("compression") or {}
        advice = load_advice(compression.get(RECORD_KEY), what=str(self.spec.directory), precision_mode=False)
        if advice.problem == SATURATES and compression.get("type") == "Int8DynamicConfig":
            return  # measured (emulated AVX2): OpenVINO runs ORT's dynamic INT8 graph exactly
        if advice.problem == SATURATES:  # OpenVINO has no precision mode: re-quantizing is the fix
            warnings.warn(
                f"{self.spec.directory} was quantized as u8s8 (8-bit weights) on a CPU with VNNI; on this "
                f"CPU ({u8s8_kernel(cpu_isa())} INT8 kernels, no VNNI) OpenVINO sums pairs of u8 x s8 "
                f"products in 16 bits, which saturate: expect lost accuracy. Fix: {REQUANTIZE}.",
                Int8FormatWarning, stacklevel=3)
        elif advice.warning:
            warnings.warn(advice.warning, Int8FormatWarning, stacklevel=3)

    def _request_for(self, feed: dict[str, np.ndarray]) -> Any:
        """The static-shape request for ``feed``'s shapes once it is compiled, else the
        dynamic one (starting that compile when the shapes have come often enough)."""
        if self.static_shapes == 0:
            return self.request
        shapes: Shapes = tuple((name, tuple(a.shape)) for name, a in feed.items())
        request = self._static.get(shapes)
        if request is not None:
            return request
        pending = self._pending.get(shapes)
        if pending is not None:
            if not pending.done():
                return self.request
            if pending.exception() is not None:  # cannot be specialised: stays dynamic (and pending)
                return self.request
            del self._pending[shapes]
            self._static[shapes] = pending.result()
            return self._static[shapes]
        if len(self._static) + len(self._pending) >= self.static_shapes:
            return self.request  # every slot taken: no more compiles
        seen = self._seen[shapes] = self._seen.get(shapes, 0) + 1
        if seen >= self.specialize_after:
            del self._seen[shapes]
            if self._compiler is None:
                self._compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmfurnace-ov-compile")
            self._pending[shapes] = self._compiler.submit(lambda: self._compile(shapes).create_infer_request())
        if len(self._seen) > 64 * self.static_shapes:  # one-off shapes must not pile up
            self._seen.clear()
        return self.request

    def wait_for_static(self, timeout: float | None = None) -> int:
        """Block until the static-shape compiles started so far are done (benchmarks call it
        after warm-up, so that what they time is the steady state). Returns how many static
        copies are ready or pending."""
        for future in list(self._pending.values()):
            future.exception(timeout=timeout)  # waits; a failure shows on the next call
        return len(self._static) + len(self._pending)

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        inputs = {k: np.ascontiguousarray(v) for k, v in self.onnx_feed(feed).items()}
        request = self._request_for(inputs)
        # share_*: no copy of the inputs into OpenVINO tensors, nor of the outputs out of
        # them; outputs are copied once below, before the next call overwrites them
        result = request.infer(inputs, share_inputs=True, share_outputs=True)
        names = {o.get_any_name(): o for o in result}
        return [np.array(result[names[n]]) for n in self.graph.output_names]

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
            "static_shapes": len(self._static),
            "specialize_after": self.specialize_after,
        }
