"""Building an engine's parts from an export directory: its stages (or the worker pool of the
fast path), tokenizer and shapes.

Shared by :class:`~mmfurnace.serve.engine.InferenceEngine` and the Ray Serve deployments
(:mod:`mmfurnace.serve.ray_app`), so both run the same stages from the same export.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from mmfurnace.errors import ConfigError
from mmfurnace.export.spec import FULL_GRAPH, FUSION_GRAPH, ExportSpec, encoder_graph
from mmfurnace.serve.config import AUTO, EAGER, ServeConfig, StageConfig
from mmfurnace.serve.preprocess import PreprocessSettings
from mmfurnace.serve.stages import EncoderShape, TorchStage, build_runtime_stage, example_row
from mmfurnace.serve.workers import WholeBatchWorkers, WorkerSpec

TOKENIZER_FILE = "tokenizer.json"


# Fastest first, as measured by `mmfurnace bench` on the demo model (README, Results).
BEST_BACKENDS = {"cpu": ("onnxruntime", "openvino", "torchscript", EAGER),
                 "cuda": ("onnxruntime-cuda", EAGER)}
# The export file each runtime loads (eager and compile rebuild the model from its weights).
BACKEND_FORMAT = {"onnxruntime": "onnx", "onnxruntime-cuda": "onnx", "onnxruntime-tensorrt": "onnx",
                  "openvino": "onnx", "tensorrt": "onnx", "torchscript": "torchscript"}


def resolve_config(cfg: ServeConfig, modalities: Sequence[str], formats: set[str] | None) -> tuple[ServeConfig, dict[str, str]]:
    """``cfg`` with ``mode: auto`` and every ``runtime: auto`` decided, and why (one line each).

    Mode: "whole" when every stage is on one device (one graph per batch: fewest hand-offs),
    "split" when the encoders / fusion are on different devices (what split is for).
    Backend: the first of BEST_BACKENDS[device] that is installed and whose file the export
    has (``formats``: None = any, the model is exported on demand). Falling back to eager is
    logged and written into the reasons, never silent.
    """
    import logging

    reasons: dict[str, str] = {}
    update: dict[str, object] = {}
    mode = cfg.mode
    if mode == AUTO:
        devices = {cfg.stage(m).device for m in modalities} | {cfg.fusion.device}
        whole_set = "whole" in cfg.model_fields_set
        if len(devices) == 1 or whole_set:
            mode = "whole"
            device = cfg.whole.device if whole_set else devices.pop()
            update["whole"] = cfg.whole.model_copy(update={"device": device})
            reasons["mode"] = f"whole: every stage is on {device}, so one graph per batch (auto)"
        else:
            mode = "split"
            reasons["mode"] = f"split: stages are on different devices ({', '.join(sorted(devices))}) (auto)"
        update["mode"] = mode
    else:
        reasons["mode"] = f"{mode} (configured)"
    resolved = cfg.model_copy(update=update)
    stages = {"whole": resolved.whole} if mode == "whole" else {
        **{f"stages.{m}": resolved.stage(m) for m in sorted(modalities)}, "fusion": resolved.fusion}
    picked: dict[str, StageConfig] = {}
    for key, stage in stages.items():
        if stage.runtime != AUTO:
            reasons[key] = f"{stage.runtime} on {stage.device} (configured)"
            picked[key] = stage
            continue
        runtime, why = best_runtime(stage.device, formats)
        if runtime == EAGER:
            logging.getLogger("mmfurnace.serve").warning("%s runs eager PyTorch: %s", key, why)
        reasons[key] = f"{runtime} on {stage.device} (auto: {why})"
        picked[key] = stage.model_copy(update={"runtime": runtime})
    if mode == "whole":
        resolved = resolved.model_copy(update={"whole": picked["whole"]})
    else:
        resolved = resolved.model_copy(update={
            "fusion": picked["fusion"],
            "stages": {m: picked[f"stages.{m}"] for m in sorted(modalities)}})
    return resolved, reasons


def best_runtime(device: str, formats: set[str] | None) -> tuple[str, str]:
    """(runtime, why) for ``device``: see :func:`resolve_config`."""
    from mmfurnace.export.runtimes import RUNTIMES

    kind = "cuda" if device.startswith("cuda") else "cpu"
    skipped = []
    for name in BEST_BACKENDS[kind]:
        if name == EAGER:
            break
        ok, why = RUNTIMES[name].available() if name in RUNTIMES else (False, "not registered")
        fmt = BACKEND_FORMAT.get(name)
        if ok and (formats is None or fmt in formats):
            return name, "fastest installed runtime the export has a file for"
        skipped.append(f"{name}: {why if not ok else f'the export has no {fmt} file'}")
    return EAGER, "no faster runtime usable (" + "; ".join(skipped) + ")"


def export_formats(spec: ExportSpec) -> set[str]:
    """File formats ("onnx", "torchscript") every graph of the export has."""
    sets = [set(g.files) for g in spec.graphs.values()]
    return set.intersection(*sets) if sets else set()


def stage_graphs(cfg: ServeConfig, modalities: Sequence[str]) -> dict[str, StageConfig]:
    """graph name -> the StageConfig it runs with, for ``cfg.mode`` (resolved: not "auto")."""
    assert cfg.mode != AUTO, "resolve_config first"
    if cfg.mode == "whole":
        return {FULL_GRAPH: cfg.whole}
    graphs = {encoder_graph(m): cfg.stage(m) for m in sorted(modalities)}
    graphs[FUSION_GRAPH] = cfg.fusion
    return graphs


def on_device(model: nn.Module, device: str) -> nn.Module:
    """``model`` (CPU) itself for "cpu", else a copy on ``device``; eval mode, no grads."""
    model = model if device == "cpu" else copy.deepcopy(model).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def build_stage(spec: ExportSpec, graph: str, stage: StageConfig, *, threads: int | None,
                models: dict[str, nn.Module] | None = None) -> Any:
    """One stage for ``graph`` of the export: eager PyTorch, or the runtime ``stage.runtime``.
    ``models`` caches the eager model per device across the stages of one engine."""
    if graph not in spec.graphs:
        raise ConfigError(
            f"{spec.directory}: export has no graph {graph!r}; re-export with split=True or serve with mode: whole"
        )
    if stage.runtime != EAGER:
        return build_runtime_stage(stage.runtime, spec.directory, graph, device=stage.device, threads=threads)
    from mmfurnace.export.runtimes.torch_common import load_eager_model

    models = {} if models is None else models
    if stage.device not in models:
        base = models.get("cpu") or load_eager_model(spec)
        models.setdefault("cpu", base)
        models[stage.device] = on_device(base, stage.device)
    return TorchStage(models[stage.device], graph, device=stage.device)


def build_export_stages(spec: ExportSpec, cfg: ServeConfig) -> dict[str, Any]:
    graphs = stage_graphs(cfg, spec.modalities)
    missing = [g for g in graphs if g not in spec.graphs]
    if missing:
        raise ConfigError(
            f"{spec.directory}: export has no graph(s) {missing} that mode {cfg.mode!r} needs; "
            "re-export with split=True or serve with mode: whole"
        )
    models: dict[str, nn.Module] = {}
    return {g: build_stage(spec, g, s, threads=cfg.intra_op_threads, models=models) for g, s in graphs.items()}


def find_tokenizer(directory: Path, preprocessing: Mapping[str, Any] | None, *extra: Path) -> Any | None:
    """The tokenizer for raw text: ``tokenizer.json`` in ``directory``, else the file the
    preprocessing's ``text.tokenizer`` names (relative to ``directory``, then as given), else
    ``tokenizer.json`` in ``extra`` folders; None when there is none."""
    from mmfurnace.data.text import PRETRAINED_PREFIX, load_tokenizer

    named = ((preprocessing or {}).get("text") or {}).get("tokenizer")
    # A relative name is looked up in ``directory`` first (an export that ships its tokenizer).
    candidates = [directory / TOKENIZER_FILE, *([directory / named, Path(named)] if named else []),
                  *(Path(e) / TOKENIZER_FILE for e in extra)]
    for path in candidates:
        if path.is_file():
            return load_tokenizer(path)
    if named and (str(named).startswith(PRETRAINED_PREFIX) or Path(named).is_dir()):
        return load_tokenizer(named)  # a pretrained encoder's own (pretrained:minilm), a model folder
    return None


def encoder_shapes_from_spec(spec: ExportSpec) -> dict[str, EncoderShape]:
    """What each encoder emits, read from the sidecar's encoder graph outputs."""
    shapes = {}
    for m in spec.modalities:
        graph = spec.graph(encoder_graph(m))
        outs = {t.name: t for t in graph.outputs}
        seq, pooled = outs[f"{m}_sequence"], outs[f"{m}_pooled"]
        has_mask = f"{m}_sequence_mask" in outs
        steps = seq.shape[1] if isinstance(seq.shape[1], int) and not has_mask else None
        shapes[m] = EncoderShape(steps, int(seq.shape[2]), int(pooled.shape[1]), has_mask)
    return shapes


