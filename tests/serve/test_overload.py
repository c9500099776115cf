"""Offered load far beyond capacity for a bounded time: every answer is 200, 503 (with
Retry-After) or 504 — never a 500 — and the server still serves afterwards."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest

from mmfurnace.serve.config import ServeConfig
from mmfurnace.serve.engine import InferenceEngine
from mmfurnace.serve.server import BackgroundServer

CLIENTS = 64
SECONDS = 4.0
MAX_REQUESTS = 3000


async def hammer(url: str, samples: list[dict]) -> tuple[Counter, set[str]]:
    statuses: Counter = Counter()
    retry_after: set[str] = set()
    deadline = time.monotonic() + SECONDS
    sent = 0
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        async def worker(k: int) -> None:
            nonlocal sent
            i = k
            while time.monotonic() < deadline and sent < MAX_REQUESTS:
                sent += 1
                s = samples[i % len(samples)]
                i += CLIENTS
                files = {m: (f"x.{'png' if m == 'image' else 'wav'}", v, "image/png" if m == "image" else "audio/wav")
                         for m, v in s.items() if m != "text"}
                if "text" in s:
                    files["text"] = (None, s["text"].encode())
                r = await client.post("/v1/predict", files=files)
                statuses[r.status_code] += 1
                if r.status_code == 503:
                    retry_after.add(r.headers.get("retry-after", ""))

        await asyncio.gather(*(worker(k) for k in range(CLIENTS)))
    return statuses, retry_after


@pytest.mark.slow
def test_overload_answers_200_503_504_only_and_recovers(export_dir, samples) -> None:
    cfg = ServeConfig(max_batch_size=4, max_queue=4, max_concurrency=12, max_wait_ms=2,
                      request_timeout_s=1.0, retry_after_s=2)
    with BackgroundServer(InferenceEngine.from_export(export_dir, cfg)) as server:
        statuses, retry_after = asyncio.run(hammer(server.url, samples))
        assert set(statuses) <= {200, 503, 504}, statuses
        assert statuses[200] > 0, statuses
        assert statuses[503] > 0, statuses
        assert retry_after == {"2"}
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/v2/health/ready").status_code == 200
            assert client.post("/v1/predict", files={"text": (None, b"nine")}).status_code == 200
            metrics = client.get("/metrics").text
        assert 'status="500"' not in metrics
        assert server.engine.metrics.value("mmfurnace_inference_total", outcome="error") == 0
