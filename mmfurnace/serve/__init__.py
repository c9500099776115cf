"""Serving: an async multimodal inference engine, dynamic batching, KServe v2 HTTP, Ray Serve.

Layout (LitServe's split — each part testable without HTTP):
    config.py      ServeConfig: batching, queues, timeouts, workers, per-stage device/runtime
    batcher.py     DynamicBatcher: Triton-style max batch size / max wait, bounded queue
    preprocess.py  raw files/text -> model arrays in a thread or process pool
    stages.py      collate rows, run one graph (eager PyTorch or an export runtime), split rows
    engine.py      InferenceEngine: preprocess -> encoders in parallel -> fusion, timed per stage
    protocol.py    the KServe v2 contract: decode requests, encode responses, model metadata
    uploads.py     the /v1/predict multipart contract
    app.py         the FastAPI app (routes, limits, error mapping, /metrics)
    server.py      run_server (uvicorn) and BackgroundServer (uvicorn in a thread)
    ray_app.py     the same engine as a Ray Serve application (``mmfurnace serve --ray``)
The web parts (app, server, ray_app) are imported from their modules, not from here.

``mmfurnace.serve(export_dir, cfg=None, host=..., port=...)`` runs :func:`mmfurnace.serve.server.run_server`.
"""

from mmfurnace.serve.batcher import DynamicBatcher
from mmfurnace.serve.config import ServeConfig, StageConfig, load_serve_config
from mmfurnace.serve.engine import InferenceEngine, Prediction
from mmfurnace.serve.errors import NotReady, Overloaded, RequestTimeout

__all__ = [
    "DynamicBatcher",
    "InferenceEngine",
    "NotReady",
    "Overloaded",
    "Prediction",
    "RequestTimeout",
    "ServeConfig",
    "StageConfig",
    "load_serve_config",
]

from mmfurnace.entrypoints import make_callable  # noqa: E402

make_callable(__name__, "mmfurnace.serve.server:run_server")