def uses_workers(cfg: ServeConfig) -> bool:
    """Whether ``cfg`` (resolved) runs on :class:`WholeBatchWorkers`: whole mode, CPU, an
    export runtime (not eager), preprocessing in processes."""
    whole = cfg.whole
    return (cfg.mode == "whole" and whole.device == "cpu" and whole.runtime != EAGER
            and cfg.preprocess_mode == "process")


def whole_workers(spec: Any, cfg: ServeConfig, settings: PreprocessSettings) -> WholeBatchWorkers:
    """The worker pool of the fast path for export ``spec``."""
    from mmfurnace.serve.stages import runtime_device_options

    info = spec.info
    options: dict[str, Any] = dict(runtime_device_options(cfg.whole.runtime, "cpu"))
    if cfg.intra_op_threads is not None:
        options["threads"] = cfg.intra_op_threads
    worker = WorkerSpec(
        export_dir=str(spec.directory), graph=FULL_GRAPH, runtime=cfg.whole.runtime, options=options,
        settings=settings, modalities=tuple(sorted(spec.modalities)),
        sequences=frozenset(m for m in spec.modalities if spec.is_sequence(m)),
        like={m: example_row(m, info.input_shapes[m], info.input_dtypes.get(m, "float32")) for m in spec.modalities},
    )
    return WholeBatchWorkers(worker, workers=cfg.preprocess_workers, torch_threads=cfg.torch_threads)
