"""The Ray Serve application on a local Ray (2 CPUs): one deployment per encoder + fusion,
the same HTTP contract as the in-process server. Skipped when Ray is not installed."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from mmfurnace.serve.config import ServeConfig
from mmfurnace.serve.server import free_port

from .conftest import png_bytes, wav_bytes

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


@pytest.mark.slow
def test_ray_serve_app_answers_v2_and_multipart(export_dir, info) -> None:
    from mmfurnace.serve.ray_app import build_ray_app

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = ServeConfig(mode="split", max_batch_size=8, max_wait_ms=20, ray={"num_cpus": 0.25})
        serve.run(build_ray_app(export_dir, cfg, available_cpus=2.0), name="mmfurnace", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/v2/health/ready").status_code == 200
            meta = client.get("/v2/models/mmfurnace").json()
            assert meta["engine"]["deployments"] == ["encoder_audio", "encoder_image", "encoder_text", "fusion_head"]

            def predict(i: int) -> httpx.Response:
                files = {"image": ("x.png", png_bytes(i % 10), "image/png"), "audio": ("x.wav", wav_bytes(300 + 40 * i), "audio/wav")}
                return client.post("/v1/predict", files=files, data={"text": "four five"})

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                responses = list(pool.map(predict, range(16)))
            assert [r.status_code for r in responses] == [200] * 16
            assert {r.json()["label"] for r in responses} <= set(info.class_names)
            v2 = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["one", "two"]}]}
            r = client.post("/v2/models/mmfurnace/infer", json=v2)
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["shape"] == [2, info.num_classes]
            bad = client.post("/v1/predict", files={"image": ("x.png", b"garbage", "image/png")})
            assert bad.status_code == 400
            assert "image" in bad.json()["error"]
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow
def test_ray_whole_engine_starts_on_two_cpus_without_settings(export_dir, info) -> None:
    """The default config on a 2-CPU Ray: one deployment sized to the cluster, answering."""
    from mmfurnace.serve.ray_app import build_ray_app

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_ray_app(export_dir, ServeConfig(preprocess_workers=1), available_cpus=2.0)
        serve.run(app, name="mmfurnace", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            meta = client.get("/v2/models/mmfurnace").json()
            assert meta["engine"]["mode"] == "whole"
            assert meta["engine"]["runtime"] == {"model": "onnxruntime"}
            files = {"image": ("x.png", png_bytes(2), "image/png"), "audio": ("x.wav", wav_bytes(350), "audio/wav")}
            r = client.post("/v1/predict", files=files, data={"text": "two"})
            assert r.status_code == 200, r.text
            assert r.json()["label"] in info.class_names
        status = serve.status().applications["mmfurnace"].deployments
        assert sorted(status) == ["ingress"]  # one hop: no per-stage deployments
    finally:
        serve.shutdown()
        ray.shutdown()


def test_cpu_reservations_fit_the_cluster_or_fail_at_once() -> None:
    from mmfurnace.errors import ConfigError
    from mmfurnace.serve.ray_app import cpus_per_replica

    assert cpus_per_replica(ServeConfig(), 5, 2.0) == 0.4  # unset: the cluster shared out
    assert cpus_per_replica(ServeConfig(ray={"num_cpus": 0.25}), 5, 2.0) == 0.25
    with pytest.raises(ConfigError, match=r"5 replicas x ray.num_cpus=0.5 = 2.5 CPUs, but the Ray cluster has 2; set ray.num_cpus <= 0.4"):
        cpus_per_replica(ServeConfig(ray={"num_cpus": 0.5}), 5, 2.0)
