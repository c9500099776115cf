from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfurnace.data.batch import Sample, collate_samples
from mmfurnace.errors import ConfigError, InputError
from mmfurnace.models import (
    FUSIONS,
    ClassifierOutput,
    MultimodalClassifier,
    build_model,
    describe_model,
)
from mmfurnace.models.builders import cross_attention_small, late_fusion_small
from tests.models.conftest import MODALITY_SETS, make_inputs, tiny_config

TOL = dict(rtol=1e-5, atol=1e-5)


def absent_rows(batch: int) -> dict[str, torch.Tensor]:
    return {
        "audio": torch.tensor([True, False, True, True, False, True][:batch]),
        "image": torch.tensor([True, True, False, True, False, False][:batch]),
        "text": torch.tensor([True, True, True, False, False, True][:batch]),
    }


@pytest.mark.parametrize("modalities", MODALITY_SETS, ids="+".join)
@pytest.mark.parametrize("name", FUSIONS.names())
def test_classifier_output_shapes(tiny_info, name: str, modalities: tuple[str, ...]) -> None:
    model = build_model(tiny_config(name), tiny_info, modalities).eval()
    inputs, valid = make_inputs()
    present = absent_rows(6)
    out = model({m: inputs[m] for m in modalities}, present, valid)
    assert isinstance(out, ClassifierOutput)
    assert out.logits.shape == (6, 4)
    assert sorted(out.embeddings) == sorted(out.projected) == list(modalities)
    assert all(e.shape == (6, 16) for e in out.embeddings.values())
    assert all(p.shape == (6, 8) for p in out.projected.values())
    assert out.fused.shape == (6, model.fusion.out_dim)
    assert torch.isfinite(out.logits).all()
    assert (out.unimodal_logits is not None) == (name == "late")


@pytest.mark.parametrize("name", FUSIONS.names())
def test_absent_inputs_change_nothing_and_get_zero_gradient(tiny_info, name: str) -> None:
    model = build_model(tiny_config(name), tiny_info).eval()
    inputs, valid = make_inputs()
    present = absent_rows(6)
    image = inputs["image"].clone().requires_grad_(True)
    audio = inputs["audio"].clone().requires_grad_(True)
    out = model(dict(inputs, image=image, audio=audio), present, valid)
    (out.logits.square().sum() + sum(p.sum() for p in out.projected.values())).backward()
    for m, x in (("image", image), ("audio", audio)):
        torch.testing.assert_close(
            x.grad[~present[m]], torch.zeros_like(x.grad[~present[m]]), rtol=0, atol=0
        )
        assert x.grad[present[m]].abs().sum() > 0

    garbage = {m: x.clone() for m, x in inputs.items()}
    garbage["image"][~present["image"]] = 50 * torch.randn_like(garbage["image"][~present["image"]])
    garbage["audio"][~present["audio"]] = 50 * torch.randn_like(garbage["audio"][~present["audio"]])
    garbage["text"][~present["text"]] = torch.randint(
        1, 50, garbage["text"][~present["text"]].shape
    )
    noisy_valid = {
        m: p | ~present[m][:, None] for m, p in valid.items()
    }  # absent rows claim real tokens
    with torch.no_grad():
        again = model(garbage, present, noisy_valid)
    torch.testing.assert_close(again.logits, out.logits.detach(), **TOL)
    for m in again.embeddings:  # embeddings of absent rows are computed from zeros, not content
        torch.testing.assert_close(again.embeddings[m], out.embeddings[m].detach(), **TOL)


def test_encode_then_fuse_equals_forward(tiny_info) -> None:
    model = build_model(tiny_config("cross_attention"), tiny_info).eval()
    inputs, valid = make_inputs()
    present = absent_rows(6)
    with torch.no_grad():
        whole = model(inputs, present, valid)
        features = {
            m: model.encode(m, inputs[m], valid.get(m), present[m]) for m in model.modalities
        }
        split = model.fuse(features, present)
    torch.testing.assert_close(split, whole.logits, rtol=0, atol=0)


def test_forward_batch_on_collated_samples_with_missing_modality(tiny_info) -> None:
    samples = [
        Sample({"image": torch.randn(1, 12, 12), "audio": torch.randn(7, 8)}, torch.tensor(1)),
        Sample({"text": torch.tensor([3, 4, 5])}, torch.tensor(2)),
        Sample({"image": torch.randn(1, 12, 12)}, torch.tensor(0)),
    ]
    batch = collate_samples(samples, tiny_info.modalities)
    model = late_fusion_small(tiny_info).eval()
    out = model.forward_batch(batch)
    assert out.logits.shape == (3, 4)
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(out.weights, expected, rtol=1e-6, atol=1e-7)
    # no sample has audio+text -> drop text entirely: still fine
    only_image = collate_samples(samples[2:], tiny_info.modalities)
    assert "text" not in only_image.inputs
    assert cross_attention_small(tiny_info).eval().forward_batch(only_image).logits.shape == (1, 4)


