"""Audio pipeline: decode errors, resampling, and torch features checked against librosa."""

from __future__ import annotations

import math
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from mmfurnace.data.audio import (
    AudioPreprocessor,
    load_wav,
    log_mel_spectrogram,
    mel_filterbank,
    mfcc,
    resample,
)
from mmfurnace.errors import InputError

FEATURE_KW = {"n_fft": 512, "hop_length": 160, "n_mels": 40}


def max_relative_difference(ours: np.ndarray, reference: np.ndarray) -> float:
    """max |ours - reference| / max |reference|: the error relative to the feature's scale.

    Element-wise relative error is meaningless for MFCCs, whose coefficients cross zero.
    """
    assert ours.shape == reference.shape
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(round(rate * seconds), dtype=torch.float64) / rate
    return (amplitude * torch.sin(2 * math.pi * freq * t)).to(torch.float32)


def peak_frequency(x: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(x.double() * torch.hann_window(x.numel(), dtype=torch.float64))
    return float(spectrum.abs().argmax()) * rate / x.numel()


# --------------------------------------------------------------- librosa parity (issue)


@pytest.mark.parametrize("rate", [22050, 16000])
def test_mfcc_matches_librosa_on_real_speech(speech_wav: Path, rate: int) -> None:
    # At 16 kHz the recording goes through our resampler first; librosa then gets the
    # very same waveform, so only the feature code is compared.
    y = load_wav(speech_wav, target_rate=rate)
    ours = mfcc(y, sample_rate=rate, n_mfcc=20, **FEATURE_KW).numpy()
    reference = librosa.feature.mfcc(
        y=y.numpy().astype(np.float64), sr=rate, n_mfcc=20, **FEATURE_KW
    ).T
    assert ours.shape == (y.numel() // 160 + 1, 20)
    # Measured: ~2.5e-7 at 22.05 kHz, ~6.4e-7 at 16 kHz (float32 torch vs float64 librosa).
    assert max_relative_difference(ours, reference) <= 1e-3


@pytest.mark.parametrize("rate", [22050, 16000])
def test_log_mel_matches_librosa_on_real_speech(speech_wav: Path, rate: int) -> None:
    y = load_wav(speech_wav, target_rate=rate)
    ours = log_mel_spectrogram(y, sample_rate=rate, **FEATURE_KW).numpy()
    mel = librosa.feature.melspectrogram(y=y.numpy().astype(np.float64), sr=rate, **FEATURE_KW)
    reference = librosa.power_to_db(mel).T
    # The recording spans more than 80 dB, so the top_db floor is exercised too.
    assert reference.min() == pytest.approx(reference.max() - 80.0)
    # Measured: ~4e-6 at 22.05 kHz, ~9e-6 at 16 kHz.
    assert max_relative_difference(ours, reference) <= 1e-3


@pytest.mark.parametrize(("f_min", "f_max"), [(0.0, None), (60.0, 7000.0)])
def test_mel_filterbank_matches_librosa(f_min: float, f_max: float | None) -> None:
    ours = mel_filterbank(sample_rate=16000, n_fft=512, n_mels=40, f_min=f_min, f_max=f_max)
    reference = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, fmin=f_min, fmax=f_max)
    assert ours.shape == (257, 40)
    torch.testing.assert_close(ours, torch.from_numpy(reference.T.copy()), rtol=1e-5, atol=1e-8)


def test_batched_features_equal_single_and_floor_is_per_example(speech_wav: Path) -> None:
    y = load_wav(speech_wav, target_rate=16000)
    quiet = y * 1e-3  # 60 dB quieter: a shared top_db floor would clip it differently
    batch = torch.stack([y, quiet])
    for fn in (log_mel_spectrogram, mfcc):
        out = fn(batch, sample_rate=16000)
        assert out.shape[0] == 2
        torch.testing.assert_close(out[0], fn(y, sample_rate=16000), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(out[1], fn(quiet, sample_rate=16000), rtol=1e-5, atol=1e-4)
    db = log_mel_spectrogram(batch, sample_rate=16000)
    assert db[1].max() == pytest.approx(db[0].max().item() - 60.0, abs=0.01)
    # The loud example is floored at its own max - 80 dB; the quiet one goes below that
    # floor (down to the 1e-10 amin, -100 dB), so the floor was not shared.
    assert db[0].min() == pytest.approx(db[0].max().item() - 80.0, abs=1e-4)
    assert db[1].min() < db[0].min() - 10.0


# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize(("orig", "new"), [(22050, 16000), (8000, 16000), (48000, 16000)])
def test_resample_preserves_tone_frequency_and_length(orig: int, new: int) -> None:
    x = tone(440.0, orig, 0.5)
    y = resample(x, orig, new)
    assert y.dtype == torch.float32
    assert abs(y.numel() - math.ceil(x.numel() * new / orig)) <= 1
    # FFT bin width is 2 Hz for a 0.5 s signal.
    assert peak_frequency(y, new) == pytest.approx(440.0, abs=2.0)
    # Away from the edges the waveform is the same tone sampled at the new rate.
    expected = tone(440.0, new, 0.5)[: y.numel()]
    torch.testing.assert_close(y[200:-200], expected[200:-200], rtol=0, atol=5e-3)


def test_resample_removes_content_above_new_nyquist() -> None:
    x = tone(7000.0, 16000, 0.5)  # above the 4 kHz Nyquist of 8 kHz audio
    y = resample(x, 16000, 8000)
    interior = y[100:-100]
    assert interior.pow(2).mean().sqrt() < 0.005  # input RMS is 0.35


def test_resample_works_over_last_axis_of_a_batch() -> None:
    batch = torch.stack([tone(300.0, 22050, 0.2), tone(900.0, 22050, 0.2)])
    out = resample(batch, 22050, 16000)
    assert out.shape == (2, math.ceil(batch.shape[1] * 16000 / 22050))
    torch.testing.assert_close(out[1], resample(batch[1], 22050, 16000), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("orig", "new"), [(0, 16000), (16000, -8000), (300, 16000), (44101, 16000)]
)
def test_resample_rejects_bad_rates(orig: int, new: int) -> None:
    with pytest.raises(InputError, match="sample rate|ratio|common divisor"):
        resample(tone(100.0, 16000, 0.1), orig, new)


# --------------------------------------------------------------------------- decoding


def test_load_wav_resamples_8k_to_16k(tmp_path: Path) -> None:
    path = tmp_path / "tone8k.wav"
    sf.write(path, tone(440.0, 8000, 0.75).numpy(), 8000, subtype="PCM_16")
    y = load_wav(path, target_rate=16000)
    assert y.dtype == torch.float32
    assert y.numel() == 12000  # 0.75 s at 16 kHz
    assert y.numel() / 16000 == pytest.approx(0.75)
    assert peak_frequency(y, 16000) == pytest.approx(440.0, abs=1.5)
    assert float(y.abs().max()) <= 1.0


def test_load_wav_mixes_stereo_to_mono_and_reads_bytes(tmp_path: Path) -> None:
    left = tone(440.0, 16000, 0.1, amplitude=0.5).numpy()
    right = np.zeros_like(left)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    from_path = load_wav(path, target_rate=16000)
    from_bytes = load_wav(path.read_bytes(), target_rate=16000, source="upload.wav")
    torch.testing.assert_close(from_path, torch.from_numpy(left) / 2, rtol=0, atol=1e-7)
    torch.testing.assert_close(from_bytes, from_path, rtol=0, atol=0)


def _write_wav(path: Path, samples: np.ndarray, rate: int = 16000, subtype: str = "FLOAT") -> Path:
    sf.write(path, samples, rate, subtype=subtype)
    return path


@pytest.mark.parametrize(
    ("name", "make", "problem"),
    [
        ("empty.wav", lambda p: _write_wav(p, np.zeros(0, np.float32)), "zero samples"),
        (
            "nan.wav",
            lambda p: _write_wav(p, np.array([0.1, np.nan, 0.2] * 100, np.float32)),
            "NaN",
        ),
        (
            "silent.wav",
            lambda p: _write_wav(p, np.zeros(1600, np.float32), subtype="PCM_16"),
            "silent",
        ),
        (
            "noise.wav",
            lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)) and p,
            "decode",
        ),
        ("missing.wav", lambda p: p, "not found"),
        ("low.wav", lambda p: _write_wav(p, tone(50.0, 300, 0.5).numpy(), rate=300), "ratio"),
    ],
)
def test_load_wav_bad_input_names_the_file(tmp_path: Path, name: str, make, problem: str) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(InputError, match=problem) as info:
        load_wav(path, target_rate=16000)
    assert name in str(info.value)


