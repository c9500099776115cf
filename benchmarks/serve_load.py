"""Serving under load: one request at a time vs dynamic batching vs ONNX Runtime vs per-modality
parallel encoders — real HTTP, real samples, one run.

    python benchmarks/serve_load.py [--clients 64] [--requests 3000] [--seconds 20]
        [--export DIR] [--data data/digits-av/raw] [--variants a,b,c,d] [--json out.json]
    python benchmarks/serve_load.py --preprocess-only     # threads vs processes, no HTTP

Variants (all serve the same export; HTTP POST /v1/predict, multipart PNG + WAV + text):
    a  eager PyTorch, one request at a time      mode whole, max_batch_size 1
    b  dynamic batching, eager PyTorch            mode whole
    c  the default config (mode auto -> whole, backend auto -> ONNX Runtime, each worker
       process decodes, computes features and runs the model per batch)
    d  per-modality parallel encoders on ONNX Runtime   mode split: encoders in parallel + fusion
Peers (``--peers litserve,fastapi``; benchmarks/serve_peers.py, same export, preprocessing,
samples and load generator): LitServe with dynamic batching, plain FastAPI + ONNX Runtime one
request at a time. ``--one-client`` adds each server's latency at 1 client.

``--ray`` adds the default config deployed on a local Ray Serve (``mmfurnace serve --ray``).

Overload (``--overload 10 --overload-seconds 60``, or ``--overload 2,5,10`` for each in turn): for
each variant, its capacity is measured first (closed loop, ``--clients``), then requests arrive
open-loop at 10x that rate for 60 s;
reported: goodput (200s/s) against capacity, p99 of the served requests against p99 at
capacity, status counts, connection resets, client timeouts, and the server's RSS (its
process and its worker processes) before and after.
Each server runs in this process (uvicorn in a thread, 127.0.0.1, a free port); the load
generator runs in a child process in its own session (``--clients`` concurrent connections of
benchmarks/loadgen.py), so client and server share neither a GIL nor, under autogroup
scheduling, a share of the CPU. Every variant gets a warm-up, then at most
``--requests`` requests or ``--seconds`` seconds, whichever ends first. Reported: throughput,
client-side p50/p95/p99 latency, status counts, mean batch size, the CPU time the server's
processes spent per answered request (steadier than req/s on a machine shared with other
work: req/s follows the share of the CPU a server gets), and the server's per-stage
breakdown (mean ms per request, from each response's ``timings_ms``). ``--rounds N`` runs
every variant and peer N times, interleaved, and reports the median round (every round's
req/s beside it).

The same variants then run twice more without HTTP (unless ``--no-engine-level``), to show
where the time goes: "engine only" (``engine.infer`` on the same raw samples: preprocessing
included) and "compute path only" (on the samples' preprocessed arrays).

Samples are the built-in dataset's raw files (``data/digits-av/raw/manifest.jsonl``) when
present, else a small synthetic set written to a temporary folder (28x28 PNG digits, 0.8 s
16 kHz WAV tones in noise, number words). Without ``--export`` an untrained default model
(serving cost does not depend on the weights) is exported to a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VARIANTS: dict[str, dict[str, Any]] = {
    # the naive server: one row at a time, every request queued (no latency budget to shed by)
    "a": {"label": "eager, one at a time", "cfg": {"mode": "whole", "max_batch_size": 1, "max_inflight_batches": 1,
                                                   "latency_budget_ms": None}},
    "b": {"label": "eager, dynamic batching", "cfg": {"mode": "whole"}},
    "c": {"label": "default: whole, ORT, batch workers", "cfg": {}},
    "d": {"label": "split: parallel encoders, ORT", "cfg": {
        "mode": "split",
        "stages": {m: {"backend": "onnxruntime"} for m in ("audio", "image", "text")},
        "fusion": {"backend": "onnxruntime"},
    }},
}


# ----------------------------------------------------------------------------- samples


def load_samples(data: Path | None, limit: int = 200) -> tuple[list[dict[str, Any]], str]:
    """Raw samples {"image": png bytes, "audio": wav bytes, "text": str} and where from."""
    manifest = data / "manifest.jsonl" if data is not None else None
    if manifest is not None and manifest.is_file():
        rows = []
        for line in manifest.read_text(encoding="utf-8").splitlines()[:limit]:
            rec = json.loads(line)
            row: dict[str, Any] = {}
            for m in ("image", "audio"):
                if rec.get(m):
                    row[m] = (manifest.parent / rec[m]).read_bytes()
            if rec.get("text"):
                row["text"] = rec["text"]
            rows.append(row)
        return rows, str(manifest)
    return synthesize(64), "synthetic (no data/digits-av/raw/manifest.jsonl)"


def synthesize(n: int, seed: int = 0) -> list[dict[str, Any]]:
    import io

    import soundfile as sf
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    rows = []
    rate = 16000
    t = np.arange(int(0.8 * rate)) / rate
    for i in range(n):
        label = i % 10
        image = Image.fromarray(rng.integers(0, 60, size=(28, 28)).astype(np.uint8), mode="L")
        ImageDraw.Draw(image).text((9, 7), str(label), fill=255)
        png = io.BytesIO()
        image.save(png, format="PNG")
        wave = 0.3 * np.sin(2 * np.pi * (200 + 60 * label) * t) + 0.05 * rng.standard_normal(t.size)
        wav = io.BytesIO()
        sf.write(wav, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
        rows.append({"image": png.getvalue(), "audio": wav.getvalue(), "text": f"the number {WORDS[label]}"})
    return rows


def make_export(samples: list[dict[str, Any]], folder: Path) -> Path:
    """Export an untrained default model for digits-av shaped inputs, with a tokenizer."""
    import torch

    from mmfurnace.data.config import DataConfig
    from mmfurnace.data.info import DatasetInfo
    from mmfurnace.data.text import build_wordpiece_tokenizer
    from mmfurnace.export import export_model
    from mmfurnace.models import ModelConfig, build_model

    texts = [s["text"] for s in samples if s.get("text")] + [" ".join(WORDS)] * 4
    tokenizer = build_wordpiece_tokenizer(texts, vocab_size=200)
    data = DataConfig()
    info = DatasetInfo(
        modalities=("audio", "image", "text"), num_classes=10, multilabel=False, class_names=tuple(WORDS),
        input_shapes={"image": (1, *data.image.size), "audio": (None, data.audio.n_mfcc), "text": (None,)},
        input_dtypes={"image": "float32", "audio": "float32", "text": "int64"},
        vocab_size=tokenizer.get_vocab_size(),
    )
    torch.manual_seed(0)
    cfg = ModelConfig()
    model = build_model(cfg, info).eval()
    prep = data.model_dump(mode="json")
    out = export_model(model, info, folder / "export", formats=("onnx",), config=cfg, verify=False,
                       preprocessing={k: prep[k] for k in ("modalities", "image", "audio", "text")})
    tokenizer.save(str(out / "tokenizer.json"))
    return out


# ----------------------------------------------------------------------------- load generator


def _multipart(sample: dict[str, Any]) -> dict[str, Any]:
    files: dict[str, Any] = {}
    if "image" in sample:
        files["image"] = ("x.png", sample["image"], "image/png")
    if "audio" in sample:
        files["audio"] = ("x.wav", sample["audio"], "audio/wav")
    if "text" in sample:
        files["text"] = (None, sample["text"].encode("utf-8"))
    return files


def _form(sample: dict[str, Any]) -> Any:
    import aiohttp

    form = aiohttp.FormData()
    for name, part in _multipart(sample).items():
        if part[0] is None:  # a plain form field
            form.add_field(name, part[1].decode("utf-8"))
        else:
            form.add_field(name, part[1], filename=part[0], content_type=part[2])
    return form


class _Aiohttp:
    """The load generator's HTTP client (default aiohttp: less client CPU per request than
    httpx, which matters when the client shares the machine with the server)."""

    def __init__(self, url: str, clients: int) -> None:
        import aiohttp

        self.url = url
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=clients), timeout=aiohttp.ClientTimeout(total=60))

    async def request(self, sample: dict[str, Any] | None) -> tuple[int, dict[str, Any] | None]:
        if sample is None:
            async with self.session.get(f"{self.url}/v2/health/ready") as r:
                await r.read()
                return r.status, None
        async with self.session.post(f"{self.url}/v1/predict", data=_form(sample)) as r:
            return r.status, (await r.json() if r.status == 200 else None)

    async def close(self) -> None:
        await self.session.close()


class _Httpx(_Aiohttp):
    def __init__(self, url: str, clients: int) -> None:
        import httpx

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        self.session = httpx.AsyncClient(base_url=url, timeout=60, limits=limits)

    async def request(self, sample: dict[str, Any] | None) -> tuple[int, dict[str, Any] | None]:
        if sample is None:
            r = await self.session.get("/v2/health/ready")
            return r.status_code, None
        r = await self.session.post("/v1/predict", files=_multipart(sample))
        return r.status_code, (r.json() if r.status_code == 200 else None)

    async def close(self) -> None:
        await self.session.aclose()


CLIENTS = {"aiohttp": _Aiohttp, "httpx": _Httpx}


def _loadgen() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import loadgen

    return loadgen


def raw_requests(samples: list[dict[str, Any]], path: str = "/v1/predict") -> list[bytes]:
    return [_loadgen().multipart_request(path, "127.0.0.1", s) for s in samples]


def load_raw(url: str, samples: list[dict[str, Any]], clients: int, requests: int, seconds: float,
             path: str = "/v1/predict", timings: bool = True, server_pids: list[int] | None = None) -> dict[str, Any]:
    """The raw load generator (benchmarks/loadgen.py), closed loop, in this (child) process;
    ``server_pids``: the server's processes, whose CPU per request is reported."""
    return _loadgen().run_closed(url, raw_requests(samples, path), clients=clients, seconds=seconds,
                                 max_requests=requests, timings=timings, server_pids=server_pids)


