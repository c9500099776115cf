"""Evaluate a classifier on a loader: accuracy, micro/macro F1, task loss, per-modality accuracy,
cross-modal consistency. Reused by the training recipe, ``mmfurnace eval``, compress and export.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mmfurnace.data.batch import Batch
from mmfurnace.train.losses import task_loss
from mmfurnace.train.metrics import accuracy, classification_metrics, consistency_score
from mmfurnace.train.precision import autocast


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device | str,
    *,
    modalities: Sequence[str],
    per_modality: bool = True,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Metrics of ``model`` over every batch of ``loader``.

    Returns ``{"samples", "loss", "accuracy", "micro_f1", "macro_f1", "consistency",
    "per_modality_accuracy": {modality: accuracy}}``.

    - ``loss`` is the task loss (CE / BCE) averaged over samples.
    - ``consistency`` is :func:`mmfurnace.train.metrics.consistency_score` over the whole set
      (None when the model has no projections or no two rows share two modalities).
    - ``per_modality_accuracy[m]`` is the accuracy of the model when it is given only modality
      ``m`` (the others marked absent and left out), over the rows where ``m`` is present.
      Every fusion honours the mask, so this works for all of them. Skipped (empty dict)
      when ``per_modality`` is False; a modality absent from every row is left out.

    Multi-label is recognised from the labels ((batch, classes) float). The model's train/eval
    mode is restored afterwards.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    modalities = sorted(modalities)
    logits, labels, present = [], [], {m: [] for m in modalities}
    projected: list[dict[str, Tensor]] = []  # per batch; a batch lacking a modality may omit it
    alone: dict[str, tuple[list[Tensor], list[Tensor]]] = {m: ([], []) for m in modalities}
    loss_sum, rows = 0.0, 0
    multilabel = False
    try:
        for batch in loader:
            batch = _cast(batch.to(device), dtype)  # an FP16/BF16 model takes inputs in its dtype
            multilabel = batch.labels.is_floating_point() and batch.labels.ndim == 2
            with autocast(device, precision):
                out = model(batch.inputs, batch.present, batch.padding)
            n = len(batch)
            loss_sum += float(task_loss(out.logits, batch.labels, multilabel=multilabel)) * n
            rows += n
            logits.append(out.logits.float().cpu())
            labels.append(batch.labels.cpu())
            for m in modalities:
                present[m].append(batch.present[m].cpu())
            projected.append({m: z.float().cpu() for m, z in (out.projected or {}).items()})
            if per_modality:
                for m in modalities:
                    _collect_alone(model, batch, m, device, precision, alone[m])
    finally:
        model.train(was_training)

    if rows == 0:
        return {"samples": 0, "loss": None, "accuracy": None, "micro_f1": None, "macro_f1": None,
                "consistency": None, "per_modality_accuracy": {}}
    all_logits, all_labels = torch.cat(logits), torch.cat(labels)
    all_present = {m: torch.cat(v) for m, v in present.items()}
    result: dict[str, Any] = {"samples": rows, "loss": loss_sum / rows}
    result.update(classification_metrics(all_logits, all_labels, multilabel=multilabel))
    joined = _join_projections(projected, [len(x) for x in logits])
    result["consistency"] = consistency_score(joined, all_present) if joined else None
    result["per_modality_accuracy"] = {
        m: accuracy(torch.cat(lg), torch.cat(lb), multilabel=multilabel)
        for m, (lg, lb) in alone.items()
        if lg and sum(len(x) for x in lb) > 0
    }
    return result


def only_modality(batch: Batch, modality: str) -> Batch:
    """The batch as the model sees it with just ``modality``: others absent and left out."""
    present = {m: (mask if m == modality else torch.zeros_like(mask)) for m, mask in batch.present.items()}
    inputs = {m: x for m, x in batch.inputs.items() if m == modality}
    padding = {m: x for m, x in batch.padding.items() if m == modality}
    return Batch(inputs=inputs, padding=padding, present=present, labels=batch.labels)


def _cast(batch: Batch, dtype: torch.dtype) -> Batch:
    if dtype == torch.float32:
        return batch
    inputs = {m: x.to(dtype) if x.is_floating_point() else x for m, x in batch.inputs.items()}
    return Batch(inputs=inputs, padding=batch.padding, present=batch.present, labels=batch.labels)


def _join_projections(per_batch: list[dict[str, Tensor]], sizes: list[int]) -> dict[str, Tensor]:
    # A batch where a modality is absent from every row may not project it: zeros stand in
    # for those rows, which the presence mask already excludes.
    dims = {m: z.shape[-1] for batch in per_batch for m, z in batch.items()}
    return {
        m: torch.cat([batch.get(m, torch.zeros(n, dim)) for batch, n in zip(per_batch, sizes, strict=False)])
        for m, dim in dims.items()
    }


def _collect_alone(
    model: nn.Module,
    batch: Batch,
    modality: str,
    device: torch.device,
    precision: str,
    sink: tuple[list[Tensor], list[Tensor]],
) -> None:
    rows = batch.present[modality]
    if modality not in batch.inputs or not bool(rows.any()):
        return
    single = only_modality(batch, modality)
    with autocast(device, precision):
        out = model(single.inputs, single.present, single.padding)
    sink[0].append(out.logits.float()[rows].cpu())
    sink[1].append(batch.labels[rows].cpu())
