"""export_model: a MultimodalClassifier -> ONNX / TorchScript graphs + the export.json sidecar.

Graphs (flat names; see :mod:`mmfurnace.export.spec` for the sidecar):

    model        <m>, <m>_mask (sequences), <m>_present for each modality -> logits
    encoder_<m>  <m>[, <m>_mask], <m>_present -> <m>_sequence, <m>_pooled[, <m>_sequence_mask]
    fusion_head  <m>_sequence, <m>_pooled[, <m>_sequence_mask], <m>_present ... -> logits

Axes: ``batch`` is dynamic everywhere; sequence modalities have a dynamic ``audio_frames`` /
``text_tokens`` axis (and ``<m>_encoded`` after their encoder). Uses the TorchScript-based
exporter (``dynamo=False``): the dynamo one needs onnxscript, and the traced graph is
checked against eager on a batch of other sizes before the export is kept.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import mmfurnace
from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import ConfigError, InputError, MMFurnaceError
from mmfurnace.export.graphs import (
    flat_example,
    graph_args,
    plan_graphs,
    sequence_modalities,
)
from mmfurnace.export.inputs import make_example_batch
from mmfurnace.export.spec import (
    FORMAT,
    FORMAT_VERSION,
    SIDECAR,
    GraphSpec,
    sha256_file,
    write_spec,
)
from mmfurnace.export.verify import verify_export
from mmfurnace.export.wrappers import wrap_graph
from mmfurnace.export.writers import ExportError, to_onnx, to_torchscript, with_onnx_inputs
from mmfurnace.io import atomic_dir
from mmfurnace.models.surgery import shape_attributes

__all__ = ["ExportError", "export_checkpoint", "export_model"]

FORMATS = ("onnx", "torchscript")
WEIGHTS = "model.safetensors"
PICKLED = "model.pt"


def export_model(
    model: nn.Module,
    info: DatasetInfo,
    out_dir: str | Path,
    *,
    formats: Sequence[str] = FORMATS,
    preprocessing: dict[str, Any] | None = None,
    opset: int = 17,
    config: Any | None = None,
    split: bool = True,
    verify: bool = True,
    source: str | None = None,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Export ``model`` (a MultimodalClassifier) for ``info`` into ``out_dir``; return out_dir.

    formats: any of "onnx", "torchscript". preprocessing: the data settings a deployment must
    apply before feeding the graphs (stored verbatim in export.json; a pydantic config is
    dumped). config: the ModelConfig the model was built from — lets the eager/compile
    runtimes rebuild it from weights; without it the module is pickled (model.pt).
    split: also export each encoder and the fusion head separately. verify: run the ONNX
    graphs with ONNX Runtime on a batch of other sizes and compare with eager (1e-4 relative).
    extra_files: name -> file copied into the export (e.g. the tokenizer), hashed with the rest.
    The export is built in a staging directory and swapped in at the end, so a failed export
    leaves any previous one in ``out_dir`` untouched.
    """
    formats = _check_formats(formats)
    if not 7 <= opset <= 20:
        raise ConfigError(
            f"opset {opset} is outside what the TorchScript ONNX exporter supports (7..20)"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / SIDECAR).is_file():
        raise InputError(
            f"{out_dir}: exists and is not an mmfurnace export; refusing to overwrite it"
        )
    model = _cpu_eval_copy(model)
    modalities = sorted(getattr(model, "modalities", info.modalities))
    missing = [m for m in modalities if m not in info.input_shapes]
    if missing:
        raise InputError(f"model takes {missing}, which DatasetInfo has no input shape for")
    example = make_example_batch(info, 3, seed=0, modalities=modalities)
    graphs = plan_graphs(model, info, modalities, example, split)

    with atomic_dir(out_dir) as staging:  # a failed export leaves the previous one untouched
        notes: list[str] = []
        files: dict[str, dict[str, Any]] = {}
        flat = flat_example(model, modalities, example, split)
        for i, graph in enumerate(graphs):
            feed = graph_args(graph, flat)
            wrapper = wrap_graph(model, graph, modalities, sequence_modalities(info, modalities))
            if "onnx" in formats:
                path = staging / f"{graph.name}.onnx"
                notes += to_onnx(wrapper, model, graph, feed, path, opset)
                graph.files["onnx"] = path.name
                graphs[i] = graph = with_onnx_inputs(graph, path)
            if "torchscript" in formats:
                path = staging / f"{graph.name}.ts"
                notes += to_torchscript(wrapper, model, feed, path)
                graph.files["torchscript"] = path.name
        model_entry = _save_model(model, staging, config)
        for name, file in (extra_files or {}).items():
            shutil.copyfile(file, staging / name)
        if verify:
            verify_export(model, info, modalities, graphs, staging, formats, split)
        for path in sorted(staging.iterdir()):
            files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        raw = _sidecar(
            info,
            modalities,
            graphs,
            opset,
            formats,
            preprocessing,
            model_entry,
            files,
            notes,
            source,
        )
        write_spec(staging, raw)
    return out_dir


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, **kwargs: Any) -> Path:
    """Export the model of a checkpoint (:func:`mmfurnace.train.checkpoint.load_model`: a
    trained, pruned, distilled or half-precision one), recording its run config's data section
    as the preprocessing settings unless given, and the dataset's tokenizer beside the graphs."""
    from mmfurnace.data.datasets import TOKENIZER_FILE
    from mmfurnace.train.checkpoint import load_model

    model, meta = load_model(checkpoint_dir)
    config = meta.config
    if kwargs.get("preprocessing") is None:
        kwargs["preprocessing"] = _data_settings(config.data)
    kwargs.setdefault("config", config.model)
    kwargs.setdefault("source", str(Path(checkpoint_dir).resolve()))
    tokenizer = _find_tokenizer(config.data) if "text" in meta.info.modalities else None
    if tokenizer is not None:
        kwargs.setdefault("extra_files", {TOKENIZER_FILE: tokenizer})
    return export_model(model, meta.info, out_dir, **kwargs)


