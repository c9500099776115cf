"""The Ray Serve application on a local Ray (2 CPUs): one deployment per encoder + fusion,
the same HTTP contract as the in-process server. Skipped when Ray is not installed."""

from __future__ import annotations

import asyncio
import concurrent.futures

import httpx
import numpy as np
import pytest

from mmfurnace.serve.config import ServeConfig, StageConfig
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


@pytest.mark.slow
def test_ray_replica_also_serves_http_on_its_own_port(export_dir, info, monkeypatch) -> None:
    """``mmfurnace serve --ray`` on a local Ray: the replica answers on ray.direct_port (direct
    ingress, no proxy hop) as it does through the proxy — the same probabilities."""
    from mmfurnace.serve.ray_app import direct_ingress_env, direct_urls, run_ray

    cfg = ServeConfig(preprocess_workers=1, ray={"direct_port": free_port()})
    for key, value in direct_ingress_env(cfg.ray.direct_port).items():
        monkeypatch.setenv(key, value)  # run_ray sets them too; this restores them afterwards
    port = free_port()
    try:
        run_ray(export_dir, cfg, port=port, blocking=False)
        direct = f"http://127.0.0.1:{cfg.ray.direct_port}"
        assert direct_urls("127.0.0.1", cfg) == [direct]
        files = {"image": ("x.png", png_bytes(4), "image/png"), "audio": ("x.wav", wav_bytes(320), "audio/wav")}
        answers = []
        with httpx.Client(timeout=60) as client:
            for url in (direct, f"http://127.0.0.1:{port}"):
                r = client.post(url + "/v1/predict", files=files, data={"text": "four"})
                assert r.status_code == 200, r.text
                answers.append(r.json())
        assert answers[0]["label"] in info.class_names
        assert answers[0]["probabilities"] == pytest.approx(answers[1]["probabilities"], abs=1e-6)
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


class LocalHandle:
    """A deployment handle that runs the stage deployment's batch in this process: what Ray's
    ``handle.run.remote(row)`` returns for one row."""

    def __init__(self, batch) -> None:
        self.batch = batch
        self.run = self

    async def remote(self, payload):
        return self.batch([payload])[0]


def test_ray_ingress_routes_answer_like_the_local_engine(export_dir, tokenizer, samples) -> None:
    """The split-mode ingress (RayEngine) behind the same routes as the in-process server:
    multipart and v2 answers equal the local engine's, bad input is a 400, overload a 503."""
    from mmfurnace.export.spec import load_spec
    from mmfurnace.serve.app import create_app
    from mmfurnace.serve.engine import InferenceEngine, build_signature
    from mmfurnace.serve.loading import stage_graphs
    from mmfurnace.serve.preprocess import Preprocessor, PreprocessSettings
    from mmfurnace.serve.ray_app import RayEngine, stage_batch

    spec = load_spec(export_dir)
    cfg = ServeConfig(mode="split", max_concurrency=4, preprocess_mode="thread",
                      stages={m: StageConfig(runtime="onnxruntime") for m in spec.modalities},
                      fusion=StageConfig(runtime="onnxruntime"))
    settings = PreprocessSettings.from_data_settings(spec.preprocessing, spec.modalities, tokenizer)
    signature = build_signature(cfg, spec.info, spec.modalities, Preprocessor(settings))
    handles = {g: LocalHandle(stage_batch(export_dir, g, s, threads=1)) for g, s in stage_graphs(cfg, spec.modalities).items()}
    ray_engine = RayEngine(cfg, signature, settings, handles)
    local = InferenceEngine.from_export(export_dir, cfg, tokenizer=tokenizer)

    async def scenario():
        await ray_engine.start()
        await local.start()
        try:
            transport = httpx.ASGITransport(create_app(ray_engine, cfg, manage_engine=False))
            async with httpx.AsyncClient(transport=transport, base_url="http://ray") as client:
                answers = []
                for row in samples[:4]:
                    files = {m: (f"x.{m}", row[m], "image/png" if m == "image" else "audio/wav")
                             for m in ("image", "audio") if m in row}
                    r = await client.post("/v1/predict", files=files, data={"text": row["text"]})
                    assert r.status_code == 200, r.text
                    want = await local.infer(row)
                    got = np.array([r.json()["probabilities"][n] for n in signature.class_names])
                    np.testing.assert_allclose(got, want.probabilities, atol=1e-5)
                    answers.append(r.json()["label"])
                v2 = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["one", "two"]}]}
                r = await client.post("/v2/models/mmfurnace/infer", json=v2)
                assert r.status_code == 200, r.text
                assert r.json()["outputs"][0]["shape"] == [2, len(signature.class_names)]
                bad = await client.post("/v1/predict", files={"image": ("x.png", b"garbage", "image/png")})
                assert bad.status_code == 400
                assert "image" in bad.json()["error"]
                too_many = {"inputs": [{"name": "text", "shape": [5], "datatype": "BYTES", "data": ["one"] * 5}]}
                r = await client.post("/v2/models/mmfurnace/infer", json=too_many)
                assert r.status_code == 503
                assert "max_concurrency" in r.json()["error"]
                assert r.headers["retry-after"] == "1"
            return answers
        finally:
            await local.stop()
            await ray_engine.stop()

    assert len(asyncio.run(scenario())) == 4