def test_load_wav_bad_bytes_name_the_source() -> None:
    with pytest.raises(InputError, match=r"clip-17\.wav: cannot decode"):
        load_wav(b"RIFF not really a wav", target_rate=16000, source="clip-17.wav")


# --------------------------------------------------------------------------- preprocessor


def test_preprocessor_cuts_to_max_seconds_and_computes_mfcc(speech_wav: Path) -> None:
    prep = AudioPreprocessor(sample_rate=16000, max_seconds=0.25)
    feats = prep(speech_wav)
    assert feats.dtype == torch.float32
    assert feats.shape == (4000 // 160 + 1, 20) == (26, prep.feature_dim)
    y = load_wav(speech_wav, target_rate=16000)[:4000]
    reference = librosa.feature.mfcc(y=y.numpy().astype(np.float64), sr=16000, **FEATURE_KW).T
    assert max_relative_difference(feats.numpy(), reference) <= 1e-3


def test_preprocessor_resamples_a_waveform_given_with_its_rate() -> None:
    prep = AudioPreprocessor(sample_rate=16000, features="logmel", max_seconds=None)
    wave8k = tone(440.0, 8000, 0.5).numpy()
    feats = prep(wave8k, sample_rate=8000)
    expected = log_mel_spectrogram(
        resample(torch.from_numpy(wave8k), 8000, 16000), sample_rate=16000
    )
    assert feats.shape == (8000 // 160 + 1, 40)
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-4)
    # int16 PCM arrays are scaled to [-1, 1] first.
    pcm = (wave8k * 32768).astype(np.int16)
    torch.testing.assert_close(prep(pcm, sample_rate=8000), expected, rtol=0, atol=0.05)


def test_preprocessor_batch_path_matches_single(speech_wav: Path) -> None:
    prep = AudioPreprocessor(max_seconds=0.5)
    y = load_wav(speech_wav, target_rate=16000)
    batch = torch.stack([y[:8000], y[3000:11000]])
    out = prep.features_batch(batch)
    assert out.shape == (2, 8000 // 160 + 1, 20)
    torch.testing.assert_close(out[1], prep(y[3000:11000]), rtol=1e-5, atol=1e-4)


def test_preprocessor_settings_round_trip_and_validation() -> None:
    prep = AudioPreprocessor(features="logmel", n_mels=32, max_seconds=1.0)
    assert prep.feature_dim == 32
    assert AudioPreprocessor(**prep.to_dict()).to_dict() == prep.to_dict()
    with pytest.raises(InputError, match="unknown audio features 'spectrogram'"):
        AudioPreprocessor(features="spectrogram")
    with pytest.raises(InputError, match="n_mfcc"):
        AudioPreprocessor(n_mfcc=64, n_mels=40)
    with pytest.raises(InputError, match=r"mic-3: waveform must be 1-D.*\(2, 100\)"):
        prep(torch.ones(2, 100), source="mic-3")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_features_on_gpu_match_cpu(speech_wav: Path) -> None:
    y = load_wav(speech_wav, target_rate=16000)
    batch = torch.stack([y, y.flip(0)])
    cpu = mfcc(batch, sample_rate=16000)
    gpu = mfcc(batch.cuda(), sample_rate=16000)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(
        resample(batch.cuda(), 16000, 22050).cpu(), resample(batch, 16000, 22050), rtol=0, atol=1e-5
    )