def overload_in_child(url: str, samples: list[dict[str, Any]], rate: float, seconds: float) -> dict[str, Any]:
    return _loadgen().run_open(url, raw_requests(samples), rate=rate, seconds=seconds)


async def _load(url: str, samples: list[dict[str, Any]], clients: int, requests: int, seconds: float,
                probe: bool = False, client_name: str = "aiohttp") -> dict[str, Any]:
    """``probe``: GET /v2/health/ready instead of predicting — what the HTTP stack and this load
    generator can do at all on this machine, with no request body and no model work."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stage_ms: dict[str, list[float]] = {}
    sent = 0
    client = CLIENTS[client_name](url, clients)
    try:

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            status, body = await client.request(None if probe else samples[i % len(samples)])
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            if body is not None:
                for k, v in body["timings_ms"].items():
                    stage_ms.setdefault(k, []).append(v)

        # Warm-up: one full round of clients, not measured.
        await asyncio.gather(*(one(i) for i in range(clients)))
        latencies.clear(), statuses.clear(), stage_ms.clear()
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()

        async def worker(k: int) -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                i = sent
                sent += 1
                await one(i + k)

        await asyncio.gather(*(worker(k) for k in range(clients)))
        wall = time.perf_counter() - started
    finally:
        await client.close()
    ms = np.array(latencies) * 1000.0
    return {
        "requests": len(latencies),
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "stages_mean_ms": {k: round(statistics.fmean(v), 3) for k, v in sorted(stage_ms.items())},
        "stages_p50_ms": {k: round(statistics.median(v), 3) for k, v in sorted(stage_ms.items())},
    }


def load_in_child(url: str, samples: list[dict[str, Any]], clients: int, requests: int, seconds: float,
                  probe: bool = False, client_name: str = "aiohttp", server_pids: list[int] | None = None) -> dict[str, Any]:
    if client_name == "raw" and not probe:
        return load_raw(url, samples, clients, requests, seconds, server_pids=server_pids)
    return asyncio.run(_load(url, samples, clients, requests, seconds, probe,
                             "aiohttp" if client_name == "raw" else client_name))


# ----------------------------------------------------------------------------- variants


def variant_config(name: str, args: argparse.Namespace) -> Any:
    from mmfurnace.serve.config import ServeConfig

    return ServeConfig(**{
        "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms, "max_queue": 4096,
        "max_concurrency": 4096, "preprocess_workers": args.preprocess_workers,
        "preprocess_mode": args.preprocess_mode, "intra_op_threads": args.ort_threads,
        **VARIANTS[name]["cfg"],
    })


def _finish(result: dict[str, Any], name: str, engine: Any) -> dict[str, Any]:
    graph = "model" if engine.cfg.mode == "whole" else "fusion_head"
    result.update(variant=name, label=VARIANTS[name]["label"], config=VARIANTS[name]["cfg"],
                  mean_batch_size=round(engine.metrics.batch_summary(graph)["mean"], 2),
                  engine=engine.describe()["stages"])
    return result


def median_round(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median req/s (its own latencies and statuses), with every round's
    req/s and server CPU per request beside it; an overload result from any round is kept."""
    ordered = sorted(results, key=lambda r: r["throughput_rps"])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["rounds_rps"] = [r["throughput_rps"] for r in results]
    out["rounds_server_cpu_ms_per_req"] = [r.get("server_cpu_ms_per_req") for r in results]
    if "one_client" in out:
        out["rounds_one_client_p50_ms"] = [r["one_client"]["p50_ms"] for r in results if "one_client" in r]
    for r in results:
        if "overload" in r:
            out["overload"] = r["overload"]
    return out


