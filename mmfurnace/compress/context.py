"""What a compression method works with: the parent model, its data, where to write, and
the :class:`Variant` records it hands back to be measured."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mmfurnace.compress.measure import count_macs, count_params, evaluate_predict, size_on_disk
from mmfurnace.compress.quantize import export_onnx
from mmfurnace.compress.runners import OrtPredictor, TorchPredictor
from mmfurnace.data.batch import Batch
from mmfurnace.export.int8_format import INT8_FORMATS
from mmfurnace.train.losses import recipe_loss

FP32 = {"torch": "fp32-torch", "onnxruntime": "fp32-onnxruntime", "openvino": "fp32-openvino"}


@dataclass
class Variant:
    """A model to measure: a predictor plus what is known about it without running it."""

    name: str
    runtime: str  # "torch" | "onnxruntime" | "openvino"
    predict: Callable[[Batch], torch.Tensor]
    params: int
    macs: int
    path: Path | None  # the artefact on disk (checkpoint or export directory)
    size_bytes: int
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def backend(self) -> str:
        """The old name of :attr:`runtime` (reports still write it under the key "backend")."""
        return self.runtime


class Context:
    """What a method needs: the parent model, its metadata, data, and where to write."""

    def __init__(self, model: nn.Module, meta: Any, splits: dict[str, Dataset], out_dir: Path,
                 *, threads: int | None, batch_size: int, seed: int) -> None:
        from mmfurnace.data.loader import make_loader

        self.model, self.meta, self.info = model, meta, meta.info
        self.out_dir, self.threads = out_dir, threads
        self.modalities = list(model.modalities)
        self.multilabel = bool(meta.info.multilabel)

        def loader(split: str, shuffle: bool) -> Any:
            return make_loader(splits[split], modalities=self.modalities, batch_size=batch_size,
                               shuffle=shuffle, seed=seed)

        self.train_loader = loader("train", True)
        self.valid_batches = list(loader("valid", False))
        eval_split = "test" if "test" in splits else "valid"
        self.eval_split = eval_split
        self.eval_batches = list(loader(eval_split, False))
        self.details: dict[str, Any] = {}
        self._fp32_export: Path | None = None
        self.example = self.valid_batches[0]

    def valid_accuracy(self, model: nn.Module) -> float:
        """``model``'s accuracy on the validation split: fine-tunes keep their best epoch by it
        (the test split stays for the report)."""
        return evaluate_predict(TorchPredictor(model), self.valid_batches, multilabel=self.multilabel)

    def calibration(self, n: int) -> list[Batch]:
        """``n`` batches of real (shuffled) training data."""
        out = []
        for batch in self.train_loader:
            out.append(batch)
            if len(out) >= n:
                break
        return out

    def loss(self) -> Any:
        return recipe_loss(self.meta.config.train, multilabel=self.multilabel)

    def fp32_export(self) -> Path:
        if self._fp32_export is None:
            self._fp32_export = export_onnx(self.model, self.info, self.out_dir / FP32["onnxruntime"],
                                            config=self.meta.config.model, source=str(self.meta.path))
        return self._fp32_export

    def copy_model(self) -> nn.Module:
        return copy.deepcopy(self.model).cpu().eval()

    def torch_variant(self, name: str, model: nn.Module, path: Path, **notes: Any) -> Variant:
        """A torch model saved at ``path`` (a checkpoint: its size is that of its weights file)."""
        dtype = next(model.parameters()).dtype
        weights = path / "model.safetensors"
        return Variant(name, "torch", TorchPredictor(model, dtype=dtype if dtype != torch.float32 else None),
                       count_params(model, nonzero=bool(notes.get("nonzero"))), count_macs(model, self.example),
                       path, size_on_disk(weights if weights.is_file() else path), notes)

    def ort_variant(self, name: str, export_dir: Path, *, params: int, macs: int, **notes: Any) -> Variant:
        """An export run by onnxruntime; an INT8 one notes its format (and when ORT's
        precision mode had to run it, being quantized for another CPU)."""
        predict = OrtPredictor(export_dir, threads=self.ort_threads)
        fmt = (predict.runtime.int8_record or {}).get("format")
        if fmt:
            rescued = predict.runtime.precision_mode and not INT8_FORMATS[fmt].exact_everywhere
            notes.setdefault("int8_format", fmt + (" (precision mode)" if rescued else ""))
        return Variant(name, "onnxruntime", predict, params, macs, export_dir,
                       size_on_disk(export_dir / "model.onnx"), notes)

    def ov_variant(self, of: Variant) -> Variant:
        """The export of onnxruntime variant ``of`` run by OpenVINO instead."""
        from mmfurnace.compress.runners import OvPredictor

        notes = {k: v.removesuffix(" (precision mode)") if k == "int8_format" else v for k, v in of.notes.items()}
        return Variant(of.name, "openvino", OvPredictor(of.path, threads=self.ort_threads), of.params, of.macs,
                       of.path, of.size_bytes, notes)

    @property
    def ort_threads(self) -> int:
        return self.threads or torch.get_num_threads()

    def save_checkpoint(self, name: str, model: nn.Module, *, config: Any | None = None,
                        compression: dict[str, Any]) -> Path:
        """A training-format checkpoint of ``model`` with its compression.json under out_dir/name
        (written together: the directory appears whole or not at all)."""
        from mmfurnace.train.checkpoint import save_checkpoint

        run_cfg = config if config is not None else self.meta.config
        return save_checkpoint(
            self.out_dir / name, model=model, optimizer=None, scheduler=None, scaler=None,
            epoch=self.meta.epoch, step=self.meta.step, rng_states=None,
            config=run_cfg.model_dump(mode="json"), info=self.info, metrics={},
            compression={**compression, "parent": str(self.meta.path)},
        )
