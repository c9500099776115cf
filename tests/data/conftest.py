"""Fixtures for the data tests: a short real speech recording."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SPEECH_RATE = 22050


def _synthetic_speech(path: Path) -> None:
    # Fallback when espeak-ng is missing: a voiced, vowel-like signal (glottal pulse train
    # through formant resonances, with pitch drift, an attack/decay envelope, breath noise
    # and leading/trailing silence), so spectra look like recorded speech, not a pure tone.
    rng = np.random.default_rng(7)
    sr = SPEECH_RATE
    n = int(0.6 * sr)
    t = np.arange(n) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30))
    for formant in (700, 1200, 2600):
        voiced = voiced + 0.3 * np.sin(2 * np.pi * formant * t) * (1 + np.sin(phase))
    envelope = np.minimum(1, t / 0.05) * np.minimum(1, (t[-1] - t) / 0.1)
    signal = 0.2 * voiced * envelope / np.abs(voiced).max() + 0.003 * rng.standard_normal(n)
    signal = np.concatenate([np.zeros(sr // 10), signal, np.zeros(sr // 10)])
    sf.write(path, signal.astype(np.float32), sr, subtype="PCM_16")


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spoken word ("seven") as a 22.05 kHz PCM_16 wav: espeak-ng when installed."""
    path = tmp_path_factory.mktemp("speech") / "seven.wav"
    espeak = shutil.which("espeak-ng")
    if espeak is not None:
        subprocess.run([espeak, "-w", str(path), "seven"], check=True, timeout=30)
    else:
        _synthetic_speech(path)
    return path