def run_variant_http(name: str, export: Path, samples: list[dict[str, Any]], args: argparse.Namespace, pool: Any,
                     overload: bool = True) -> dict[str, Any]:
    """One variant over HTTP: server in a thread here, load generator in the child process."""
    from mmfurnace.serve.engine import InferenceEngine
    from mmfurnace.serve.server import BackgroundServer

    engine = InferenceEngine.from_export(export, variant_config(name, args))
    with BackgroundServer(engine) as server:
        pids = server_pids(engine)
        result = pool.submit(load_in_child, server.url, samples, args.clients, args.requests, args.seconds,
                             False, args.client, pids).result()
        if args.one_client:
            result["one_client"] = pool.submit(load_in_child, server.url, samples, 1, args.requests,
                                               min(args.seconds, 5.0), False, args.client).result()
        if args.overload and overload:
            result["overload"] = run_overload(server, engine, samples, args, pool, result)
    return _finish(result, name, engine)


def autogroup_nice() -> int | None:
    """This session's autogroup nice value (None where the kernel has no autogroups)."""
    try:
        return int(Path("/proc/self/autogroup").read_text().split("nice")[1])
    except (OSError, IndexError, ValueError):
        return None


def own_session(nice: int | None) -> None:
    """The load generator's process: a session of its own, at the benchmark's autogroup nice.
    A new session starts at nice 0; had the benchmark's been raised (to measure as on a quiet
    machine), the client would get a sliver of the CPU and its own lag would count as the
    servers' latency (measured: send lag p50 89 ms at 5x overload)."""
    os.setsid()
    if nice:
        with contextlib.suppress(OSError):  # raising it needs privileges: run at the default then
            Path("/proc/self/autogroup").write_text(str(nice))