@pytest.mark.parametrize("name", FUSIONS.names())
def test_twenty_steps_overfit_a_tiny_batch(tiny_info, name: str) -> None:
    model = build_model(tiny_config(name), tiny_info).train()
    inputs, valid = make_inputs(batch=8)
    present = {
        "audio": torch.tensor([1, 1, 1, 0, 1, 1, 0, 1], dtype=torch.bool),
        "image": torch.tensor([1, 0, 1, 1, 1, 0, 1, 1], dtype=torch.bool),
        "text": torch.tensor([1, 1, 0, 1, 1, 1, 1, 0], dtype=torch.bool),
    }
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(inputs, present, valid).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_grad_checkpointing_on_the_whole_model_keeps_gradients(tiny_info) -> None:
    model = build_model(tiny_config("cross_attention"), tiny_info).train()
    inputs, valid = make_inputs()
    present = absent_rows(6)

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        model(inputs, present, valid).logits.sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    model.set_grad_checkpointing(True)
    assert model.fusion.grad_checkpointing
    assert all(e.grad_checkpointing for e in model.encoders.values())
    for a, b in zip(plain, grads(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_describe_model_counts_every_parameter(tiny_info) -> None:
    model = build_model(tiny_config("gated"), tiny_info)
    info = describe_model(model)
    parts = sum(info["encoders"].values()) + info["projections"] + info["fusion"] + info["head"]
    assert info["total"] == parts == sum(p.numel() for p in model.parameters())
    assert info["fusion_type"] == "GatedFusion"
    assert describe_model(build_model(tiny_config("late"), tiny_info))["head"] == 0


def test_bad_inputs_and_wiring_are_named(tiny_info) -> None:
    model = build_model(tiny_config("early"), tiny_info, ["image"])
    with pytest.raises(InputError, match="'audio'|\\['audio'\\]"):
        model({"audio": torch.randn(2, 5, 8)}, {})
    with pytest.raises(InputError, match="no modality"):
        model({}, {})
    with pytest.raises(ConfigError, match="not in the dataset"):
        build_model(tiny_config("early"), tiny_info, ["video"])
    with pytest.raises(ConfigError, match="do not match"):
        MultimodalClassifier(
            encoders=model.encoders,
            fusion=model.fusion,
            head=model.head,
            modalities=["image", "text"],
        )


def test_multilabel_flag_comes_from_dataset(tiny_info) -> None:
    from dataclasses import replace

    assert build_model(tiny_config("late"), replace(tiny_info, multilabel=True)).multilabel
    assert not build_model(tiny_config("late"), tiny_info).multilabel


@pytest.mark.parametrize("name", ["early", "late", "cross_attention", "low_rank_tensor"])
def test_feature_norm_puts_every_modality_on_one_scale(tiny_info, name: str) -> None:
    cfg = tiny_config(name)
    cfg.feature_norm = True
    model = build_model(cfg, tiny_info).eval()
    assert sorted(model.feature_norms) == sorted(model.modalities)
    inputs, valid = make_inputs()
    present = absent_rows(6)
    with torch.no_grad():
        out = model(inputs, present, valid)
        # an encoder whose outputs are 40x larger (as speech_embedding's are beside
        # EfficientNet's) gives the same logits: the fusion sees normalised features
        audio = model.encoders["audio"]
        handle = audio.register_forward_hook(
            lambda _m, _i, o: type(o)(o.sequence * 40.0, o.pooled * 40.0, o.valid))
        loud = model(inputs, present, valid)
        handle.remove()
    torch.testing.assert_close(loud.logits, out.logits, rtol=1e-4, atol=1e-4)
    rows = present["audio"]
    pooled = out.embeddings["audio"][rows]
    torch.testing.assert_close(pooled.mean(-1), torch.zeros(int(rows.sum())), rtol=0, atol=1e-5)
    plain = build_model(tiny_config(name), tiny_info)
    assert plain.feature_norms is None
    with pytest.raises(RuntimeError, match="feature_norms"):
        plain.load_state_dict(model.state_dict())  # another architecture: a clear mismatch
