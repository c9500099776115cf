"""The evaluation loop: a model (or any ``batch -> logits`` predictor) over every batch of a
loader, and what its logits mean.

Every evaluation in mmfurnace runs through :func:`predictions` -- training's validation and
test metrics, ``mmfurnace eval``, robustness curves, the compression report's accuracy, the
per-layer sensitivity analysis and the export parity check -- so accuracy means one thing
everywhere: :func:`accuracy`, a share of rows in [0, 1] (every label right, for multi-label);
differences between two models are given in points (100 x the difference). Whether a model is
multi-label is its own ``multilabel`` attribute (set from the dataset when it was built), never
guessed from the labels.

Shapes: logits (batch, classes); labels (batch,) class ids, or (batch, classes) float multi-hot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from mmfurnace.data.batch import Batch
from mmfurnace.precision import autocast

Predictor = Callable[[Any], Any]  # batch -> logits (a Tensor or a numpy array), e.g. a Runtime's run


class Prediction(NamedTuple):
    """One batch, evaluated.

    batch:  the batch as the model saw it (on the device, after ``transform``).
    logits: (batch, classes) float32 on the CPU.
    output: the model's full output (a ClassifierOutput: embeddings, projections, ...) for an
            nn.Module; None for other predictors.
    """

    batch: Any
    logits: Tensor
    output: Any


def predictions(
    model: nn.Module | Predictor,
    loader: Iterable[Any],
    device: torch.device | str | None = "cpu",
    *,
    precision: str = "fp32",
    transform: Callable[[Batch], Batch] | None = None,
) -> Iterator[Prediction]:
    """Yield a :class:`Prediction` for every batch of ``loader``.

    ``model`` is an nn.Module (run in eval mode without gradients, its mode restored after,
    under autocast for ``precision`` "bf16"/"fp16"; float inputs are cast to its weights'
    dtype, so an FP16/BF16 model runs as saved) or any other callable from a batch to logits
    (an ONNX Runtime predictor: batches are passed to it as they come). Batches are moved to
    ``device`` (None: left where they are) and then passed through ``transform`` (e.g. a
    corruption) when given.
    """
    if not isinstance(model, nn.Module):
        for batch in loader:
            batch = _prepared(batch, device, None, transform)
            yield Prediction(batch, _as_logits(model(batch)), None)
        return
    run_device = torch.device(device) if device is not None else None
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            batch = _prepared(batch, device, dtype, transform)
            where = run_device or _device_of(batch)
            # computed before the yield: grad mode and autocast are thread-wide, and must not
            # stay switched while the caller runs between batches
            with torch.no_grad(), autocast(where, precision):
                out = model(batch.inputs, batch.present, batch.valid)
            yield Prediction(batch, out.logits.float().cpu(), out)
    finally:
        model.train(was_training)


def predicted_labels(logits: Tensor, *, multilabel: bool) -> Tensor:
    """(rows,) class ids, or (rows, classes) bool for multi-label (``logit > 0``)."""
    return logits > 0 if multilabel else logits.argmax(dim=-1)


def accuracy(logits: Tensor, labels: Tensor, *, multilabel: bool) -> float:
    """Share of rows predicted right, in [0, 1] (all labels right, for multi-label, as in
    scikit-learn); 0.0 on no rows."""
    if labels.shape[0] == 0:
        return 0.0
    pred = predicted_labels(logits, multilabel=multilabel)
    right = (pred == labels.bool()).all(dim=-1) if multilabel else pred == labels
    return float(right.float().mean())


def predicted_accuracy(
    model: nn.Module | Predictor,
    loader: Iterable[Any],
    device: torch.device | str | None = "cpu",
    *,
    multilabel: bool | None = None,
    precision: str = "fp32",
    transform: Callable[[Batch], Batch] | None = None,
) -> float:
    """:func:`accuracy` of ``model`` over all of ``loader`` (see :func:`predictions`).

    ``multilabel`` defaults to ``model.multilabel``; give it for predictors that are not models.
    """
    if multilabel is None:
        multilabel = bool(model.multilabel)  # type: ignore[union-attr]
    logits, labels = [], []
    for p in predictions(model, loader, device, precision=precision, transform=transform):
        logits.append(p.logits)
        labels.append(_labels_of(p.batch))
    if not logits:
        return 0.0
    return accuracy(torch.cat(logits), torch.cat(labels), multilabel=multilabel)


def _prepared(batch: Any, device: torch.device | str | None, dtype: torch.dtype | None,
              transform: Callable[[Batch], Batch] | None) -> Any:
    if isinstance(batch, Batch):
        if device is not None:
            batch = batch.to(device)
        if dtype is not None and dtype != torch.float32:
            inputs = {m: x.to(dtype) if x.is_floating_point() else x for m, x in batch.inputs.items()}
            batch = Batch(inputs=inputs, valid=batch.valid, present=batch.present, labels=batch.labels)
    return transform(batch) if transform is not None else batch


def _device_of(batch: Batch) -> torch.device:
    return next((x.device for x in batch.inputs.values()), torch.device("cpu"))


def _as_logits(value: Any) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    return value.float().cpu()


def _labels_of(batch: Any) -> Tensor:
    labels = batch.labels if isinstance(batch, Batch) else batch["labels"]
    return torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).cpu()
