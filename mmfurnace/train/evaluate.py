"""Evaluate a classifier on a loader: accuracy, micro/macro F1, task loss, per-modality accuracy,
cross-modal consistency. Reused by the training recipe and ``mmfurnace eval``; the loop itself
is :func:`mmfurnace.models.predict.predictions`, which every evaluation shares.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mmfurnace.data.batch import Batch
from mmfurnace.models.predict import accuracy, predictions
from mmfurnace.train.losses import task_loss
from mmfurnace.train.metrics import classification_metrics, consistency_score


def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device | str,
    *,
    modalities: Sequence[str],
    per_modality: bool = True,
    precision: str = "fp32",
    outputs: dict[str, Tensor] | None = None,
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

    Multi-label is ``model.multilabel``. The model's train/eval mode is restored afterwards.
    ``outputs``, when given, receives the rows themselves in loader order: "logits" (rows,
    classes) float32 and "labels" (rows,) or (rows, classes), for per-row comparisons.
    """
    multilabel = bool(model.multilabel)
    modalities = sorted(modalities)
    logits, labels, present = [], [], {m: [] for m in modalities}
    projected: list[dict[str, Tensor]] = []  # per batch; a batch lacking a modality may omit it
    alone: dict[str, tuple[list[Tensor], list[Tensor]]] = {m: ([], []) for m in modalities}
    loss_sum, rows = 0.0, 0
    for p in predictions(model, loader, device, precision=precision):
        batch, n = p.batch, len(p.batch)
        batch_labels = batch.labels.cpu()
        loss_sum += float(task_loss(p.logits, batch_labels, multilabel=multilabel)) * n
        rows += n
        logits.append(p.logits)
        labels.append(batch_labels)
        for m in modalities:
            present[m].append(batch.present[m].cpu())
        projected.append({m: z.float().cpu() for m, z in (p.output.projected or {}).items()})
        if per_modality:
            for m in modalities:
                _collect_alone(model, batch, m, device, precision, alone[m])

    if rows == 0:
        return {"samples": 0, "loss": None, "accuracy": None, "micro_f1": None, "macro_f1": None,
                "consistency": None, "per_modality_accuracy": {}}
    all_logits, all_labels = torch.cat(logits), torch.cat(labels)
    if outputs is not None:
        outputs.update(logits=all_logits.float(), labels=all_labels)
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
    valid = {m: x for m, x in batch.valid.items() if m == modality}
    return Batch(inputs=inputs, valid=valid, present=present, labels=batch.labels)


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
    single = next(predictions(model, [only_modality(batch, modality)], device, precision=precision))
    rows = rows.cpu()
    sink[0].append(single.logits[rows])
    sink[1].append(batch.labels.cpu()[rows])
