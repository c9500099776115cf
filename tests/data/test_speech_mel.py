"""speech_embedding's mel front-end in torch (features="speech_mel") against the ONNX original
that openWakeWord 0.4.0 ships, on real speech."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from onnx import numpy_helper

from mmfurnace.data.audio import AudioPreprocessor
from mmfurnace.data.config import DataConfig
from mmfurnace.data.speech_mel import (
    MIN_SAMPLES,
    dft_basis,
    mel_bank,
    speech_mel,
    speech_mel_frames,
)
from mmfurnace.errors import ConfigError, InputError
from mmfurnace.models.encoders.speech_embedding import openwakeword_models_dir
from mmfurnace.typed_config import parse
from tests.speech_reference import fsdd_clips, onnx_mel


def test_rebuilt_weights_equal_the_onnx_initializers() -> None:
    graph = onnx.load(str(openwakeword_models_dir() / "melspectrogram.onnx")).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    real, imag = dft_basis()
    # Measured 3.0e-8 (float32 rounding of the same numbers).
    np.testing.assert_allclose(real.numpy(), init["0.stft.conv_real.weight"][:, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(imag.numpy(), init["0.stft.conv_imag.weight"][:, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(mel_bank().numpy(), init["1.melW"], rtol=0, atol=1e-7)  # 9.3e-10


def test_features_match_the_onnx_front_end_on_real_speech() -> None:
    clips = fsdd_clips()
    clips.append(torch.cat(clips))  # 4.5 s: many windows, several words
    for clip in clips:
        reference = onnx_mel(clip)
        ours = speech_mel(clip[None])[0].numpy()
        assert ours.shape == reference.shape == (speech_mel_frames(clip.numel()), 32)
        # Measured <= 6.2e-6 on values 3.8..12 (torch.stft vs the ONNX conv STFT).
        assert np.abs(ours - reference).max() <= 1e-4


def test_short_clips_are_padded_with_silence_to_one_window() -> None:
    clip = fsdd_clips(("6_yweweler_3",))[0]  # the shortest FSDD take: 0.14 s
    assert clip.numel() < MIN_SAMPLES
    feats = speech_mel(clip[None])[0]
    assert feats.shape == (76, 32)
    # The frames past the clip are digital silence: the clip's 80 dB floor, max - 8.
    tail = feats[(clip.numel() + 159) // 160 :]  # frames that start past the last sample
    assert len(tail) > 60
    torch.testing.assert_close(tail, torch.full_like(tail, float(feats.max()) - 8.0))


def test_each_row_has_its_own_floor() -> None:
    """The ONNX graph takes the floor's maximum over the whole batch; ours is per clip, so a
    clip's features never depend on what it is batched with."""
    loud, quiet = fsdd_clips(("3_jackson_12", "5_yweweler_31"))
    n = min(loud.numel(), quiet.numel())
    batch = torch.stack([loud[:n], quiet[:n] * 0.01])
    together = speech_mel(batch)
    alone = speech_mel(batch[1:])[0]
    torch.testing.assert_close(together[1], alone, rtol=0, atol=1e-5)


def test_preprocessor_from_a_wav_file() -> None:
    clip = fsdd_clips(("9_theo_16",))[0]
    buffer = io.BytesIO()
    sf.write(buffer, (clip.numpy() * 32767).astype(np.int16), 16000, format="WAV")
    pre = AudioPreprocessor(features="speech_mel", max_seconds=2.0)
    feats = pre(buffer.getvalue(), source="theo.wav")
    assert feats.dtype == torch.float32
    assert feats.shape == (pre.max_frames, 32) == (speech_mel_frames(32000), 32)  # cut at 2 s
    assert pre.feature_dim == 32
    settings = pre.to_dict()
    assert settings["features"] == "speech_mel"
    assert (settings["n_mels"], settings["n_fft"], settings["hop_length"]) == (32, 512, 160)
    assert AudioPreprocessor(**settings).to_dict() == settings  # what a server rebuilds it from


def test_max_frames_covers_clips_shorter_than_a_window() -> None:
    pre = AudioPreprocessor(features="speech_mel", max_seconds=0.25)
    assert pre.max_frames == 76
    assert pre(torch.randn(16000) * 0.1).shape == (76, 32)


def test_wrong_rate_is_an_error() -> None:
    with pytest.raises(InputError, match="speech_mel.*sample_rate 16000.*got 8000"):
        AudioPreprocessor(features="speech_mel", sample_rate=8000)
    with pytest.raises(ConfigError, match="speech_mel.*sample_rate 16000"):
        parse(DataConfig, {"audio": {"features": "speech_mel", "sample_rate": 22050}})
    with pytest.raises(InputError, match=r"\(batch, samples\)"):
        speech_mel(torch.randn(16000))
