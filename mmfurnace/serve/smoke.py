"""A smoke run of the HTTP server with real samples: what `mmfurnace demo` shows a user.

Starts the server in-process on a free loopback port, sends real test samples of a raw
manifest through the standard KServe v2 client (``tritonclient.http``) and through the
multipart ``/v1/predict`` endpoint (one request with a modality left out), prints the answers
and per-stage timings, and stops the server.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from mmfurnace.serve.config import ServeConfig


def demo_config() -> ServeConfig:
    """The shipped defaults (configs/serve.yaml): mode and runtime auto — on the CPU, whole
    graph on ONNX Runtime in batch worker processes."""
    return ServeConfig()


def _test_samples(raw_dir: Path, n: int) -> list[dict]:
    """The first ``n`` test rows that have every modality (real datasets miss some)."""
    lines = (raw_dir / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return [r for r in rows if r["split"] == "test" and all(r.get(m) for m in ("image", "audio", "text"))][:n]


def _class(sample: dict, classes: list[str]) -> str:
    """A manifest label is a class index (digits-av) or its name (tuxpaint)."""
    label = sample["label"]
    return classes[label] if isinstance(label, int) else str(label)


def serve_smoke(export_dir: Path, raw_dir: Path, *, n: int = 4, console: Console | None = None) -> str:
    """Run the smoke requests; return a Markdown report of what came back."""
    import httpx
    import tritonclient.http as triton

    from mmfurnace.serve.engine import InferenceEngine
    from mmfurnace.serve.server import BackgroundServer

    console = console or Console()
    samples = _test_samples(raw_dir, n)
    classes = json.loads((raw_dir / "classes.json").read_text())
    cfg = demo_config()
    engine = InferenceEngine.from_export(export_dir, cfg)
    described = engine.describe()
    how = f"mode {described['mode']}, runtime {described['runtime']}"
    rows: list[tuple[str, str, str, str, str]] = []
    with BackgroundServer(engine, cfg) as server:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        assert client.is_server_ready()
        inputs = []
        for name in ("image", "audio"):
            data = np.array([(raw_dir / s[name]).read_bytes() for s in samples], dtype=object)
            x = triton.InferInput(name, [len(samples)], "BYTES")
            x.set_data_from_numpy(data)
            inputs.append(x)
        text = triton.InferInput("text", [len(samples)], "BYTES")
        text.set_data_from_numpy(np.array([s["text"].encode() for s in samples], dtype=object))
        inputs.append(text)
        result = client.infer(cfg.model_name, inputs)
        probs = result.as_numpy("probabilities")
        for s, p, label in zip(samples, probs, result.as_numpy("label"), strict=True):
            rows.append(("v2 (tritonclient)", "audio+image+text", _class(s, classes),
                         label.decode(), f"{p.max():.2f}"))
        timings: dict[str, float] = {}
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for s, keep in ((samples[0], ("image", "audio", "text")), (samples[1], ("image", "text"))):
                files = {m: (Path(s[m]).name, (raw_dir / s[m]).read_bytes())
                         for m in keep if m in ("image", "audio")}
                data = {"text": s["text"]} if "text" in keep else {}
                body = http.post("/v1/predict", files=files, data=data).raise_for_status().json()
                rows.append(("/v1/predict (multipart)", "+".join(sorted(keep)), _class(s, classes),
                             body["label"], f"{max(body['probabilities'].values()):.2f}"))
                timings = body["timings_ms"]
            metrics = http.get("/metrics").text
    client.close()
    table = Table(title="served predictions")
    for col in ("endpoint", "modalities", "true", "predicted", "p"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print("per-stage timings of the last request (ms): " + json.dumps(timings))
    served = sum(1 for line in metrics.splitlines() if line.startswith("mmfurnace_requests_total"))
    console.print(f"served with the default config: {how}")
    lines = ["# Serving smoke run", "", f"Export `{export_dir}` served on {server.url} with the default "
             f"config ({how}).", "",
             "| endpoint | modalities | true | predicted | p |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "Per-stage timings of the last request (ms):", "", "```",
              json.dumps(timings, indent=2), "```", "",
              f"`/metrics` exposed {served} request-count series."]
    return "\n".join(lines) + "\n"
