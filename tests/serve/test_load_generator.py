"""benchmarks/serve_load.py's load generator against a live server: both HTTP clients send
real multipart requests and read the per-stage timings back; the ceiling probe answers too."""

from __future__ import annotations

import asyncio

import pytest

from mmfurnace.serve.config import ServeConfig
from mmfurnace.serve.engine import InferenceEngine
from mmfurnace.serve.server import BackgroundServer
from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def server(export_dir):
    with BackgroundServer(InferenceEngine.from_export(export_dir, ServeConfig(max_wait_ms=5))) as srv:
        yield srv


@pytest.mark.parametrize("client", ["aiohttp", "httpx"])
def test_load_generator_counts_every_request_and_reads_stage_timings(server, samples, client) -> None:
    pytest.importorskip(client)
    bench = load_benchmark("serve_load")
    result = asyncio.run(bench._load(server.url, samples, clients=3, requests=9, seconds=30, client_name=client))
    assert result["requests"] == 9
    assert result["statuses"] == {"200": 9}
    assert result["throughput_rps"] > 0
    assert result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    assert {"preprocess", "total"} <= set(result["stages_mean_ms"])


def test_ceiling_probe_does_no_model_work(server, samples) -> None:
    bench = load_benchmark("serve_load")
    batches = {stage: server.engine.metrics.batch_summary(stage)["batches"] for stage in ("model",)}
    result = asyncio.run(bench._load(server.url, samples, clients=2, requests=6, seconds=30, probe=True))
    assert result["statuses"] == {"200": 6}
    assert result["stages_mean_ms"] == {}  # health checks carry no timings
    for stage, before in batches.items():
        assert server.engine.metrics.batch_summary(stage)["batches"] == before
    asyncio.run(bench._load(server.url, samples[:1], clients=1, requests=1, seconds=30))  # a real one
    for stage, before in batches.items():
        assert server.engine.metrics.batch_summary(stage)["batches"] > before


def test_raw_closed_loop_reports_server_cpu_per_request(server, samples) -> None:
    import os

    bench = load_benchmark("serve_load")
    pids = bench.server_pids(server.engine)
    assert os.getpid() in pids
    assert len(pids) == 1 + len(server.engine.workers.workers)  # the event loop and its batch workers
    result = bench.load_raw(server.url, samples, clients=4, requests=40, seconds=30, server_pids=pids)
    assert result["statuses"] == {"200": 40}
    assert result["server_cpu_ms_per_req"] > 0
    assert result["client_cpu_ms_per_req"] > 0
    assert {"model", "preprocess", "total"} <= set(result["stages_mean_ms"])


def test_open_loop_accounts_for_every_offered_request(server, samples) -> None:
    bench = load_benchmark("serve_load")
    out = bench.overload_in_child(server.url, samples[:3], rate=20.0, seconds=1.0)
    assert out["offered"] == 20
    answered = sum(out["statuses"].values())
    assert answered + out["connection_resets"] + out["client_timeouts"] + out["not_sent"] == 20
    assert out["statuses"] == {"200": 20}  # 20 req/s is far below this server's capacity
    assert out["goodput_rps"] > 0


def test_open_loop_sends_per_tick_instead_of_spinning() -> None:
    """2,000 requests a second for 0.5 s against a server that answers at once: every request
    is answered, and the scheduler wakes about once a millisecond tick (it spun ~50 times per
    request when it slept for less than the event loop's timer resolution)."""
    bench = load_benchmark("loadgen")
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    class Answer(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(answer * data.count(b"\r\n\r\n{}"))

    async def main():
        server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        async with server:
            return await bench.open_loop("127.0.0.1", port, [request], rate=2000.0, seconds=0.5)

    out = asyncio.run(main())
    assert out["statuses"] == {"200": 1000}
    assert out["connection_resets"] == out["client_timeouts"] == out["not_sent"] == 0
    assert out["wakeups"] <= 0.5 / bench.TICK_S + 50
    assert out["send_lag_p99_ms"] is not None


def test_process_tree_finds_children() -> None:
    import subprocess
    import sys

    bench = load_benchmark("loadgen")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import os

        assert child.pid in bench.process_tree(os.getpid())
        assert bench.cpu_seconds([os.getpid()]) > 0
    finally:
        child.kill()
        child.wait()


def test_closed_loop_honours_retry_after() -> None:
    """A server that sheds every request with Retry-After: 1: two clients for 1.5 s send one
    request each at once and one more after a second — not a storm of 503s."""
    bench = load_benchmark("loadgen")
    answer = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\n{}"

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        async with server:
            return await bench.closed("127.0.0.1", port, [request], clients=2, seconds=1.5, max_requests=1000,
                                      warmup=False, timings=False)

    out = asyncio.run(main())
    assert out["statuses"] == {"503": 4}
    assert out["retry_after_waits"] == 4
    assert out["throughput_rps"] == 0  # nothing served
    assert out["answered_rps"] > 0
