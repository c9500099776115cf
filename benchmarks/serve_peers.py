"""Peer servers for the serving comparison: the same export, the same preprocessing, the same
answer, started on a port for ``benchmarks/serve_load.py --peers`` to load.

    python benchmarks/serve_peers.py litserve EXPORT --port 8001 [--workers 2 --max-batch-size 64]
    python benchmarks/serve_peers.py fastapi  EXPORT --port 8002

litserve   LitServe (``litserve.LitAPI``): multipart form decoded and preprocessed per request
           in its inference workers (mmfurnace's Preprocessor), dynamic batching
           (max_batch_size, batch_timeout 5 ms), the full graph on ONNX Runtime per batch,
           ``workers`` inference processes on the CPU.
fastapi    plain FastAPI + ONNX Runtime, one request at a time: a sync endpoint (FastAPI runs
           it in its thread pool) that preprocesses the upload and runs the graph at batch 1.
Both answer POST /predict (multipart image / audio files and a text field) with
``{"label", "probabilities"}`` and GET /health.
"""

import argparse
import sys
from typing import Any

import numpy as np
from fastapi import File, Form, UploadFile


def _model(export: str, threads: int) -> tuple[Any, Any, Any]:
    """(preprocessor, ORT runtime of the full graph, collate(rows) -> feed) for ``export``."""
    from mmfurnace.export.runtimes import RUNTIMES
    from mmfurnace.export.spec import FULL_GRAPH, load_spec
    from mmfurnace.serve.loading import find_tokenizer
    from mmfurnace.serve.preprocess import Preprocessor, PreprocessSettings
    from mmfurnace.serve.stages import collate_whole, example_row

    spec = load_spec(export)
    settings = PreprocessSettings.from_data_settings(spec.preprocessing, spec.modalities,
                                                     find_tokenizer(spec.directory, spec.preprocessing))
    runtime = RUNTIMES["onnxruntime"](export, graph=FULL_GRAPH, threads=threads)
    info = spec.info
    like = {m: example_row(m, info.input_shapes[m], info.input_dtypes.get(m, "float32")) for m in spec.modalities}
    sequences = {m for m in spec.modalities if spec.is_sequence(m)}
    modalities = sorted(spec.modalities)

    def collate(rows: list[dict]) -> dict:
        return collate_whole(rows, modalities, sequences, like)

    return Preprocessor(settings), runtime, collate


def _answer(logits: np.ndarray, class_names: tuple[str, ...]) -> dict[str, Any]:
    z = np.exp(logits - logits.max())
    p = z / z.sum()
    return {"label": class_names[int(p.argmax())], "probabilities": dict(zip(class_names, p.tolist(), strict=True))}


try:  # a module-level class: LitServe pickles the API into its worker processes
    import litserve as ls
    from fastapi import Request

    class MMFurnaceAPI(ls.LitAPI):
        def __init__(self, export: str, threads: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.export, self.threads = export, threads

        def setup(self, device: str) -> None:
            import torch

            torch.set_num_threads(1)
            self.pre, self.runtime, self.collate = _model(self.export, self.threads)
            self.classes = self.runtime.spec.info.class_names

        def decode_request(self, request: Request) -> dict:  # Request: LitServe reads the form
            row: dict[str, Any] = {}
            for name in ("image", "audio"):
                if name in request:
                    row[name] = request[name].file.read()
            if "text" in request:
                row["text"] = request["text"]
            return self.pre(row)

        def batch(self, rows: list[dict]) -> dict:
            return self.collate(rows)

        def predict(self, feed: dict) -> np.ndarray:
            return self.runtime.run_graph(feed)["logits"]

        def unbatch(self, logits: np.ndarray) -> list[np.ndarray]:
            return list(logits)

        def encode_response(self, logits: np.ndarray) -> dict:
            return _answer(logits, self.classes)
except ImportError:  # pragma: no cover - litserve is in the dev extra
    ls = None


def run_litserve(args: argparse.Namespace) -> None:
    if ls is None:
        raise SystemExit("litserve is not installed: pip install litserve (or the dev extra)")
    api = MMFurnaceAPI(args.export, args.threads, max_batch_size=args.max_batch_size,
                       batch_timeout=args.max_wait_ms / 1000.0)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers, timeout=60)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False,
               api_server_worker_type="thread")


def run_fastapi(args: argparse.Namespace) -> None:
    import torch
    import uvicorn
    from fastapi import FastAPI

    pre, runtime, collate = _model(args.export, args.threads)
    classes = runtime.spec.info.class_names
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    def predict(image: UploadFile | None = File(None), audio: UploadFile | None = File(None),  # noqa: B008
                text: str | None = Form(None)) -> dict:  # noqa: B008
        row: dict[str, Any] = {}
        if image is not None:
            row["image"] = image.file.read()
        if audio is not None:
            row["audio"] = audio.file.read()
        if text is not None:
            row["text"] = text
        logits = runtime.run_graph(collate([pre(row)]))["logits"][0]
        return _answer(logits, classes)

    app.post("/predict")(predict)
    torch.set_num_threads(1)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


PEERS = {"litserve": run_litserve, "fastapi": run_fastapi}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("peer", choices=sorted(PEERS))
    p.add_argument("export")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=2, help="litserve inference processes")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = p.parse_args(argv)
    PEERS[args.peer](args)


if __name__ == "__main__":
    sys.exit(main())
