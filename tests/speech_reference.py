"""The reference for the speech_embedding tests: openWakeWord 0.4.0's own ONNX files run the
way its AudioFeatures runs them (one clip at a time, ``x / 10 + 2``, 76-frame windows every
8 frames), plus a few real FSDD clips at 16 kHz. Imported by the data and model tests."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfurnace.data.audio import load_wav
from mmfurnace.data.speech_mel import INT16_SCALE, MIN_SAMPLES, WINDOW_FRAMES, WINDOW_STEP
from mmfurnace.models.encoders.speech_embedding import openwakeword_models_dir

FSDD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd" / "recordings"
# Six speakers, six digits; 0.15 s (one padded window) to 2.3 s (19 windows).
CLIPS = ("0_george_0", "3_jackson_12", "7_nicolas_40", "9_theo_16", "5_yweweler_31", "1_lucas_3")


def fsdd_clips(names: tuple[str, ...] = CLIPS) -> list[torch.Tensor]:
    """Real FSDD recordings (8 kHz) resampled to 16 kHz by the project's resampler."""
    if not FSDD.is_dir():
        pytest.skip(f"FSDD recordings not found at {FSDD} (the project's ../shared/data)")
    return [load_wav(FSDD / f"{n}.wav", target_rate=16000) for n in names]


@functools.lru_cache(maxsize=1)
def _sessions():
    import onnxruntime as ort

    folder = openwakeword_models_dir()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return tuple(
        ort.InferenceSession(str(folder / f), opts, providers=["CPUExecutionProvider"])
        for f in ("melspectrogram.onnx", "embedding_model.onnx")
    )


def onnx_mel(waveform: torch.Tensor) -> np.ndarray:
    """melspectrogram.onnx on one clip (samples,) in [-1, 1], zero-padded to one window,
    then openWakeWord's ``x / 10 + 2`` -> (frames, 32)."""
    x = waveform.numpy().astype(np.float32)
    if len(x) < MIN_SAMPLES:
        x = np.pad(x, (0, MIN_SAMPLES - len(x)))
    mel = _sessions()[0].run(None, {"input": (x * INT16_SCALE)[None]})[0]
    return np.squeeze(mel, (0, 1)) / 10 + 2


def onnx_embeddings(waveform: torch.Tensor) -> np.ndarray:
    """openWakeWord's embeddings of one clip -> (windows, 96)."""
    spec = onnx_mel(waveform)
    starts = range(0, spec.shape[0] - WINDOW_FRAMES + 1, WINDOW_STEP)
    windows = np.stack([spec[i : i + WINDOW_FRAMES] for i in starts])[..., None]
    out = _sessions()[1].run(None, {"input_1": windows.astype(np.float32)})[0]
    return out[:, 0, 0, :]
