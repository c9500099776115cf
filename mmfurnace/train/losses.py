"""Training losses: the task term, a cross-modal consistency term, a modality-specific regulariser.

Shapes:
    logits     (batch, classes)
    labels     (batch,) int64 class ids, or (batch, classes) float multi-hot
    projected  modality -> (batch, proj_dim), embeddings mapped into one shared space
    embeddings modality -> (batch, dim), pooled output of each encoder
    present    modality -> (batch,) bool

Rows where a modality is absent contribute nothing to a term that involves it. A term with no
rows to average over is an exact 0 that stays attached to the graph (so DDP sees every
parameter used and no NaN appears). Every term is computed in float32, also under autocast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import combinations
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class LossParts(NamedTuple):
    """The weighted total and each unweighted term, logged separately."""

    total: Tensor
    task: Tensor
    consistency: Tensor
    regularizer: Tensor


def task_loss(logits: Tensor, labels: Tensor, *, multilabel: bool, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy for single-label classification, BCE-with-logits for multi-label.

    ``label_smoothing`` e: the single-label target puts 1 - e on the class and e spread evenly
    over all classes (torch's definition); a multi-label target moves each 0/1 by e/2 towards
    1/2, the same rule for each binary task."""
    logits = logits.float()
    if multilabel:
        targets = labels.float()
        if label_smoothing:
            targets = targets * (1 - label_smoothing) + 0.5 * label_smoothing
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, labels.long(), label_smoothing=label_smoothing)