def server_pids(engine: Any) -> list[int]:
    """This process (uvicorn, the event loop) and the engine's worker / pool processes."""
    pool = getattr(engine.pool, "_pool", None)
    pool_pids = list(getattr(pool, "_processes", None) or {})
    workers = [w.process.pid for w in engine.workers.workers] if engine.workers else []
    return [os.getpid(), *workers, *pool_pids]


def rss_mb(pids: list[int]) -> float:
    """Resident memory (MiB) of these processes, from /proc."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def run_overload(server: Any, engine: Any, samples: list[dict[str, Any]], args: argparse.Namespace, pool: Any,
                 capacity: dict[str, Any]) -> list[dict[str, Any]]:
    """Open-loop arrivals at each of ``args.overload`` x the capacity just measured, in turn
    (a few seconds apart, so what one left queued is answered before the next starts)."""
    pids = server_pids(engine)
    out = []
    for k, multiple in enumerate(args.overload):
        if k:
            time.sleep(5.0)
        rate = multiple * capacity["throughput_rps"]
        before = rss_mb(pids)
        o = pool.submit(overload_in_child, server.url, samples, rate, args.overload_seconds).result()
        o.update(multiple=multiple, rss_mb_before=before, rss_mb_after=rss_mb(pids),
                 capacity_rps=capacity["throughput_rps"], capacity_p99_ms=capacity["p99_ms"])
        served = o["statuses"].get("200", 0)
        o["checks"] = {
            "goodput_over_capacity": round(served / o["wall_s"] / capacity["throughput_rps"], 3),
            "served_p99_over_capacity_p99": round((o["ok_p99_ms"] or 0) / capacity["p99_ms"], 3),
            "other_5xx": {s: n for s, n in o["statuses"].items() if s.startswith("5") and s != "503"},
            "connection_resets": o["connection_resets"], "client_timeouts": o["client_timeouts"],
        }
        out.append(o)
    return out


def run_peer(peer: str, export: Path, samples: list[dict[str, Any]], args: argparse.Namespace, pool: Any) -> dict[str, Any]:
    """A peer server (benchmarks/serve_peers.py) in a subprocess, loaded like the variants."""
    import subprocess
    import urllib.request

    from mmfurnace.serve.server import free_port

    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "serve_peers.py"), peer, str(export),
           "--port", str(port), "--workers", str(args.preprocess_workers), "--max-batch-size",
           str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]
    # Its own process group (same session, so the same CPU share as the variants served from
    # this process): LitServe's worker processes outlive a terminated parent (found still
    # busy-polling after a run), so the whole group is ended.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"peer {peer} did not start ({' '.join(cmd)})")
            time.sleep(0.5)
        pids = _loadgen().process_tree(proc.pid)
        result = pool.submit(load_raw, url, samples, args.clients, args.requests, args.seconds, "/predict", False,
                             pids).result()
        if args.one_client:
            result["one_client"] = pool.submit(load_raw, url, samples, 1, args.requests, min(args.seconds, 5.0),
                                               "/predict", False).result()
    finally:
        stop_group(proc)
    result.update(variant=peer, label={"litserve": "LitServe, batching", "fastapi": "FastAPI+ORT, one at a time"}[peer],
                  mean_batch_size=float("nan"), config={"peer": peer}, engine={})
    return result


def stop_group(proc: Any) -> None:
    """End a peer server and every process it started (its own process group)."""
    import signal
    import subprocess

    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)  # let the children see the signal too


def run_ray_server(export: Path, samples: list[dict[str, Any]], args: argparse.Namespace,
                   pool: Any) -> list[dict[str, Any]]:
    """The default config deployed on a local Ray Serve (``mmfurnace serve --ray``: with every
    stage on the CPU, one whole-engine deployment sized to the machine's CPUs), loaded like the
    variants twice: on the replica's own port (direct ingress, the default) and through Ray's
    proxy. Server CPU counts every process this one started (GCS, raylet, proxy, replica, its
    batch workers) except the load generator."""
    import ray
    from ray import serve

    from mmfurnace.serve.config import ServeConfig
    from mmfurnace.serve.ray_app import build_ray_app, direct_ingress_env, direct_urls
    from mmfurnace.serve.server import free_port

    cfg = ServeConfig(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                      preprocess_workers=args.preprocess_workers, intra_op_threads=args.ort_threads,
                      ray={"direct_port": free_port()})
    port = free_port()
    saved = dict(os.environ)
    os.environ.update(direct_ingress_env(cfg.ray.direct_port))  # as `mmfurnace serve --ray` does
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    out = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        available = float(ray.available_resources().get("CPU", 0.0))
        serve.run(build_ray_app(export, cfg, available_cpus=available), name=cfg.model_name, route_prefix="/")
        client = set(_loadgen().process_tree(next(iter(pool._processes))))  # the load generator
        pids = [p for p in _loadgen().process_tree(os.getpid()) if p not in client]
        deployments = sorted(serve.status().applications[cfg.model_name].deployments)
        urls = {"ray": (direct_urls("127.0.0.1", cfg) or [None])[0], "ray-proxy": f"http://127.0.0.1:{port}"}
        for name, url in urls.items():
            if url is None:
                print("  Ray Serve's direct ingress did not start: no replica answers on its own port", flush=True)
                continue
            result = pool.submit(load_raw, url, samples, args.clients, args.requests, args.seconds, "/v1/predict",
                                 True, pids).result()
            if args.one_client:
                result["one_client"] = pool.submit(load_raw, url, samples, 1, args.requests,
                                                   min(args.seconds, 5.0)).result()
            label = ("default config on Ray Serve, replica's own port" if name == "ray"
                     else "default config on Ray Serve, through its proxy")
            result.update(variant=name, label=label, mean_batch_size=float("nan"),
                          config={"ray": True, "deployments": deployments, "cpus": available, "url": url}, engine={})
            out.append(result)
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
    return out


def measure_http_ceiling(export: Path, samples: list[dict[str, Any]], args: argparse.Namespace, pool: Any) -> dict[str, Any]:
    """Requests/s of GET /v2/health/ready with the same clients and server: no variant can
    serve more than this over HTTP here, whatever its model path costs."""
    from mmfurnace.serve.engine import InferenceEngine
    from mmfurnace.serve.server import BackgroundServer

    engine = InferenceEngine.from_export(export, variant_config("c", args))
    with BackgroundServer(engine) as server:
        return pool.submit(load_in_child, server.url, samples, args.clients, args.requests, args.seconds,
                           True, args.client).result()


def run_variant_engine(name: str, export: Path, samples: list[dict[str, Any]], args: argparse.Namespace,
                       preprocessed: bool = False) -> dict[str, Any]:
    """One variant without HTTP: ``--clients`` coroutines call ``engine.infer`` on the raw
    samples, or (``preprocessed``) on their model-ready arrays — the compute path alone."""
    from mmfurnace.serve.engine import InferenceEngine

    engine = InferenceEngine.from_export(export, variant_config(name, args))
    if preprocessed:
        samples = [engine.pool.preprocessor(s) for s in samples]

    async def main() -> dict[str, Any]:
        latencies: list[float] = []
        stage_s: dict[str, list[float]] = {}
        sent = 0
        async with engine:
            async def one(i: int, keep: bool) -> None:
                t0 = time.perf_counter()
                p = await engine.infer(samples[i % len(samples)])
                if keep:
                    latencies.append(time.perf_counter() - t0)
                    for k, v in p.timings.items():
                        stage_s.setdefault(k, []).append(v * 1000.0)

            await asyncio.gather(*(one(i, False) for i in range(args.clients)))
            deadline = time.perf_counter() + args.seconds
            started = time.perf_counter()

            async def worker(k: int) -> None:
                nonlocal sent
                while sent < args.requests and time.perf_counter() < deadline:
                    sent += 1
                    await one(sent + k, True)

            await asyncio.gather(*(worker(k) for k in range(args.clients)))
            wall = time.perf_counter() - started
        ms = np.array(latencies) * 1000.0
        return {
            "requests": len(latencies), "wall_s": round(wall, 3),
            "throughput_rps": round(len(latencies) / wall, 2),
            **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)},
            "statuses": {"ok": len(latencies)},
            "stages_mean_ms": {k: round(statistics.fmean(v), 3) for k, v in sorted(stage_s.items())},
            "stages_p50_ms": {k: round(statistics.median(v), 3) for k, v in sorted(stage_s.items())},
        }

    return _finish(asyncio.run(main()), name, engine)


def measure_preprocessing(samples: list[dict[str, Any]], export: Path, workers: int, rows: int = 300, rounds: int = 3) -> dict[str, Any]:
    """Rows/s through the preprocess pool, threads vs processes, 64 rows in flight. Both
    pools run side by side and take turns (``rounds`` each), so a change in machine load
    hits both; the median round is reported."""
    from mmfurnace.export.spec import load_spec
    from mmfurnace.serve.loading import find_tokenizer
    from mmfurnace.serve.preprocess import PreprocessPool, PreprocessSettings

    spec = load_spec(export)
    settings = PreprocessSettings.from_data_settings(spec.preprocessing, spec.modalities, find_tokenizer(spec.directory, spec.preprocessing))
    pools, startup = {}, {}
    for mode in ("thread", "process"):
        t0 = time.perf_counter()
        pools[mode] = PreprocessPool(settings, workers=workers, mode=mode)
        pools[mode].start()
        startup[mode] = round(time.perf_counter() - t0, 2)

    async def drive(pool: PreprocessPool, n: int) -> float:
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with sem:
                await pool.run(samples[i % len(samples)])

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - start)

    speeds: dict[str, list[float]] = {"thread": [], "process": []}
    try:
        import torch

        saved = torch.get_num_threads()
        torch.set_num_threads(1)  # as the engine runs (ServeConfig.torch_threads)
        for mode in pools:
            asyncio.run(drive(pools[mode], 64))  # warm-up
        for _ in range(rounds):
            for mode in pools:
                speeds[mode].append(asyncio.run(drive(pools[mode], rows)))
        torch.set_num_threads(saved)
    finally:
        for pool in pools.values():
            pool.close()
    out: dict[str, Any] = {"workers": workers, "rows_per_round": rows, "rounds": rounds}
    for mode in pools:
        out[mode] = {"rows_per_s": round(statistics.median(speeds[mode]), 1),
                     "rounds_rows_per_s": [round(x, 1) for x in speeds[mode]], "startup_s": startup[mode]}
    out["faster"] = max(pools, key=lambda m: out[m]["rows_per_s"])
    return out


# ----------------------------------------------------------------------------- report


def cpu_flags() -> list[str]:
    """The ISA flags that matter for these numbers (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"})


def machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    return {
        "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "onnxruntime": onnxruntime.__version__,
        "cuda": torch.cuda.is_available(), "cpu_flags": cpu_flags(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],  # other work on the box
    }


def print_extras(results: list[dict[str, Any]]) -> None:
    """1-client latency and overload results, when measured."""
    for r in results:
        if "one_client" in r:
            o = r["one_client"]
            print(f"  1 client, {r['variant']}) {r['label']}: p50 {o['p50_ms']} ms, p99 {o['p99_ms']} ms, "
                  f"{o['throughput_rps']} req/s")
    for r in results:
        for o in r.get("overload") or []:
            c = o["checks"]
            print(f"\noverload, {r['variant']}) {r['label']}: offered {o['offered_rps']} req/s "
                  f"({o['offered']} requests) = {o['offered_rps'] / o['capacity_rps']:.1f}x capacity {o['capacity_rps']} req/s")
            print(f"  goodput {o['goodput_rps']} req/s = {c['goodput_over_capacity']:.2f}x capacity (target >= 0.8); "
                  f"served p99 {o['ok_p99_ms']} ms = {c['served_p99_over_capacity_p99']:.2f}x p99 at capacity "
                  f"{o['capacity_p99_ms']} ms (target <= 2)")
            print(f"  statuses {o['statuses']}, other 5xx {c['other_5xx']}, resets {o['connection_resets']}, "
                  f"client timeouts {o['client_timeouts']}, not sent {o['not_sent']}, "
                  f"RSS {o['rss_mb_before']} -> {o['rss_mb_after']} MiB")


def print_table(title: str, results: list[dict[str, Any]]) -> None:
    base = next((r for r in results if r["variant"] == "a"), None)
    print(f"\n{title}")
    print(f"{'variant':<34} {'req/s':>8} {'x(a)':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'batch':>6} "
          f"{'cpu ms':>7}  statuses")
    for r in results:
        speedup = r["throughput_rps"] / base["throughput_rps"] if base else float("nan")
        r.setdefault("mean_batch_size", float("nan"))
        cpu = r.get("server_cpu_ms_per_req")
        print(f"{r['variant'] + ') ' + r['label']:<34} {r['throughput_rps']:>8.1f} {speedup:>6.1f} {r['p50_ms']:>8.1f} "
              f"{r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['mean_batch_size']:>6.1f} "
              f"{cpu if cpu is not None else float('nan'):>7.3f}  {r['statuses']}")
        if len(r.get("rounds_rps", [])) > 1:
            print(f"{'':<36}rounds: req/s {r['rounds_rps']}, server CPU ms/req {r['rounds_server_cpu_ms_per_req']}")
    print("req/s: requests served (200) per second; cpu ms: CPU time of the server's processes (event loop,\n"
          "workers, pools) per served request; a 503 carries Retry-After, which the load generator honours")
    print("\nper-stage mean ms per request (server side):")
    for r in results:
        print(f"  {r['variant']}) " + ", ".join(f"{k} {v:.2f}" for k, v in r["stages_mean_ms"].items()))


def check_targets(results: list[dict[str, Any]], max_wait_ms: float) -> dict[str, Any]:
    """(d) >= 8x (a) throughput; (d) p99 <= max_wait + 2 x one batch's compute."""
    by = {r["variant"]: r for r in results}
    if "a" not in by or "d" not in by:
        return {}
    d = by["d"]["stages_mean_ms"]
    encoders = max(v for k, v in d.items() if k.startswith("encoder_"))
    batch_compute = encoders + d.get("fusion", 0.0)
    bound = max_wait_ms + 2 * batch_compute
    return {
        "speedup_d_over_a": round(by["d"]["throughput_rps"] / by["a"]["throughput_rps"], 2),
        "speedup_target": 8.0,
        "d_p99_ms": by["d"]["p99_ms"],
        "d_batch_compute_ms": round(batch_compute, 2),
        "d_p99_bound_ms": round(bound, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=3000, help="most requests per variant")
    p.add_argument("--seconds", type=float, default=20.0, help="most seconds per variant")
    p.add_argument("--variants", default="a,b,c,d")
    p.add_argument("--export", type=Path, default=None)
    p.add_argument("--data", type=Path, default=Path("data/digits-av/raw"))
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--preprocess-workers", type=int, default=2)
    p.add_argument("--ort-threads", type=int, default=1, help="intra-op threads per ONNX Runtime session")
    p.add_argument("--preprocess-mode", choices=("thread", "process"), default="process")
    p.add_argument("--client", choices=["raw", *sorted(CLIENTS)], default="raw",
                   help="load generator's HTTP client (raw: benchmarks/loadgen.py, cheapest)")
    p.add_argument("--peers", default="", help="comma-separated peers to load too: litserve, fastapi")
    p.add_argument("--one-client", action="store_true", help="also measure each server at 1 client")
    p.add_argument("--ray", action="store_true", help="also load the default config on a local Ray Serve")
    p.add_argument("--overload", type=lambda v: [float(x) for x in v.split(",") if x.strip()], default=[],
                   help="offered load as multiples of capacity, run in turn (e.g. 10, or 2,5,10)")
    p.add_argument("--overload-seconds", type=float, default=60.0)
    p.add_argument("--rounds", type=int, default=1,
                   help="run every variant and peer this many times, interleaved; report the median round")
    p.add_argument("--preprocess-only", action="store_true", help="only measure threads vs processes")
    p.add_argument("--no-engine-level", action="store_true", help="skip the same variants without HTTP")
    p.add_argument("--json", type=Path, default=Path("report/serve_load.json"))
    args = p.parse_args(argv)
    if not 1 <= args.clients <= 1024 or args.requests < 1 or not 0 < args.seconds <= 600:
        p.error("--clients must be 1..1024, --requests >= 1, --seconds in (0, 600]")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")

    samples, source = load_samples(args.data)
    print(f"samples: {len(samples)} from {source}; {os.cpu_count()} CPUs, flags {' '.join(cpu_flags())}, "
          f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="mmf-serve-load-") as tmp:
        export = args.export or make_export(samples, Path(tmp))
        report: dict[str, Any] = {"machine": machine(), "samples": source, "clients": args.clients,
                                  "max_wait_ms": args.max_wait_ms, "max_batch_size": args.max_batch_size}
        report["preprocess"] = measure_preprocessing(samples, export, args.preprocess_workers)
        pre = report["preprocess"]
        print(f"preprocessing ({pre['workers']} workers): threads {pre['thread']['rows_per_s']} rows/s, "
              f"processes {pre['process']['rows_per_s']} rows/s (start-up {pre['process']['startup_s']} s) "
              f"-> {pre['faster']}")
        if not args.preprocess_only:
            results = []
            ctx = multiprocessing.get_context("spawn")
            from concurrent.futures import ProcessPoolExecutor

            # The load generator in its own session: where the kernel shares the CPU out per
            # session (autogroup scheduling, on by default on desktop/server kernels), a client in
            # the server's session took its CPU out of the server's share on a busy machine (the
            # event loop got 0.2 of a core at 5x overload), unlike a client on another machine.
            with ProcessPoolExecutor(1, mp_context=ctx, initializer=own_session, initargs=(autogroup_nice(),)) as pool:
                print("measuring the HTTP ceiling (GET /v2/health/ready, no model work) ...", flush=True)
                ceiling = measure_http_ceiling(export, samples, args, pool)
                report["http_ceiling"] = ceiling
                peers = [x.strip() for x in args.peers.split(",") if x.strip()]
                rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in [*variants, *peers]}
                for k in range(args.rounds):  # interleaved: a change of machine load hits every server
                    last = k == args.rounds - 1
                    for v in variants:
                        print(f"round {k + 1}/{args.rounds}: {v}) {VARIANTS[v]['label']} over HTTP ...", flush=True)
                        rounds[v].append(run_variant_http(v, export, samples, args, pool, overload=last))
                    for peer in peers:
                        print(f"round {k + 1}/{args.rounds}: peer {peer} over HTTP ...", flush=True)
                        rounds[peer].append(run_peer(peer, export, samples, args, pool))
                    if args.ray:
                        print(f"round {k + 1}/{args.rounds}: the default config on Ray Serve ...", flush=True)
                        for result in run_ray_server(export, samples, args, pool):
                            rounds.setdefault(result["variant"], []).append(result)
                results = [median_round(rs) for rs in rounds.values()]
            report["http"] = results
            report["targets"] = check_targets(results, args.max_wait_ms)
            if report["targets"]:  # variants a and d both ran
                a_rps = next(r["throughput_rps"] for r in results if r["variant"] == "a")
                report["targets"]["ceiling_rps"] = ceiling["throughput_rps"]
                report["targets"]["best_possible_over_a"] = round(ceiling["throughput_rps"] / a_rps, 2)
            if not args.no_engine_level:
                report["engine"] = []
                for v in variants:
                    print(f"running {v}) {VARIANTS[v]['label']} in-process (no HTTP) ...", flush=True)
                    report["engine"].append(run_variant_engine(v, export, samples, args))
                report["engine_targets"] = check_targets(report["engine"], args.max_wait_ms)
                report["compute"] = []
                for v in variants:
                    print(f"running {v}) {VARIANTS[v]['label']} in-process on preprocessed arrays ...", flush=True)
                    report["compute"].append(run_variant_engine(v, export, samples, args, preprocessed=True))
                report["compute_targets"] = check_targets(report["compute"], args.max_wait_ms)
            print(f"\nHTTP ceiling, {args.clients} clients, GET /v2/health/ready: {ceiling['throughput_rps']:.1f} req/s "
                  f"(p50 {ceiling['p50_ms']:.1f} ms) -- no variant can serve more over HTTP on this machine")
            print_table(f"over HTTP, {args.clients} clients (POST /v1/predict, multipart PNG + WAV + text):", results)
            print_extras(results)
            if "engine" in report:
                print_table(f"engine only, {args.clients} concurrent callers (same raw samples, no HTTP):", report["engine"])
                print_table(f"compute path only, {args.clients} concurrent callers (preprocessed arrays, no HTTP):", report["compute"])
            for key, where in (("targets", "HTTP"), ("engine_targets", "engine only"), ("compute_targets", "compute path")):
                t = report.get(key)
                if t:
                    print(f"{where}: (d)/(a) throughput {t['speedup_d_over_a']}x (target >= 8x); (d) p99 {t['d_p99_ms']} ms vs "
                          f"max_wait + 2 x batch compute = {t['d_p99_bound_ms']} ms")
                    if "best_possible_over_a" in t:
                        print(f"  HTTP ceiling / (a) = {t['best_possible_over_a']}x: the most any variant could "
                              "reach over HTTP here")
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
