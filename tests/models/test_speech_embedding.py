"""The "speech_embedding" encoder: Google's pretrained CNN rebuilt in PyTorch, checked against
the ONNX original that openWakeWord 0.4.0 ships (max abs diff on real speech), on padded
batches, through backward, and through the project's ONNX export."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import Tensor

from mmfurnace.data.info import DatasetInfo
from mmfurnace.data.speech_mel import speech_mel
from mmfurnace.errors import ConfigError, InputError, MissingDependencyError
from mmfurnace.models import ENCODERS, build_model
from mmfurnace.models.config import EncoderConfig, ModelConfig
from mmfurnace.models.encoders.speech_embedding import (
    SpeechEmbeddingEncoder,
    openwakeword_models_dir,
    pretrained_speech_embedding,
)
from mmfurnace.models.layers import masked_mean
from tests.speech_reference import fsdd_clips, onnx_embeddings

# Parity bar: max |torch - ONNX| relative to the largest |embedding| (values reach ~70).
# Measured 1.0e-6 (7.2e-5 absolute) on these clips: float32 rounding in another order.
REL_TOL = 1e-5


@pytest.fixture(scope="module")
def encoder() -> SpeechEmbeddingEncoder:
    return pretrained_speech_embedding().eval()


@pytest.fixture(scope="module")
def clips() -> list[Tensor]:
    clips = fsdd_clips()
    return [*clips, torch.cat(clips[:4])]  # 0.15 s (padded to one window) ... 2.3 s, 2.1 s


def pad_batch(rows: list[Tensor], fill: float = float("nan")) -> tuple[Tensor, Tensor]:
    """(frames, 32) rows -> (batch, longest, 32) with ``fill`` past each row, and its mask."""
    longest = max(r.shape[0] for r in rows)
    x = torch.full((len(rows), longest, 32), fill)
    mask = torch.zeros(len(rows), longest, dtype=torch.bool)
    for i, r in enumerate(rows):
        x[i, : len(r)] = r
        mask[i, : len(r)] = True
    return x, mask


def max_rel_diff(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_matches_the_onnx_original_on_real_speech(encoder, clips) -> None:
    windows_seen = set()
    for clip in clips:
        reference = onnx_embeddings(clip)
        with torch.no_grad():
            out = encoder(speech_mel(clip[None]))
        assert out.sequence.shape == (1, len(reference), 96)
        assert max_rel_diff(out.sequence[0].numpy(), reference) <= REL_TOL
        assert bool(out.valid.all())
        windows_seen.add(len(reference))
    assert min(windows_seen) == 1
    assert max(windows_seen) >= 19


def test_padded_batch_gives_each_clip_its_own_embeddings(encoder, clips) -> None:
    feats = [speech_mel(c[None])[0] for c in clips[:4]]
    short = clips[0]  # 0.15 s; as frames without speech_mel's padding to one window
    feats.append(speech_mel(short[None])[0][: (short.numel() + 159) // 160])
    alone = []
    with torch.no_grad():
        for f in feats:
            alone.append(encoder(f[None]))
        x, mask = pad_batch([*feats, feats[0][:0]])  # the last row has no frames: absent
        out = encoder(x, mask)
    assert out.sequence.shape[:2] == out.valid.shape == (6, alone[3].sequence.shape[1])
    assert not torch.isnan(out.sequence).any()
    assert not torch.isnan(out.pooled).any()
    for i, single in enumerate(alone):
        n = single.sequence.shape[1]
        assert out.valid[i, :n].all()
        assert not out.valid[i, n:].any()
        torch.testing.assert_close(out.sequence[i, :n], single.sequence[0], rtol=0, atol=2e-4)
        torch.testing.assert_close(out.pooled[i], single.pooled[0], rtol=0, atol=2e-4)
        assert not out.sequence[i, n:].any()
    # The short row without padding equals the clip padded with silence by speech_mel.
    torch.testing.assert_close(alone[4].sequence, alone[0].sequence, rtol=0, atol=1e-4)
    # Pooled is the mean over real windows; a row with no real frame gives zeros.
    torch.testing.assert_close(out.pooled, masked_mean(out.sequence, out.valid))
    assert not out.valid[5].any()
    assert not out.pooled[5].any()


def test_padding_content_cannot_change_real_outputs(encoder, clips) -> None:
    feats = [speech_mel(c[None])[0] for c in (clips[3], clips[1])]
    with torch.no_grad():
        a = encoder(*pad_batch(feats, fill=0.0))
        b = encoder(*pad_batch(feats, fill=1e6))
    torch.testing.assert_close(a.sequence, b.sequence, rtol=0, atol=0)
    torch.testing.assert_close(a.pooled, b.pooled, rtol=0, atol=0)


@pytest.mark.parametrize(("frames", "windows"), [(13, 1), (76, 1), (83, 1), (84, 2), (197, 16)])
def test_output_shapes(encoder, frames: int, windows: int) -> None:
    with torch.no_grad():
        out = encoder(torch.randn(3, frames, 32) + 6)
    assert encoder.out_dim == 96
    assert out.sequence.shape == (3, windows, 96)
    assert out.pooled.shape == (3, 96)
    assert out.valid.shape == (3, windows)
    assert bool(out.valid.all())


def test_gradients_reach_every_weight_when_unfrozen(clips) -> None:
    encoder = pretrained_speech_embedding().train()
    x, mask = pad_batch([speech_mel(c[None])[0] for c in clips[2:5]], fill=float("nan"))
    loss = encoder(x, mask).pooled.square().mean()
    loss.backward()
    grads = {n: p.grad for n, p in encoder.named_parameters()}
    assert len(grads) == 40  # 20 conv weights, 18 biases, the stem norm's scale and shift
    for name, grad in grads.items():
        assert grad is not None, name
        assert torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name
    # Gradient checkpointing recomputes the same numbers.
    again = pretrained_speech_embedding().train()
    again.set_grad_checkpointing(True)
    again(x, mask).pooled.square().mean().backward()
    for name, p in again.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6)


def test_a_training_step_moves_the_weights(clips) -> None:
    encoder = pretrained_speech_embedding().train()
    head = torch.nn.Linear(96, 2)
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-4)
    x, mask = pad_batch([speech_mel(c[None])[0] for c in clips[:4]])
    labels = torch.tensor([0, 1, 0, 1])
    before = encoder.stem[0].weight.detach().clone()
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(encoder(x, mask).pooled), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert not torch.equal(before, encoder.stem[0].weight)
    assert losses[-1] < losses[0]


def audio_info() -> DatasetInfo:
    return DatasetInfo(
        modalities=("audio",),
        num_classes=3,
        multilabel=False,
        class_names=("a", "b", "c"),
        input_shapes={"audio": (None, 32)},
        input_dtypes={"audio": "float32"},
    )


def test_builds_from_config_and_exports_to_onnx(tmp_path, clips) -> None:
    ort = pytest.importorskip("onnxruntime")
    from mmfurnace.export.exporter import export_model

    cfg = ModelConfig(encoders={"audio": EncoderConfig(name="speech_embedding")}, fusion="late")
    model = build_model(cfg, audio_info()).eval()
    assert model.encoders["audio"].out_dim == 96
    # The exporter traces (and verifies) on 13- and 29-frame examples: shorter than a window.
    out = export_model(model, audio_info(), tmp_path / "export", formats=("onnx",), config=cfg)
    feats = [speech_mel(c[None])[0] for c in clips]
    x, mask = pad_batch(feats, fill=0.0)
    present = np.ones(len(feats), dtype=bool)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    encoder = ort.InferenceSession(str(out / "encoder_audio.onnx"), opts, providers=["CPUExecutionProvider"])
    full = ort.InferenceSession(str(out / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    feed = {"audio": x.numpy(), "audio_mask": mask.numpy(), "audio_present": present}
    names = [i.name for i in encoder.get_inputs()]
    sequence, pooled, windows = encoder.run(None, {n: feed[n] for n in names})
    (logits,) = full.run(None, feed)
    with torch.no_grad():
        eager = model.encoders["audio"](x, mask)
        eager_logits = model({"audio": x}, {"audio": torch.from_numpy(present)}, {"audio": mask}).logits
    assert max_rel_diff(sequence, eager.sequence.numpy()) <= REL_TOL
    assert max_rel_diff(pooled, eager.pooled.numpy()) <= REL_TOL
    assert (windows == eager.valid.numpy()).all()
    np.testing.assert_allclose(logits, eager_logits.numpy(), rtol=1e-4, atol=1e-4)
    # ...and so the exported encoder matches the original too, window by window.
    for i, clip in enumerate(clips):
        reference = onnx_embeddings(clip)
        assert max_rel_diff(sequence[i, : len(reference)], reference) <= REL_TOL


def test_missing_package_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openwakeword" else real(name, *a)
    )
    with pytest.raises(MissingDependencyError, match=r"pip install 'mmfurnace\[speech\]'.*0\.4\.0"):
        ENCODERS["speech_embedding"](input_shape=(None, 32))


def test_bad_inputs_and_files_are_clear_errors(tmp_path, encoder) -> None:
    with pytest.raises(ConfigError, match="speech_mel frames shaped \\(frames, 32\\).*features=speech_mel"):
        ENCODERS["speech_embedding"](input_shape=(None, 20))
    with pytest.raises(ConfigError, match="speech_mel"):
        ENCODERS["speech_embedding"](input_shape=(1, 28, 28))
    with pytest.raises(InputError, match="speech_embedding.*\\(batch, frames, 32\\)"):
        encoder(torch.randn(2, 32))
    with pytest.raises(ConfigError, match="not found"):
        ENCODERS["speech_embedding"](input_shape=(None, 32), path=tmp_path)
    junk = tmp_path / "embedding_model.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(ConfigError, match="cannot read"):
        ENCODERS["speech_embedding"](input_shape=(None, 32), path=tmp_path)
    other = openwakeword_models_dir() / "melspectrogram.onnx"  # a real ONNX file, another model
    with pytest.raises(ConfigError, match="has 2 convs"):
        ENCODERS["speech_embedding"](input_shape=(None, 32), path=other)


@pytest.mark.slow
def test_fsdd_clips_pack_train_reload_and_export(tmp_path) -> None:
    """The whole path on real speech: a manifest of FSDD clips, packed with speech_mel,
    a unimodal speech_embedding model trained by the recipe, reloaded from its checkpoint,
    exported, and every CPU backend checked against eager on a real test batch."""
    import json

    from mmfurnace.config import RunConfig
    from mmfurnace.data.config import DataConfig
    from mmfurnace.data.datasets import first_batch
    from mmfurnace.data.prepare import pack_manifest
    from mmfurnace.export.exporter import export_checkpoint
    from mmfurnace.export.parity import assert_parity
    from mmfurnace.train.checkpoint import load_model
    from mmfurnace.train.config import TrainConfig
    from mmfurnace.train.recipe import train
    from tests.speech_reference import FSDD

    fsdd_clips(("0_george_0",))  # skips when the recordings are not there
    rows = []
    for digit in range(5):
        for speaker in ("george", "jackson", "lucas"):
            for take, split in [*((t, "train") for t in range(5, 11)), (11, "valid"), (12, "valid"),
                                (0, "test"), (1, "test")]:
                wav = FSDD / f"{digit}_{speaker}_{take}.wav"
                rows.append({"id": wav.stem, "split": split, "audio": str(wav), "label": digit})
    manifest = tmp_path / "raw" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataConfig(dataset="packed", root=tmp_path / "packed", modalities=["audio"], batch_size=15,
                      audio={"features": "speech_mel", "max_seconds": 1.0})
    pack_manifest(manifest, tmp_path / "packed", data_cfg=data)

    cfg = RunConfig(
        data=data,
        model=ModelConfig(encoders={"audio": EncoderConfig(name="speech_embedding")}, fusion="late"),
        train=TrainConfig(epochs=4, lr=1e-3, warmup_epochs=0.5, out_dir=tmp_path / "run", log_every=5),
    )
    train(cfg, progress=False)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    # 5 classes, 30 test clips, 90 training clips, 4 epochs: measured 0.733 (chance 0.2).
    assert results["test"]["accuracy"] >= 0.6, results["test"]

    model, _ = load_model(tmp_path / "run" / "best")
    batch = first_batch(data, "test", 30, ["audio"])
    assert batch.inputs["audio"].shape[-1] == 32
    with torch.no_grad():
        logits = model.forward_batch(batch).logits
    assert float((logits.argmax(1) == batch.labels).float().mean()) == pytest.approx(results["test"]["accuracy"])
    out = export_checkpoint(tmp_path / "run" / "best", tmp_path / "export")
    settings = json.loads((out / "export.json").read_text())
    assert "speech_mel" in json.dumps(settings)
    checked = assert_parity(out, batch, runtimes=["onnxruntime", "torchscript"])
    assert [r.status for r in checked] == ["pass", "pass"]


def test_benchmark_prints_parity_and_speed(tmp_path, capsys) -> None:
    from tests.benchmark_scripts import load_benchmark
    from tests.speech_reference import FSDD

    fsdd_clips(("0_george_0",))  # skips when the recordings are not there
    out = tmp_path / "speech.json"
    result = load_benchmark("speech_embedding").main(
        ["--fsdd", str(FSDD), "--clips", "8", "--rounds", "1", "--json", str(out)]
    )
    assert json_keys(out) >= {"machine", "parity", "speed"}
    par = result["parity"]
    assert par["clips"] == 8
    assert par["joined_clips"] == 2
    assert par["max_abs_diff"]["torch"] <= REL_TOL * par["max_abs_reference"]["emb"]
    assert par["max_abs_diff"]["torch_onnx"] <= REL_TOL * par["max_abs_reference"]["emb"]
    assert par["max_abs_diff"]["mel"] <= 1e-4
    for row in result["speed"].values():
        assert {"onnx-original", "torch-eager", "torch-onnx"} <= set(row)
        assert row["windows"] >= 1
    printed = capsys.readouterr().out
    assert "ISA:" in printed
    assert "torch-onnx" in printed


def json_keys(path) -> set[str]:
    import json

    return set(json.loads(path.read_text()))


def test_channel_pruned_model_rebuilds_from_its_weights(clips) -> None:
    """Torch-Pruning follows the convs (and the depthwise stem affine) of the encoder; a pruned
    checkpoint is rebuilt from its weights' shapes as load_compressed does it."""
    from mmfurnace.compress.channels import channel_prune_
    from mmfurnace.compress.config import ChannelConfig
    from mmfurnace.data.batch import Batch
    from mmfurnace.models.surgery import resize_to_, shape_attributes

    cfg = ModelConfig(encoders={"audio": EncoderConfig(name="speech_embedding")}, fusion="late")
    model = build_model(cfg, audio_info()).eval()
    x, mask = pad_batch([speech_mel(c[None])[0] for c in clips[:4]], fill=0.0)
    batch = Batch(inputs={"audio": x}, valid={"audio": mask},
                  present={"audio": torch.ones(4, dtype=torch.bool)}, labels=torch.tensor([0, 1, 2, 0]))
    widths = channel_prune_(model, ChannelConfig(sparsity=0.5), example=batch)["widths"]
    assert widths["encoders.audio"] == (96, 48)
    assert model.encoders["audio"].stem[2].groups == 12
    rebuilt = build_model(cfg, audio_info()).eval()
    resize_to_(rebuilt, model.state_dict(), shape_attributes(model))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.forward_batch(batch).logits, model.forward_batch(batch).logits)
