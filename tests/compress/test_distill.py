"""Distillation: the soft-target loss, the student config, and a student that learns."""

from __future__ import annotations

import pytest
import torch

from mmfurnace.compress import DistillConfig, FinetuneConfig
from mmfurnace.compress.distill import DistillLoss, distill, soft_target_loss, student_config
from mmfurnace.compress.measure import count_params
from mmfurnace.errors import ConfigError
from mmfurnace.models import build_model
from mmfurnace.train.checkpoint import load_model
from tests.compress.tinydata import INFO


def test_soft_target_loss_is_zero_for_the_teacher_itself_and_positive_otherwise():
    logits = torch.randn(6, 4)
    assert float(soft_target_loss(logits, logits, 4.0, multilabel=False)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_target_loss(torch.zeros(6, 4), logits, 4.0, multilabel=False)) > 0
    assert float(soft_target_loss(torch.zeros(6, 4), logits, 2.0, multilabel=True)) > 0


def test_student_config_scales_widths_and_swaps_fusion(trained):
    _, meta = load_model(trained)
    cfg = student_config(meta.config.model, DistillConfig(width=0.5, fusion="late", layers=1))
    assert cfg.fusion == "late"
    assert all(e.dim == 8 and e.layers == 1 for e in cfg.encoders.values())
    assert cfg.encoders["text"].dim % cfg.encoders["text"].heads == 0
    assert cfg.encoders["image"].channels == meta.config.model.encoders["image"].channels // 2
    custom = student_config(meta.config.model, DistillConfig(student={"fusion": "early", "encoders": {"image": {"dim": 4}}}))
    assert custom.fusion == "early"
    assert custom.encoders["image"].dim == 4
    assert custom.encoders["audio"].dim == 16


def test_distillation_loss_decreases_and_student_is_smaller(trained, train_loader):
    teacher, meta = load_model(trained)
    config = DistillConfig(width=0.5, fusion=None, finetune=FinetuneConfig(epochs=4, lr=3e-3))
    torch.manual_seed(0)
    student = build_model(student_config(meta.config.model, config), INFO)
    assert count_params(student) < 0.75 * count_params(teacher)
    history = distill(teacher, student, train_loader, config, multilabel=False)
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.9 * losses[0], losses
    assert not any(p.requires_grad for p in teacher.parameters())  # the teacher never trains


def test_feature_projections_map_student_widths_to_the_teacher(trained):
    teacher, meta = load_model(trained)
    config = DistillConfig(width=0.5, fusion=None)
    student = build_model(student_config(meta.config.model, config), INFO)
    loss = DistillLoss(teacher, student, config, multilabel=False)
    assert set(loss.proj) == {"audio", "image", "text", "fused"}
    assert loss.proj["image"].weight.shape == (16, 8)
    late = build_model(student_config(meta.config.model, DistillConfig(width=0.5, fusion="late")), INFO)
    assert "fused" not in DistillLoss(teacher, late, config, multilabel=False).proj  # late: fused = logits


def test_unimodal_term_trains_every_branch_of_a_late_student(trained, train_loader):
    teacher, meta = load_model(trained)
    config = DistillConfig(width=0.5, fusion="late", unimodal_weight=1.0)
    torch.manual_seed(0)
    student = build_model(student_config(meta.config.model, config), INFO).eval()  # no dropout
    batch = next(iter(train_loader))
    with_term = DistillLoss(teacher, student, config, multilabel=False)
    without = DistillLoss(teacher, student, DistillConfig(width=0.5, fusion="late", unimodal_weight=0.0),
                          multilabel=False)
    without.proj.load_state_dict(with_term.proj.state_dict())  # same feature projections
    out = student(batch.inputs, batch.present, batch.valid)
    expected = with_term.unimodal_loss(out.unimodal_logits, batch)
    by_hand = torch.stack([
        torch.nn.functional.cross_entropy(out.unimodal_logits[m][batch.present[m]], batch.labels[batch.present[m]])
        for m in sorted(out.unimodal_logits)
    ]).mean()
    torch.testing.assert_close(expected, by_hand)
    difference = float(with_term(out, batch, batch.present) - without(out, batch, batch.present))
    torch.testing.assert_close(torch.tensor(difference), expected.detach(), rtol=1e-4, atol=1e-5)
    student.zero_grad()  # the unimodal term alone reaches every modality's encoder
    with_term.unimodal_loss(student(batch.inputs, batch.present, batch.valid).unimodal_logits, batch).backward()
    grads = {m: student.encoders[m].parameters().__next__().grad for m in student.modalities}
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads.values())
    with pytest.raises(ConfigError, match="unimodal_weight"):
        DistillConfig(unimodal_weight=-1.0)
