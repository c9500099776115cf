"""The serving config: batching, queues, timeouts, workers, and where each stage runs.

Every bad value is rejected when the config is built (pydantic raises a ``ValidationError``,
a ``ValueError``; :func:`load_serve_config` turns it into a ConfigError naming the key), so a
server never starts with a setting it cannot honour — e.g. ``device: cuda:0`` on a machine
without a GPU fails here, not on the first request.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from mmfurnace.modalities import MODALITIES, Modality
from mmfurnace.typed_config import StrictModel, apply_overrides, load_yaml, parse

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
# "eager" runs the PyTorch module itself; the others are the export runtimes' names; "auto"
# picks the fastest one installed for the stage's device when the engine is built
# (mmfurnace.serve.loading.resolve_config).
EAGER = "eager"
AUTO = "auto"

DEFAULT_CONTENT_TYPES: dict[str, list[str]] = {
    "image": ["image/png", "image/jpeg", "image/bmp", "image/gif", "image/webp", "image/tiff"],
    "audio": ["audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "audio/flac",
              "audio/x-flac", "audio/ogg"],
    "text": ["text/plain"],
}


def known_runtimes() -> list[str]:
    """"auto", "eager" and every runtime registered in ``mmfurnace.export.runtimes.RUNTIMES``."""
    try:
        from mmfurnace.export.runtimes import RUNTIMES
    except ImportError:  # export runtimes not importable: eager still works
        return [AUTO, EAGER]
    return sorted({AUTO, EAGER, *RUNTIMES.names()})


def check_device(device: str) -> str:
    """Validate a device string ("cpu", "cuda", "cuda:N") against this machine."""
    if not _DEVICE.match(device):
        raise ValueError(f"device {device!r} is not 'cpu', 'cuda' or 'cuda:N'")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} requested but no CUDA GPU is available on this machine "
                "(torch.cuda.is_available() is False); use device: cpu"
            )
        index = int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ValueError(f"device {device!r} requested but this machine has {count} GPU(s)")
    return device


class StageConfig(StrictModel):
    """Where one stage (an encoder, the fusion head, or the whole model) runs.

    runtime "auto": the fastest runtime installed for the device that the export has a file
    for (CPU: onnxruntime, openvino, torchscript, then eager); what was picked, and why, is
    in ``GET /v2/models/{name}`` under ``engine``.
    """

    device: str = "cpu"
    # ``backend``, the key's old name, is still read (configs written before the rename).
    runtime: str = Field(AUTO, validation_alias=AliasChoices("runtime", "backend"))

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        return check_device(device)

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, runtime: str) -> str:
        known = known_runtimes()
        if runtime not in known:
            raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(known)}")
        return runtime

    @model_validator(mode="after")
    def _runtime_runs_on_device(self) -> StageConfig:
        if self.runtime not in (EAGER, AUTO):
            from mmfurnace.serve.stages import runtime_device_options

            runtime_device_options(self.runtime, self.device)  # ConfigError (a ValueError) if not
        return self


class RayConfig(StrictModel):
    """How ``mmfurnace serve --ray`` places the deployments (see :mod:`mmfurnace.serve.ray_app`).

    num_replicas: replicas of each deployment.
    num_cpus:     CPUs Ray reserves per replica (fractions allowed); None (default): the
                  cluster's CPUs shared out over every replica, so the application starts on
                  any machine. A request that the cluster cannot hold fails at once, naming
                  what to set. A stage on ``cuda`` also reserves one GPU (``num_gpus: 1``).
    direct_ingress: each ingress replica also serves HTTP itself, replica k on port
                  ``direct_port + k`` (Ray Serve's direct ingress, experimental in Ray 2.60),
                  so a request reaches the engine without crossing Ray's proxy actor: 3.4x the
                  proxy's req/s on 2 cores. The proxy on ``--port`` keeps routing. It takes
                  effect where mmfurnace starts Ray (no ``--address``); a cluster gets it when
                  its nodes are started with ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``.
    """

    num_replicas: int = Field(1, gt=0, le=1024)
    num_cpus: float | None = Field(None, ge=0.0, le=256.0)
    direct_ingress: bool = True
    direct_port: int = Field(30000, gt=0, lt=64536)


class ServeConfig(StrictModel):
    """Settings of one served model.

    mode:               "auto" (default): "whole" when every stage is on one device, else
                        "split". "split" runs each modality's encoder as its own batched stage
                        (in parallel, on its own device/runtime) and then the fusion head —
                        for encoders on different devices; "whole" runs the full model per
                        batch (one stage, ``whole``; on the CPU with ``preprocess_mode:
                        process``, each worker process decodes, computes features and runs the
                        model for a whole batch: :mod:`mmfurnace.serve.workers`).
    max_batch_size:     rows per batch, per stage.
    max_wait_ms:        a batch is dispatched when full or when its oldest row has waited this.
    max_queue:          rows that may wait per stage; beyond it requests are shed (HTTP 503).
    max_concurrency:    rows in flight in the whole engine (admission limit, HTTP 503 beyond).
    latency_budget_ms:  admission by latency (Triton's queue policy / Ray Serve's queue
                        limit, sized in time): a request is shed at the door (HTTP 503) when
                        the rows admitted ahead of it would take longer than this to serve at
                        the measured drain rate (:mod:`mmfurnace.serve.admission`) — or
                        longer than its own deadline
                        (``X-Request-Timeout-Ms`` header, or v2 ``parameters.timeout`` in
                        microseconds), whichever is shorter. "auto" (default): the time the
                        bottleneck takes to serve 1.5 full batches at its measured drain rate
                        (at least 100 ms) — 100–120 ms for the demo's model, seconds for one
                        with pretrained backbones, so the budget follows the model instead of a
                        fixed number that sheds a slow model at 3 clients. None: only the queue
                        bounds.
    max_inflight_batches: batches a stage may have in flight at once; 2 lets the next batch
                        be collated (and copied to the GPU) while the current one computes.
    request_timeout_s:  per-request deadline (HTTP 504 when it passes).
    preprocess_workers / preprocess_mode: the pool that decodes raw inputs ("thread" or
                        "process"; see :mod:`mmfurnace.serve.preprocess` for the measured choice).
    stages:             modality -> StageConfig for that modality's encoder (missing: cpu/eager).
    fusion:             StageConfig of the fusion + head stage ("split" mode).
    whole:              StageConfig of the full-model stage ("whole" mode).
    intra_op_threads:   intra-op threads of each runtime session (ONNX Runtime, OpenVINO, ...).
                        1 by default: stages, batches and preprocessing already run in
                        parallel, and several sessions each spinning a pool of all cores
                        oversubscribe a small CPU. Raise it for big models on many cores.
    torch_threads:      torch's intra-op threads while the engine runs (set by ``start()``,
                        restored by ``stop()``; process-wide, as torch has only one setting).
                        1 by default for the same reason — on a busy 2-core machine torch's
                        default (all cores) made one MFCC 30x slower. None leaves it alone.
    max_upload_bytes:   largest request body accepted (HTTP 413 beyond).
    max_request_rows:   rows one /infer request may carry.
    allowed_content_types: modality -> content types accepted for uploaded files.
    retry_after_s:      the Retry-After an overloaded response carries.
    ray:                replicas and CPUs per deployment under ``mmfurnace serve --ray``.
    """

    model_name: str = Field("mmfurnace", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    mode: Literal["auto", "split", "whole"] = "auto"
    max_batch_size: int = Field(32, gt=0, le=4096)
    max_wait_ms: float = Field(5.0, ge=0.0, le=60_000.0)
    max_queue: int = Field(256, gt=0, le=1_000_000)
    max_concurrency: int = Field(512, gt=0, le=1_000_000)
    latency_budget_ms: float | Literal["auto"] | None = "auto"
    max_inflight_batches: int = Field(2, gt=0, le=64)
    request_timeout_s: float = Field(30.0, gt=0.0, le=3600.0)
    preprocess_workers: int = Field(2, gt=0, le=256)
    preprocess_mode: Literal["thread", "process"] = "process"
    stages: dict[Modality, StageConfig] = Field(default_factory=dict)
    fusion: StageConfig = Field(default_factory=StageConfig)
    whole: StageConfig = Field(default_factory=StageConfig)
    intra_op_threads: int | None = Field(1, gt=0, le=256)
    torch_threads: int | None = Field(1, gt=0, le=256)
    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0, le=1 << 31)
    max_request_rows: int = Field(256, gt=0, le=65536)
    allowed_content_types: dict[Modality, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_CONTENT_TYPES.items()}
    )
    retry_after_s: int = Field(1, ge=0, le=3600)
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("allowed_content_types")
    @classmethod
    def _content_types(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for modality, types in value.items():
            for t in types:
                if "/" not in t or t != t.strip().lower():
                    raise ValueError(
                        f"allowed_content_types.{modality}: {t!r} is not a lower-case type/subtype"
                    )
        return value

    @field_validator("latency_budget_ms")
    @classmethod
    def _budget(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, int | float) and not 0.0 < value <= 3_600_000.0:
            raise ValueError(f"latency_budget_ms must be in (0, 3600000] ms, 'auto' or null, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        if self.max_queue < self.max_batch_size:
            raise ValueError(
                f"max_queue ({self.max_queue}) must be >= max_batch_size ({self.max_batch_size}), "
                "or a full batch could never form"
            )
        return self

    def stage(self, modality: str) -> StageConfig:
        """The encoder stage settings of ``modality`` (cpu/eager when not configured)."""
        assert modality in MODALITIES, modality
        return self.stages.get(modality, StageConfig())  # type: ignore[arg-type]

    def uses_gpu(self) -> bool:
        stages = {"whole": [self.whole], "split": [*self.stages.values(), self.fusion]}.get(
            self.mode, [self.whole, *self.stages.values(), self.fusion])
        return any(s.device.startswith("cuda") for s in stages)


def load_serve_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ServeConfig:
    """Read a serving config from YAML (None: defaults), apply ``key=value`` overrides,
    validate. Raises ConfigError naming each bad key."""
    raw = load_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    return parse(ServeConfig, raw, source=str(path) if path else "serve config")
