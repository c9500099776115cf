"""Classification and cross-modal metrics on whole evaluation sets (tensors in, floats out).

Shapes:
    logits    (rows, classes)
    labels    (rows,) int64 class ids, or (rows, classes) float multi-hot
    projected modality -> (rows, proj_dim)
    present   modality -> (rows,) bool

Multi-label predictions are ``logit > 0`` (sigmoid > 0.5); multi-label accuracy is exact match
(every label right), as in scikit-learn. :func:`accuracy` and :func:`predict` are defined with
the evaluation loop (:mod:`mmfurnace.models.predict`, which export and compress use too) and
re-exported here. Per-modality accuracy needs the model, so it lives in
:mod:`mmfurnace.train.evaluate`.
"""

from __future__ import annotations

from itertools import combinations

import torch.nn.functional as F
from torch import Tensor

from mmfurnace.models.predict import accuracy as accuracy
from mmfurnace.models.predict import predicted_labels as predict


def f1_scores(logits: Tensor, labels: Tensor, *, multilabel: bool) -> tuple[float, float]:
    """(micro F1, macro F1).

    Micro F1 pools true/false positives over classes (for single-label it equals accuracy).
    Macro F1 is the unweighted mean of per-class F1 over the classes that occur in the labels
    or the predictions (scikit-learn's ``labels=None`` rule for single-label data); a class
    that occurs nowhere in a small evaluation set does not count as an F1 of 0.
    """
    num_classes = logits.shape[-1]
    pred = predict(logits, multilabel=multilabel)
    if multilabel:
        pred_hot, true_hot = pred.bool(), labels.bool()
    else:
        pred_hot = F.one_hot(pred, num_classes).bool()
        true_hot = F.one_hot(labels.long(), num_classes).bool()
    tp = (pred_hot & true_hot).sum(dim=0).double()
    fp = (pred_hot & ~true_hot).sum(dim=0).double()
    fn = (~pred_hot & true_hot).sum(dim=0).double()
    micro = _f1(tp.sum(), fp.sum(), fn.sum())
    occurs = (tp + fp + fn) > 0
    if not bool(occurs.any()):
        return micro, 0.0
    per_class = 2 * tp / (2 * tp + fp + fn).clamp(min=1)
    return micro, float(per_class[occurs].mean())


def classification_metrics(logits: Tensor, labels: Tensor, *, multilabel: bool) -> dict[str, float]:
    """{"accuracy", "micro_f1", "macro_f1"} for one evaluation set."""
    micro, macro = f1_scores(logits, labels, multilabel=multilabel)
    return {
        "accuracy": accuracy(logits, labels, multilabel=multilabel),
        "micro_f1": micro,
        "macro_f1": macro,
    }


def consistency_score(projected: dict[str, Tensor], present: dict[str, Tensor]) -> float | None:
    """Cross-modal consistency: how much closer paired embeddings are than mismatched ones.

    For each pair of modalities (a, b), over the n >= 2 rows where both are present, with
    cos = cosine similarity in the shared projection space:

        score(a, b) = mean_i cos(a_i, b_i) - mean_i cos(a_i, b_{(i-1) mod n})

    i.e. the mean similarity of the two views of the same example minus that of views of
    different examples (b rolled by one row). The reported score is the mean over pairs, in
    [-2, 2]: 0 means the spaces are unaligned, higher is better. Rolled pairs may share a
    class, so a model that aligns classes but not examples also scores near 0 on a
    class-sorted set; evaluation sets are shuffled or mixed enough for this not to matter.
    None when no pair has two rows.
    """
    scores = []
    for a, b in combinations(sorted(projected), 2):
        both = present[a] & present[b]
        if int(both.sum()) < 2:
            continue
        za = F.normalize(projected[a][both].double(), dim=-1)
        zb = F.normalize(projected[b][both].double(), dim=-1)
        matched = (za * zb).sum(dim=-1).mean()
        mismatched = (za * zb.roll(1, dims=0)).sum(dim=-1).mean()
        scores.append(float(matched - mismatched))
    return sum(scores) / len(scores) if scores else None


def _f1(tp: Tensor, fp: Tensor, fn: Tensor) -> float:
    denom = float(2 * tp + fp + fn)
    return float(2 * tp) / denom if denom > 0 else 0.0