def _find_tokenizer(data: Any) -> Path | None:
    """The dataset's tokenizer: a deployment needs nothing else, and WordPiece training is not
    reproducible, so the server must use this exact file."""
    from mmfurnace.data.datasets import TOKENIZER_FILE, packed_root
    from mmfurnace.data.text import tokenizer_file

    candidates = []
    if data.text.tokenizer:  # a file, a model folder or pretrained:NAME
        with contextlib.suppress(MMFurnaceError):
            candidates.append(tokenizer_file(data.text.tokenizer))
    candidates += [packed_root(Path(data.root)) / TOKENIZER_FILE, Path(data.root) / TOKENIZER_FILE]
    return next((path for path in candidates if path.is_file()), None)


# -- writing ------------------------------------------------------------------------------


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(
            f"unknown export format(s) {unknown or list(formats)}; known: {', '.join(FORMATS)}"
        )
    return tuple(dict.fromkeys(formats))


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    # Export from a CPU float32 copy in eval mode: the caller's model keeps its device/mode.
    model = copy.deepcopy(model).to("cpu").float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _save_model(model: nn.Module, staging: Path, config: Any | None) -> dict[str, Any]:
    import safetensors.torch

    safetensors.torch.save_model(model, str(staging / WEIGHTS))
    entry: dict[str, Any] = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "weights": WEIGHTS,
        "config": _dump(config) if config is not None else None,
        # with the weights' shapes, what rebuilds a model whose layers are narrower than its
        # config builds (channel-pruned): see mmfurnace.models.weights.rebuild_model
        "shape_attributes": shape_attributes(model),
    }
    if config is None:
        # No config to rebuild from: pickle the module so eager/compile can still load it.
        torch.save(model, staging / PICKLED)
        entry["pickled"] = PICKLED
    return entry


def _dump(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return obj


def _data_settings(data: Any) -> dict[str, Any]:
    raw = _dump(data)
    keep = ("dataset", "modalities", "image", "audio", "text")
    return {k: raw[k] for k in keep if k in raw} if isinstance(raw, dict) else raw


def _sidecar(
    info: DatasetInfo,
    modalities: list[str],
    graphs: list[GraphSpec],
    opset: int,
    formats: tuple[str, ...],
    preprocessing: Any,
    model_entry: dict[str, Any],
    files: dict[str, dict[str, Any]],
    notes: list[str],
    source: str | None,
) -> dict[str, Any]:
    try:
        import onnx

        onnx_version: str | None = onnx.__version__
    except ImportError:
        onnx_version = None
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mmfurnace_version": mmfurnace.__version__,
        "torch_version": torch.__version__,
        "onnx_version": onnx_version,
        "opset": opset,
        "formats": list(formats),
        "modalities": modalities,
        "class_names": list(info.class_names),
        "multilabel": info.multilabel,
        "info": info.to_dict(),
        "preprocessing": _dump(preprocessing),
        "model": {**model_entry, "source": source},
        "graphs": {g.name: g.to_dict() for g in graphs},
        "files": files,
        "trace_notes": sorted(set(notes)),
    }
