"""``mmfurnace serve --ray``: the same engine as a Ray Serve application.

With every stage on one device (``mode: auto`` resolves to whole, the default), the
application is ONE deployment, ``ingress``: each replica runs the whole engine of
:mod:`mmfurnace.serve.engine` (its batcher, its worker processes, the latency-budget
admission) behind the same HTTP routes, so a request crosses Ray once (proxy -> replica) and
its row is never routed between actors. (The split layout below made 4 handle calls per row:
25 req/s on 2 cores.)

Split mode (stages on different devices) deploys one Ray actor pool per stage
(``cfg.ray.num_replicas`` replicas each):
    encoder_<m>   one per modality: that encoder's stage, on the device/runtime its
                  config names (a cuda stage reserves ``num_gpus: 1``)
    fusion_head   the fusion + head stage
    (model        the whole model instead, with ``mode: whole``)
    ingress       the HTTP routes of :mod:`mmfurnace.serve.app` (same KServe v2 protocol,
                  /v1/predict, health, /metrics) over a :class:`RayEngine` that preprocesses
                  and calls the stage deployments through their handles — encoders
                  concurrently, then fusion
CPUs: each replica reserves ``ray.num_cpus``; left unset, the cluster's CPUs are shared out
over every replica, so the application starts wherever it is run (5 deployments x 0.5 CPU
never started on a 2-CPU machine: Ray waited forever). A request larger than the cluster is
refused at once with what to set. Each stage batches with ``@serve.batch`` (``max_batch_size``, ``batch_wait_timeout_s`` =
``max_wait_ms``) and sheds load past ``max_queue`` waiting requests (Ray's
``max_queued_requests``; the ingress answers 503 + Retry-After).

On one machine ``mmfurnace serve EXPORT --ray`` starts a local Ray. On a cluster::

    ray start --head --port 6379                      # on the head node
    ray start --address HEAD_IP:6379                  # on every other node (GPU nodes too)
    mmfurnace serve EXPORT --ray --address auto       # on the head: joins that cluster

Ray then places the encoder/fusion replicas on any node with the CPUs/GPUs they reserve.
Every node must see the export directory at the same path (shared storage, or copy it);
the tokenizer and preprocessing settings travel with the application. Scale with
``ray.num_replicas`` in the serving config. Ray is optional: it is imported only here.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mmfurnace.errors import ConfigError, MissingDependencyError
from mmfurnace.export.spec import FULL_GRAPH, FUSION_GRAPH, encoder_graph, load_spec
from mmfurnace.serve.config import ServeConfig, StageConfig
from mmfurnace.serve.errors import NotReady, Overloaded
from mmfurnace.serve.loading import (
    build_stage,
    encoder_shapes_from_spec,
    export_formats,
    find_tokenizer,
    resolve_config,
    stage_graphs,
)
from mmfurnace.serve.metrics import ServeMetrics
from mmfurnace.serve.preprocess import Preprocessor, PreprocessSettings
from mmfurnace.serve.request_gate import Prediction, RequestGate, answer_many, build_signature
from mmfurnace.serve.signature import ModelSignature
from mmfurnace.serve.stages import GraphBatch, example_row


def _require_ray() -> Any:
    try:
        from ray import serve
    except ImportError as err:
        raise MissingDependencyError("serving with --ray needs Ray Serve: pip install 'mmfurnace[ray]'") from err
    return serve


class RayEngine:
    """The engine surface the HTTP app uses (``infer``, ``signature``, ``metrics``, ...),
    computing through Ray Serve deployment handles instead of local batchers."""

    def __init__(self, cfg: ServeConfig, signature: ModelSignature, settings: PreprocessSettings, handles: dict[str, Any]) -> None:
        self.cfg = cfg
        self.signature = signature
        self.modalities = list(signature.modalities)
        self.metrics = ServeMetrics()
        self.gate = RequestGate(cfg, signature, self.metrics)
        self.preprocessor = Preprocessor(settings)
        self.handles = handles
        self._pool: ThreadPoolExecutor | None = None
        self.ready = False

    async def start(self) -> None:
        self._pool = ThreadPoolExecutor(self.cfg.preprocess_workers, thread_name_prefix="mmf-preprocess")
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        return {"mode": self.cfg.mode, "runner": "ray", "modalities": self.modalities, "deployments": sorted(self.handles)}

    def admit(self, rows: int = 1, deadline_s: float | None = None) -> None:
        """What the HTTP routes ask before reading a body (Overloaded / NotReady)."""
        if not self.ready:
            raise NotReady("ingress is not started")
        self.gate.admit(rows, deadline_s)

    async def infer(self, row: Any, *, deadline_s: float | None = None) -> Prediction:
        if not self.ready:
            raise NotReady("ingress is not started")
        return await self.gate.answer(row, self._pipeline, deadline_s=deadline_s)

    async def infer_many(self, rows: Any, *, deadline_s: float | None = None) -> list[Prediction]:
        self.admit(len(rows), deadline_s)
        return await answer_many(
            lambda r: self.gate.answer(r, self._pipeline, deadline_s=deadline_s, admitted=True), rows)

    async def _pipeline(self, row: dict[str, Any], timings: dict[str, float]) -> Any:
        t0 = time.perf_counter()
        arrays = row
        if self.preprocessor.needs_work(row):
            arrays = await asyncio.get_running_loop().run_in_executor(self._pool, self.preprocessor, row)
        timings["preprocess"] = time.perf_counter() - t0
        if self.cfg.mode == "whole":
            return await self._call(FULL_GRAPH, arrays, timings)
        present = sorted(arrays)
        encoded = await asyncio.gather(*(self._call(encoder_graph(m), arrays[m], timings) for m in present))
        return await self._call(FUSION_GRAPH, dict(zip(present, encoded, strict=True)), timings)

    async def _call(self, graph: str, payload: Any, timings: dict[str, float]) -> Any:
        from ray.serve.exceptions import BackPressureError

        t0 = time.perf_counter()
        try:
            result = await self.handles[graph].run.remote(payload)
        except BackPressureError:
            raise Overloaded(f"{graph}: deployment queue is full; retry later", retry_after_s=self.cfg.retry_after_s) from None
        stage = "model" if graph == FULL_GRAPH else "fusion" if graph == FUSION_GRAPH else graph
        timings[stage] = time.perf_counter() - t0  # queue wait + batch run + transport
        return result


def stage_batch(export_dir: str | Path, graph: str, stage: StageConfig, *, threads: int | None) -> GraphBatch:
    """One stage deployment's work: rows of ``graph`` -> one result per row (a batch)."""
    spec = load_spec(export_dir)
    runner = build_stage(spec, graph, stage, threads=threads)
    info = spec.info
    return GraphBatch(
        runner, graph, modalities=spec.modalities,
        sequences={m for m in spec.modalities if spec.is_sequence(m)},
        like={m: example_row(m, info.input_shapes[m], info.input_dtypes.get(m, "float32")) for m in spec.modalities},
        shapes=encoder_shapes_from_spec(spec) if graph == FUSION_GRAPH else None,
    )


