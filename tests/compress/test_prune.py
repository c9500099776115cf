"""Pruning: unstructured masks made permanent; structured channel pruning that keeps every
encoder's output width in step with its fusion's input layers (exactly: removing channels
that carry zeros changes nothing), shrinks params/MACs as expected, and still exports."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mmfurnace.compress import (
    ChannelConfig,
    FinetuneConfig,
    MagnitudeConfig,
    make_permanent_,
    prune_,
)
from mmfurnace.compress.channels import _Pruner, _shrink_fusion_input
from mmfurnace.compress.finetune import finetune, training_loss
from mmfurnace.compress.measure import count_macs, count_params
from mmfurnace.compress.prune import prunable_weights
from mmfurnace.compress.quantize import export_onnx
from mmfurnace.export.inputs import make_example_batch
from mmfurnace.models import FUSIONS, build_model
from mmfurnace.models.outputs import EncoderOutput
from mmfurnace.models.registry import FUSION_PRUNERS
from mmfurnace.models.surgery import resize_to_, shape_attributes
from tests.compress.tinydata import INFO, tiny_model_config

DIMS = {"audio": 6, "image": 8, "text": 5}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(tiny_model_config("cross_attention", dim=16), INFO).eval()


# --- unstructured ------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_pruning_hits_the_target_and_survives_finetune(model, train_loader, scope):
    summary = prune_(model, MagnitudeConfig(sparsity=0.6, scope=scope))
    assert summary["sparsity"] == pytest.approx(0.6, abs=0.01)
    finetune(model, train_loader, FinetuneConfig(epochs=1, max_steps=2, lr=1e-2), loss_fn=training_loss(multilabel=False))
    make_permanent_(model)
    assert not any(hasattr(m, "weight_mask") or m._forward_pre_hooks for m in model.modules())
    targets = prunable_weights(model)
    per_layer = [float((getattr(m, n) == 0).float().mean()) for m, n in targets]
    total = sum(int((getattr(m, n) == 0).sum()) for m, n in targets) / sum(getattr(m, n).numel() for m, n in targets)
    assert total == pytest.approx(0.6, abs=0.01)  # masks held through the fine-tune
    if scope == "layer":
        # includes attention's out_proj, which MHA reads without calling: its mask must have
        # been re-applied on every step (else its zeros would have grown back, or backward
        # would have failed on a stale graph)
        assert all(s == pytest.approx(0.6, abs=0.02) for s in per_layer)


# --- structured: the fusion-aware bookkeeping, exactly ------------------------------------------


def _features(batch: int = 3, seq: int = 4) -> dict[str, EncoderOutput]:
    g = torch.Generator().manual_seed(1)
    out = {}
    for m, d in DIMS.items():
        s = torch.randn(batch, seq, d, generator=g)
        out[m] = EncoderOutput(s, s.mean(1), torch.ones(batch, seq, dtype=torch.bool))
    return out


@pytest.mark.parametrize("fusion_name", FUSIONS.names())
def test_encoder_output_shrink_is_carried_into_the_fusion_input(fusion_name):
    torch.manual_seed(0)
    fusion = FUSIONS[fusion_name](dims=dict(DIMS), num_classes=3, hidden_dim=8, heads=2, tensor_dim=3, rank=2, dropout=0.0).eval()
    present = {m: torch.tensor([True, False, True]) for m in DIMS}
    keep = torch.tensor([0, 2, 3, 7])  # image keeps 4 of its 8 channels
    feats = _features()
    zeroed = dict(feats)
    mask = torch.zeros(DIMS["image"], dtype=torch.bool)
    mask[keep] = True
    seq = feats["image"].sequence.masked_fill(~mask, 0.0)
    zeroed["image"] = EncoderOutput(seq, seq.mean(1), feats["image"].valid)
    with torch.no_grad():
        before = fusion(zeroed, present).fused
        _shrink_fusion_input(fusion, "image", keep)
        if hasattr(fusion, "dims"):
            fusion.dims["image"] = len(keep)
        sliced = dict(feats)
        s = feats["image"].sequence[..., keep]
        sliced["image"] = EncoderOutput(s, s.mean(1), feats["image"].valid)
        after = fusion(sliced, present).fused
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


def test_early_fusion_pruning_is_exact_when_removed_channels_are_dead():
    torch.manual_seed(0)
    fusion = FUSIONS["early"](dims=dict(DIMS), num_classes=3, hidden_dim=8, dropout=0.0).eval()
    head = nn.Linear(8, 3)
    # kill half of every prunable width so the pruner must remove exactly those channels
    with torch.no_grad():
        for m in fusion.modalities:
            fusion.proj[m].weight[1::2] = 0
            fusion.proj[m].bias[1::2] = 0
        fusion.mlp.fc1.weight[1::2] = 0
        fusion.mlp.fc1.bias[1::2] = 0
        fusion.mlp.fc2.weight[1::2] = 0
        fusion.mlp.fc2.bias[1::2] = 0
        before = head(fusion(_features(), {}).fused)
    keep = FUSION_PRUNERS["EarlyFusion"].prune(fusion, _Pruner(ChannelConfig(sparsity=0.5), 0.5))
    head.weight = nn.Parameter(head.weight.detach()[:, keep])
    head.in_features = len(keep)
    assert fusion.mlp.fc1.in_features == 4 * 3 + 3  # 3 slots of 4 + the presence indicator
    with torch.no_grad():
        after = head(fusion(_features(), {}).fused)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


# --- structured: whole models ---------------------------------------------------------------------


@pytest.mark.parametrize("fusion_name", ["cross_attention", "early"])
def test_channel_pruning_shrinks_runs_and_exports(fusion_name, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_model_config(fusion_name, dim=16), INFO).eval()
    example = make_example_batch(INFO, 4, seed=0)
    params, macs = count_params(model), count_macs(model, example)
    summary = prune_(model, ChannelConfig(sparsity=0.5), example=example)
    widths = summary["widths"]
    assert all(after == before // 2 for before, after in widths.values()), widths
    for m, encoder in model.encoders.items():
        assert model.projections[m].in_features == encoder.out_dim == 8
    # widths halve: quadratic layers keep ~1/4, the vocab embedding and first convs ~1/2
    assert 0.2 < count_params(model) / params < 0.45
    assert 0.15 < count_macs(model, example) / macs < 0.4
    batch = make_example_batch(INFO, 5, seed=1)
    batch.present["text"][1] = False  # a missing modality still works
    out = model.forward_batch(batch)
    assert out.logits.shape == (5, INFO.num_classes)
    assert out.logits.isfinite().all()
    # ONNX export of the pruned model, checked against eager by the exporter itself
    export_onnx(model, INFO, tmp_path / "pruned")
    assert (tmp_path / "pruned" / "model.onnx").is_file()


def test_pruned_model_rebuilds_from_config_plus_shapes():
    torch.manual_seed(0)
    model = build_model(tiny_model_config("cross_attention", dim=16), INFO).eval()
    prune_(model, ChannelConfig(sparsity=0.5, round_to=2), example=make_example_batch(INFO, 4, seed=0))
    fresh = build_model(tiny_model_config("cross_attention", dim=16), INFO)
    resize_to_(fresh, model.state_dict(), shape_attributes(model))
    fresh.load_state_dict(model.state_dict(), strict=True)
    batch = make_example_batch(INFO, 3, seed=2)
    torch.testing.assert_close(fresh.eval().forward_batch(batch).logits, model.forward_batch(batch).logits)


def test_pruned_and_half_checkpoints_load_as_saved(tmp_path):
    """load_model reads compression.json: a pruned checkpoint comes back pruned, a BF16 one in BF16,
    each giving the outputs of the model that was saved."""
    from mmfurnace.config import RunConfig
    from mmfurnace.train.checkpoint import load_model, save_checkpoint

    torch.manual_seed(0)
    cfg = RunConfig(model=tiny_model_config("cross_attention", dim=16))
    model = build_model(cfg.model, INFO).eval()
    prune_(model, ChannelConfig(sparsity=0.5, round_to=2), example=make_example_batch(INFO, 4, seed=0))
    half = build_model(cfg.model, INFO).eval().to(torch.bfloat16)
    batch = make_example_batch(INFO, 3, seed=2)
    for name, saved, compression in [
        ("pruned", model, {"type": "ChannelConfig", "shape_attributes": shape_attributes(model)}),
        ("bf16", half, {"type": "HalfConfig", "dtype": "bfloat16"}),
    ]:
        save_checkpoint(tmp_path / name, model=saved, optimizer=None, scheduler=None, scaler=None, epoch=1,
                        step=1, rng_states=None, config=cfg.model_dump(mode="json"), info=INFO, metrics={},
                        compression=compression)
        loaded, meta = load_model(tmp_path / name)
        assert meta.compression["type"] == compression["type"]
        assert count_params(loaded) == count_params(saved)
        assert next(loaded.parameters()).dtype == next(saved.parameters()).dtype
        dtype = next(saved.parameters()).dtype
        inputs = {m: x.to(dtype) if x.is_floating_point() else x for m, x in batch.inputs.items()}
        with torch.no_grad():
            torch.testing.assert_close(loaded(inputs, batch.present, batch.valid).logits,
                                       saved(inputs, batch.present, batch.valid).logits, atol=0, rtol=0)


def test_iterative_steps_reach_the_same_width(model):
    example = make_example_batch(INFO, 4, seed=0)
    one = copy.deepcopy(model)
    prune_(one, ChannelConfig(sparsity=0.5), example=example)
    for ratio in (0.25, 1 - 0.5 / 0.75):  # 16 -> 12 -> 8
        prune_(model, ChannelConfig(sparsity=0.5), example=example, ratio=ratio)
    assert count_params(model) == count_params(one)


def test_ignore_leaves_a_part_alone(model):
    before = copy.deepcopy(model.encoders["image"])
    prune_(model, ChannelConfig(sparsity=0.5, ignore=("encoders.image",)), example=make_example_batch(INFO, 4, seed=0))
    assert count_params(model.encoders["image"]) == count_params(before)
    assert model.encoders["text"].out_dim == 8


def test_channel_pruning_of_late_fusion_with_linear_heads():
    # linear heads have no hidden width: pruning narrows the encoders and their inputs only
    torch.manual_seed(0)
    cfg = tiny_model_config("late", dim=16).model_copy(update={"late_head": "linear"})
    model = build_model(cfg, INFO).eval()
    summary = prune_(model, ChannelConfig(sparsity=0.5), example=make_example_batch(INFO, 4, seed=0))
    widths = summary["widths"]
    assert all(widths[f"encoders.{m}"] == (16, 8) for m in model.encoders), widths
    for m, head in model.fusion.heads.items():
        assert head.fc1.in_features == model.encoders[m].out_dim == 8
        assert head.fc1.out_features == INFO.num_classes
    out = model.forward_batch(make_example_batch(INFO, 3, seed=1))
    assert out.logits.shape == (3, INFO.num_classes)
    assert out.logits.isfinite().all()