def _unit_pairs(projected: dict[str, Tensor], present: dict[str, Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
    """For each modality pair with rows where both are present: those rows of both
    projections, L2-normalised, in fp32."""
    for a, b in _pairs(projected):
        both = present[a] & present[b]
        if bool(both.any()):
            yield (F.normalize(projected[a][both].float(), dim=-1),
                   F.normalize(projected[b][both].float(), dim=-1))


def consistency_mse(projected: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
    """Mean over modality pairs of the squared distance between paired unit-length projections.

    For a pair (a, b) and the rows where both are present, the term is
    ``mean_rows ||a/|a| - b/|b|||^2`` (= ``2 - 2 cos``, in [0, 4], independent of proj_dim).
    Pairs with no such rows are skipped; 0 when no pair has any.
    """
    terms = [(za - zb).pow(2).sum(dim=-1).mean() for za, zb in _unit_pairs(projected, present)]
    return _mean_or_zero(terms, projected)


def consistency_infonce(
    projected: dict[str, Tensor], present: dict[str, Tensor], temperature: float
) -> Tensor:
    """Symmetric InfoNCE (CLIP-style) averaged over modality pairs.

    For a pair (a, b), over the n rows where both are present: logits = cos(a_i, b_j) / T,
    the matching row is the positive, the loss is the mean of the a->b and b->a
    cross-entropies. Pairs with no such rows are skipped; 0 when no pair has any.
    """
    terms = []
    for za, zb in _unit_pairs(projected, present):
        logits = za @ zb.T / temperature
        target = torch.arange(logits.shape[0], device=logits.device)
        terms.append(0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)))
    return _mean_or_zero(terms, projected)


def modality_l2(embeddings: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
    """Mean over modalities of the mean squared L2 norm of the pooled embedding of present rows."""
    terms = []
    for modality in sorted(embeddings):
        rows = present[modality]
        if not bool(rows.any()):
            continue
        terms.append(embeddings[modality][rows].float().pow(2).sum(dim=-1).mean())
    return _mean_or_zero(terms, embeddings)


def total_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    projected: dict[str, Tensor],
    embeddings: dict[str, Tensor],
    present: dict[str, Tensor],
    multilabel: bool,
    alpha: float,
    beta: float,
    consistency: str = "mse",
    temperature: float = 0.1,
    label_smoothing: float = 0.0,
) -> LossParts:
    """``task + alpha * consistency + beta * regularizer``; every part returned for logging.

    ``consistency`` is "mse" (:func:`consistency_mse`) or "infonce" (:func:`consistency_infonce`).
    A term whose weight is 0 is not computed (it is an exact, detached 0 in the parts): it
    could not change the total or any gradient.
    """
    task = task_loss(logits, labels, multilabel=multilabel, label_smoothing=label_smoothing)
    total = task
    cons = reg = torch.zeros((), device=task.device)
    if alpha != 0:
        if consistency == "mse":
            cons = consistency_mse(projected, present)
        elif consistency == "infonce":
            cons = consistency_infonce(projected, present, temperature)
        else:
            raise AssertionError(f"unknown consistency loss {consistency!r}")  # config validates
        total = total + alpha * cons
    if beta != 0:
        reg = modality_l2(embeddings, present)
        total = total + beta * reg
    return LossParts(total, task, cons, reg)


LossFn = Callable[[Any, Any, dict[str, Tensor]], Any]  # (model output, batch, present) -> loss


def training_loss(*, multilabel: bool, alpha: float = 0.1, beta: float = 1e-4,
                  consistency: str = "mse", temperature: float = 0.1,
                  label_smoothing: float = 0.0) -> LossFn:
    """The recipe's loss as ``loss_fn(output, batch, present) -> LossParts``: :func:`total_loss`
    of a ClassifierOutput against ``batch.labels``, with ``present`` the masks the model saw."""

    def loss_fn(out: Any, batch: Any, present: dict[str, Tensor]) -> LossParts:
        return total_loss(
            out.logits, batch.labels, projected=out.projected, embeddings=out.embeddings,
            present=present, multilabel=multilabel, alpha=alpha, beta=beta,
            consistency=consistency, temperature=temperature, label_smoothing=label_smoothing,
        )

    return loss_fn


def recipe_loss(tc: Any, *, multilabel: bool) -> LossFn:
    """:func:`training_loss` with the weights of ``tc`` (a TrainConfig): what training and the
    compression fine-tunes optimise."""
    return training_loss(multilabel=multilabel, alpha=tc.alpha, beta=tc.beta,
                         consistency=tc.consistency, temperature=tc.temperature,
                         label_smoothing=tc.label_smoothing)


def drop_modalities(
    present: dict[str, Tensor], probs: dict[str, float], generator: torch.Generator
) -> dict[str, Tensor]:
    """Modality dropout: mark each present modality absent with its probability, per row.

    A row never loses all of the modalities it had: when every one was dropped, one of them,
    chosen uniformly, is kept. Rows that had none stay empty. ``generator`` is a CPU generator
    (so the draws are the same on every device); masks keep their device. Returns new masks.
    """
    if not any(p > 0 for p in probs.values()):
        return present
    modalities = sorted(present)
    original = torch.stack([present[m].cpu() for m in modalities], dim=1)  # (batch, modalities)
    keep = original.clone()
    for col, modality in enumerate(modalities):
        p = float(probs.get(modality, 0.0))
        if p <= 0:
            continue
        dropped = torch.rand(original.shape[0], generator=generator) < p
        keep[:, col] &= ~dropped
    emptied = original.any(dim=1) & ~keep.any(dim=1)
    if bool(emptied.any()):
        # random score per (row, modality), -1 for modalities the row did not have
        scores = torch.rand(original.shape, generator=generator).masked_fill(~original, -1.0)
        chosen = scores.argmax(dim=1)
        rows = emptied.nonzero(as_tuple=True)[0]
        keep[rows, chosen[rows]] = True
    return {m: keep[:, col].to(present[m].device) for col, m in enumerate(modalities)}


def _pairs(tensors: dict[str, Tensor]) -> list[tuple[str, str]]:
    return list(combinations(sorted(tensors), 2))


def _mean_or_zero(terms: list[Tensor], attached_to: dict[str, Tensor]) -> Tensor:
    if terms:
        return torch.stack(terms).mean()
    # An exact zero still attached to the graph, so backward reaches every projection/encoder;
    # summing an empty slice (not multiplying by 0) keeps a NaN in an absent row out of it.
    zero = [t[:0].float().sum() for t in attached_to.values()]
    return torch.stack(zero).sum() if zero else torch.zeros(())
