"""FLOP counting per model part, against hand computation, and the utilization helpers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmfurnace.bench.flops import count_flops, flops_summary, measure_peak_flops, utilization
from mmfurnace.bench.profile import profile_inference
from mmfurnace.data.batch import Batch
from mmfurnace.models.classifier import MultimodalClassifier
from mmfurnace.models.outputs import EncoderOutput, FusionOutput

B, C, PROJ, HIDDEN = 5, 3, 4, 7
DIMS = {"image": (12, 8), "audio": (6, 10)}  # modality -> (input features, encoder width)


class LinearEncoder(nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear, self.out_dim = nn.Linear(n_in, n_out), n_out

    def forward(self, x, valid=None):
        y = self.linear(x)
        return EncoderOutput(y.unsqueeze(1), y, None)


class ConcatLinearFusion(nn.Module):
    def __init__(self, dims: dict[str, int], hidden: int) -> None:
        super().__init__()
        self.modalities = sorted(dims)
        self.linear, self.out_dim = nn.Linear(sum(dims.values()), hidden), hidden

    def forward(self, features, present):
        return FusionOutput(self.linear(torch.cat([features[m].pooled for m in self.modalities], dim=-1)), None, None)


def _toy() -> MultimodalClassifier:
    return MultimodalClassifier(
        encoders=nn.ModuleDict({m: LinearEncoder(i, o) for m, (i, o) in DIMS.items()}),
        fusion=ConcatLinearFusion({m: o for m, (_, o) in DIMS.items()}, HIDDEN),
        head=nn.Linear(HIDDEN, C),
        modalities=sorted(DIMS),
        proj_dim=PROJ,
    )


def _batch() -> Batch:
    return Batch(
        inputs={m: torch.randn(B, i) for m, (i, _) in DIMS.items()},
        valid={},
        present={m: torch.ones(B, dtype=torch.bool) for m in DIMS},
        labels=torch.zeros(B, dtype=torch.long),
    )


def test_linear_toy_matches_hand_computation():
    got = count_flops(_toy(), _batch())
    # A Linear(n_in, n_out) over B rows is B * n_in * n_out multiply-adds = 2x that in FLOPs.
    want = {
        "encoder.audio": 2 * B * 6 * 10,
        "encoder.image": 2 * B * 12 * 8,
        "fusion": 2 * B * (8 + 10) * HIDDEN,
        "head": 2 * B * HIDDEN * C,
        "projections": 2 * B * (8 + 10) * PROJ,
    }
    want["total"] = sum(v for k, v in want.items() if k != "projections")
    assert got["flops"] == want
    assert got["macs"] == {k: v // 2 for k, v in want.items()}
    assert got["batch_size"] == B
    assert got["flops_per_sample"] == want["total"] / B


def test_total_equals_a_plain_forward_minus_projections():
    from torch.utils.flop_counter import FlopCounterMode

    model, batch = _toy(), _batch()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.forward_batch(batch)
    got = count_flops(model, batch)["flops"]
    assert got["total"] + got["projections"] == counter.get_total_flops()


def test_any_module_counts_its_total():
    got = count_flops(nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2)), torch.randn(4, 5))
    assert got["flops"] == {"total": 2 * 4 * (5 * 3 + 3 * 2)}
    assert got["batch_size"] == 4


def test_profile_inference_counts_the_same_flops_per_step():
    model, batch = _toy(), _batch()
    report = profile_inference(model, [batch] * 3, steps=3, warmup=0, profile_steps=0, peak_flops=1e12)
    assert report.flops["flops_per_step"] == count_flops(model, batch)["flops"]["total"]


def test_peak_and_utilization():
    peak = measure_peak_flops("cpu", size=64, iters=3, warmup=1)
    assert math.isfinite(peak)
    assert peak > 0
    assert utilization(25.0, 100.0) == 0.25
    assert utilization(25.0, 0.0) == 0.0
    s = flops_summary(1e6, 0.5, 4e6)
    assert s["achieved_flops_per_s"] == 2e6
    assert s["utilization"] == pytest.approx(0.5)
    assert flops_summary(1e6, 0.5, None)["utilization"] is None


def test_attention_in_eval_mode_is_counted_by_hand():
    # Eval + no grad is where torch takes its fused attention fast path, which the counter
    # cannot see into; count_flops must still count every matmul.
    batch, seq, dim = 2, 5, 8
    mha = nn.MultiheadAttention(dim, num_heads=2, batch_first=True).eval()
    x = torch.randn(batch, seq, dim)
    got = count_flops(mha, (x, x, x))["flops"]["total"]
    projections = 4 * (2 * batch * seq * dim * dim)  # q, k, v in-projections and the out-projection
    attention = 2 * (2 * batch * seq * seq * dim)  # q @ k^T and weights @ v over all heads
    assert got == projections + attention
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def test_transformer_model_counts_the_same_in_eval_and_train_mode():
    from mmfurnace.data.loader import make_loader
    from mmfurnace.models import build_model
    from tests.train.tinydata import INFO, TinyDataset, tiny_model_config

    model = build_model(tiny_model_config("cross_attention"), INFO)
    batch = next(iter(make_loader(TinyDataset(8), modalities=INFO.modalities, batch_size=8, shuffle=False)))
    train = count_flops(model.train(), batch)["flops"]
    evaluated = count_flops(model.eval(), batch)["flops"]
    assert evaluated == train
    assert evaluated["encoder.text"] > 0