def _deployments() -> tuple[Any, Any]:
    serve = _require_ray()

    @serve.deployment
    class StageDeployment:
        """One graph of the export (an encoder, fusion_head or model), batched by Ray Serve."""

        def __init__(self, export_dir: str, graph: str, stage: dict, threads: int | None,
                     max_batch_size: int, batch_wait_timeout_s: float, torch_threads: int | None) -> None:
            if torch_threads is not None:
                import torch

                torch.set_num_threads(torch_threads)  # this replica's own process
            if stage["device"].startswith("cuda"):
                stage = {**stage, "device": "cuda"}  # Ray exposes the GPU it reserved as cuda:0
            self.batch = stage_batch(export_dir, graph, StageConfig(**stage), threads=threads)
            self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"mmf-{graph}")
            self.run.set_max_batch_size(max_batch_size)
            self.run.set_batch_wait_timeout_s(batch_wait_timeout_s)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def run(self, rows: list[Any]) -> list[Any]:
            return await asyncio.get_running_loop().run_in_executor(self.pool, self.batch, rows)

    @serve.deployment
    @serve.ingress()
    class Ingress:
        """The HTTP routes of mmfurnace.serve.app over a RayEngine."""

        def __init__(self, cfg: dict, signature: ModelSignature, settings: PreprocessSettings, handles: dict[str, Any]) -> None:
            self.cfg = ServeConfig.model_validate(cfg)
            if self.cfg.torch_threads is not None:
                import torch

                torch.set_num_threads(self.cfg.torch_threads)  # this replica's own process
            self.engine = RayEngine(self.cfg, signature, settings, handles)

        def __serve_build_asgi_app__(self) -> Any:
            from mmfurnace.serve.app import create_app

            return create_app(self.engine, self.cfg)  # type: ignore[arg-type]

    return StageDeployment, Ingress


def _whole_deployment() -> Any:
    serve = _require_ray()

    @serve.deployment
    @serve.ingress()
    class WholeIngress:
        """The whole engine (batcher, worker processes, admission) and its HTTP routes."""

        def __init__(self, export_dir: str, cfg: dict) -> None:
            from mmfurnace.serve.engine import InferenceEngine

            self.cfg = ServeConfig.model_validate(cfg)
            self.engine = InferenceEngine.from_export(export_dir, self.cfg)

        def __serve_build_asgi_app__(self) -> Any:
            from mmfurnace.serve.app import create_app

            return create_app(self.engine, self.cfg)  # starts/stops the engine with its lifespan

    return WholeIngress


def cpus_per_replica(cfg: ServeConfig, replicas: int, available: float | None) -> float:
    """CPUs each of ``replicas`` replicas reserves: ``ray.num_cpus``, or the cluster's share.

    Raises ConfigError at once when the request cannot fit ``available`` CPUs (Ray would
    otherwise wait forever for resources that never come)."""
    if cfg.ray.num_cpus is None:
        if not available:
            return 0.0
        return round(available / replicas, 3)
    need = cfg.ray.num_cpus * replicas
    if available is not None and need > available + 1e-9:
        raise ConfigError(
            f"ray: {replicas} replicas x ray.num_cpus={cfg.ray.num_cpus:g} = {need:g} CPUs, but the Ray "
            f"cluster has {available:g}; set ray.num_cpus <= {available / replicas:.3g} (or leave it unset "
            "to share the cluster's CPUs out), fewer ray.num_replicas, or add nodes"
        )
    return cfg.ray.num_cpus


