"""Knowledge distillation: a large teacher's logits and features train a small student.

Loss per batch (rows where a modality is absent add nothing to that modality's term)::

    (1 - alpha) * task(student, labels)
    + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))      (sigmoid/BCE for multi-label)
    + feature_weight * mean over features of MSE(proj_f(student_f), teacher_f)
    + unimodal_weight * mean over modalities of task(student's head for m, labels)   (late students)

Features are each modality's pooled encoder embedding and the fused vector; ``proj_f`` is a
learned linear map from the student's width to the teacher's (identity when they match).
The teacher runs in eval mode under no_grad. The projections are trained with the student
and thrown away after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfurnace.compress.config import DistillConfig
from mmfurnace.compress.finetune import finetune
from mmfurnace.data.batch import Batch
from mmfurnace.train.losses import task_loss


def student_config(teacher_cfg: Any, config: DistillConfig) -> Any:
    """The student's ModelConfig: ``config.student`` laid over the teacher's model section, or
    the teacher's with every width (encoder dims, hidden/tensor/proj dims) scaled by
    ``config.width`` (head counts kept; widths stay divisible by them), the fusion replaced by
    ``config.fusion`` and the encoder depth by ``config.layers`` when set."""
    from mmfurnace.models.config import ModelConfig
    from mmfurnace.typed_config import parse

    raw = teacher_cfg.model_dump(mode="json")
    if config.student is not None:
        return parse(ModelConfig, _merge(raw, config.student), source="DistillConfig.student")

    def scale(dim: int, heads: int = 1) -> int:
        return max(heads, int(round(dim * config.width / heads)) * heads)

    for enc in raw["encoders"].values():
        takes = _settings_of(enc)
        if "dim" in takes:
            enc["dim"] = scale(enc["dim"], enc.get("heads", 1) if "heads" in takes else 1)
        if "channels" in takes:  # conv width, where the encoder has one
            enc["channels"] = scale(enc["channels"])
        if config.layers is not None and "layers" in takes:
            enc["layers"] = config.layers
    if config.fusion is not None:
        raw["fusion"] = config.fusion
    heads = raw["heads"] if raw["fusion"] == "cross_attention" else 1
    raw["hidden_dim"] = scale(raw["hidden_dim"], heads)
    raw["tensor_dim"] = scale(raw["tensor_dim"])
    raw["proj_dim"] = scale(raw["proj_dim"])
    return parse(ModelConfig, raw, source="DistillConfig(width)")


def _settings_of(encoder: dict[str, Any]) -> set[str]:
    """The settings an encoder (a dumped EncoderConfig) takes."""
    from mmfurnace.models.config import EncoderConfig, settings_taken
    from mmfurnace.models.registry import ENCODERS

    offered = EncoderConfig.model_validate(encoder).settings()
    taken = settings_taken(ENCODERS[encoder["name"]], offered)
    return set(offered) if taken is None else taken


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


class DistillLoss(nn.Module):
    """The loss above, holding the feature projections (student width -> teacher width)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, config: DistillConfig, *, multilabel: bool) -> None:
        super().__init__()
        self.teacher = teacher
        self.config = config
        self.multilabel = multilabel
        widths = {m: (student.encoders[m].out_dim, teacher.encoders[m].out_dim)
                  for m in student.modalities if m in teacher.encoders}
        # a late-fusion student's fused vector is its logits: matched by the KL term already
        self.match_fused = not getattr(student.fusion, "produces_logits", False)
        if self.match_fused:
            widths["fused"] = (student.fusion.out_dim, teacher.fusion.out_dim)
        self.proj = nn.ModuleDict(
            {k: nn.Identity() if s == t else nn.Linear(s, t, bias=False) for k, (s, t) in widths.items()}
        )

    def forward(self, out: Any, batch: Batch, present: dict[str, Tensor]) -> Tensor:
        """The loss of the student's output ``out`` on ``batch`` (``present``: the masks the
        student saw); the teacher runs on the batch itself. A ``loss_fn`` for train_step."""
        with torch.no_grad():
            self.teacher.eval()
            teacher_out = self.teacher(batch.inputs, batch.present, batch.valid)
        cfg = self.config
        loss = (1 - cfg.alpha) * task_loss(out.logits, batch.labels, multilabel=self.multilabel)
        if cfg.alpha > 0:
            loss = loss + cfg.alpha * soft_target_loss(out.logits, teacher_out.logits, cfg.temperature,
                                                       multilabel=self.multilabel)
        if cfg.feature_weight > 0:
            loss = loss + cfg.feature_weight * self.feature_loss(out, teacher_out, present)
        if cfg.unimodal_weight > 0 and out.unimodal_logits:
            loss = loss + cfg.unimodal_weight * self.unimodal_loss(out.unimodal_logits, batch)
        return loss

    def unimodal_loss(self, logits: dict[str, Tensor], batch: Batch) -> Tensor:
        """Mean task loss of each per-modality head on the rows where its modality is present.
        Trained only through the fused logits, a small student's branches race: the easiest
        modality fits first and the others stop getting gradient (the same thing that made
        joint training from scratch lose 10-30 points in the fusion table)."""
        terms = []
        for m, lg in logits.items():
            rows = batch.present[m].to(torch.bool)
            if bool(rows.any()):
                terms.append(task_loss(lg[rows], batch.labels[rows], multilabel=self.multilabel))
        return torch.stack(terms).mean() if terms else next(iter(logits.values())).sum() * 0.0

    def feature_loss(self, out: Any, teacher_out: Any, present: dict[str, Tensor]) -> Tensor:
        terms = []
        if self.match_fused:
            terms.append(F.mse_loss(self.proj["fused"](out.fused).float(), teacher_out.fused.float()))
        for m, emb in out.embeddings.items():
            if m not in teacher_out.embeddings or m not in self.proj:
                continue
            rows = present[m].to(torch.bool)
            if not bool(rows.any()):
                continue
            terms.append(F.mse_loss(self.proj[m](emb[rows]).float(), teacher_out.embeddings[m][rows].float()))
        return torch.stack(terms).mean() if terms else out.logits.sum() * 0.0


def soft_target_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float, *, multilabel: bool) -> Tensor:
    """T^2-scaled KL(teacher_T || student_T) (Hinton et al.); per-label BCE on sigmoid(teacher/T)
    for multi-label."""
    t = temperature
    s, te = student_logits.float() / t, teacher_logits.float() / t
    if multilabel:
        return F.binary_cross_entropy_with_logits(s, torch.sigmoid(te)) * t * t
    return F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(te, dim=-1), log_target=True,
                    reduction="batchmean") * t * t


def distill(
    teacher: nn.Module,
    student: nn.Module,
    loader: Iterable[Batch],
    config: DistillConfig,
    *,
    multilabel: bool,
    device: torch.device | str = "cpu",
    select_on: Callable[[nn.Module], float] | None = None,
) -> list[dict[str, Any]]:
    """Train ``student`` against ``teacher`` for ``config.finetune`` (epochs, lr); with
    ``select_on`` the student keeps its best epoch by that score (see :func:`finetune`). Returns
    the per-epoch history ({"epoch", "loss", "steps"}); the student is left in eval mode."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    criterion = DistillLoss(teacher, student, config, multilabel=multilabel).to(device)
    params = list(student.parameters()) + list(criterion.proj.parameters())
    return finetune(student, loader, config.finetune, loss_fn=criterion, device=device, params=params,
                    select_on=select_on)
