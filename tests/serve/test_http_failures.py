"""Deadlines and bugs over HTTP: a slow stage gives 504 with a message, a crashing stage a
500 with a message — and in both cases the server keeps answering."""

from __future__ import annotations

import time

import httpx

from mmfurnace.serve.config import ServeConfig
from mmfurnace.serve.engine import InferenceEngine
from mmfurnace.serve.server import BackgroundServer


class Switch:
    """Wraps a stage; ``mode`` makes compute slow (1 s), crash, or behave."""

    def __init__(self, inner) -> None:
        self.inner, self.mode = inner, "ok"

    def describe(self):
        return self.inner.describe()

    def prepare(self, feed):
        return self.inner.prepare(feed)

    def compute(self, prepared):
        if self.mode == "slow":
            time.sleep(1.0)
        if self.mode == "broken":
            raise RuntimeError("kaput")
        return self.inner.compute(prepared)


def test_deadline_is_504_and_a_crash_is_500_and_serving_goes_on(export_dir) -> None:
    engine = InferenceEngine.from_export(export_dir, ServeConfig(mode="split", request_timeout_s=0.3))
    switch = engine.stages["fusion_head"] = Switch(engine.stages["fusion_head"])
    with BackgroundServer(engine) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        switch.mode = "slow"
        r = client.post("/v1/predict", files={"text": (None, b"one")})
        assert r.status_code == 504
        assert "request_timeout_s=0.3" in r.json()["error"]
        time.sleep(1.0)  # let the slow batch finish

        switch.mode = "broken"
        r = client.post("/v1/predict", files={"text": (None, b"one")})
        assert r.status_code == 500
        assert "internal error (RuntimeError)" in r.json()["error"]

        switch.mode = "ok"
        assert client.post("/v1/predict", files={"text": (None, b"one")}).status_code == 200
        metrics = client.get("/metrics").text
    assert 'mmfurnace_inference_total{outcome="timeout"} 1.0' in metrics
    assert 'mmfurnace_inference_total{outcome="error"} 1.0' in metrics
    assert 'mmfurnace_requests_total{route="/v1/predict",status="504"} 1.0' in metrics