def build_ray_app(export_dir: str | Path, cfg: ServeConfig | None = None, *, tokenizer: Any | None = None,
                  available_cpus: float | None = None) -> Any:
    """The Ray Serve application for an export: one whole-engine deployment when every stage
    is on one device, else an ingress bound to one deployment per stage. available_cpus: the
    cluster's CPUs (``ray.available_resources()``), to size the replicas' reservations."""
    spec = load_spec(export_dir)
    cfg, _ = resolve_config(cfg or ServeConfig(), spec.modalities, export_formats(spec))
    if cfg.mode == "whole":
        ncpu = cpus_per_replica(cfg, cfg.ray.num_replicas, available_cpus)
        return _whole_deployment().options(
            name="ingress", num_replicas=cfg.ray.num_replicas, ray_actor_options={"num_cpus": ncpu},
            max_ongoing_requests=cfg.max_concurrency,
        ).bind(str(spec.directory.resolve()), cfg.model_dump(mode="json"))
    tokenizer = tokenizer if tokenizer is not None else find_tokenizer(spec.directory, spec.preprocessing)
    settings = PreprocessSettings.from_data_settings(spec.preprocessing, spec.modalities, tokenizer)
    preprocessor = Preprocessor(settings)
    preprocessor.check_against(spec.info, spec.modalities)
    signature = build_signature(cfg, spec.info, spec.modalities, preprocessor)
    graphs = stage_graphs(cfg, spec.modalities)
    for graph in graphs:
        spec.graph(graph)  # InputError naming the export when a graph is missing
    stage_deployment, ingress = _deployments()
    directory = str(spec.directory.resolve())
    ncpu = cpus_per_replica(cfg, cfg.ray.num_replicas * (len(graphs) + 1), available_cpus)
    handles = {}
    for graph, stage in graphs.items():
        actor = {"num_cpus": ncpu, "num_gpus": 1 if stage.device.startswith("cuda") else 0}
        handles[graph] = stage_deployment.options(
            name=graph, num_replicas=cfg.ray.num_replicas, ray_actor_options=actor,
            max_ongoing_requests=cfg.max_batch_size * cfg.max_inflight_batches, max_queued_requests=cfg.max_queue,
        ).bind(
            directory, graph, stage.model_dump(), cfg.intra_op_threads, cfg.max_batch_size, cfg.max_wait_ms / 1000.0,
            cfg.torch_threads,
        )
    return ingress.options(
        name="ingress", num_replicas=cfg.ray.num_replicas, ray_actor_options={"num_cpus": ncpu},
        max_ongoing_requests=cfg.max_concurrency,
    ).bind(cfg.model_dump(mode="json"), signature, settings, handles)


def direct_ingress_env(first_port: int) -> dict[str, str]:
    """The environment under which Ray Serve's ingress replicas serve HTTP themselves (direct
    ingress), from ``first_port`` upward. It must be in place before Ray starts."""
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(first_port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(first_port + 1000),
    }


def direct_urls(host: str, cfg: ServeConfig, timeout_s: float = 2.0) -> list[str]:
    """The replicas answering HTTP directly (``ray.direct_ingress``): one URL per port from
    ``ray.direct_port`` that answers GET /v2/health/live."""
    import urllib.request

    found = []
    for k in range(cfg.ray.num_replicas):
        url = f"http://{host}:{cfg.ray.direct_port + k}"
        try:
            with urllib.request.urlopen(url + "/v2/health/live", timeout=timeout_s) as r:
                if r.status == 200:
                    found.append(url)
        except OSError:
            continue
    return found


def run_ray(
    export_dir: str | Path,
    cfg: ServeConfig | None = None,
    *,
    address: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    tokenizer: Any | None = None,
    blocking: bool = True,
) -> None:
    """Deploy the export on Ray Serve and serve HTTP on ``host``:``port``.

    address: None starts a local Ray; "auto" (or "HEAD_IP:6379") joins the cluster started
    with ``ray start --head``. blocking: keep serving until interrupted, then shut down.
    """
    serve = _require_ray()
    import ray

    cfg = cfg or ServeConfig()
    if not ray.is_initialized():
        if address is None and cfg.ray.direct_ingress:
            # Read by the controller and replicas Ray starts from this process's environment.
            os.environ.update(direct_ingress_env(cfg.ray.direct_port))
        ray.init(address=address)
    available = float(ray.available_resources().get("CPU", 0.0))
    application = build_ray_app(export_dir, cfg, tokenizer=tokenizer, available_cpus=available)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application, name=cfg.model_name, route_prefix="/")
    direct = direct_urls(host, cfg)
    print(f"serving on http://{host}:{port} (Ray Serve proxy)"
          + (f"; replicas directly on {', '.join(direct)}" if direct else ""), flush=True)
    if not blocking:
        return
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
