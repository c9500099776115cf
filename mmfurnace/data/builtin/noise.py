"""Background noise for the spoken digits: white, pink, and babble (other clips mixed).

A clip is placed at a random offset inside a longer buffer and noise is added over the
whole buffer at a target signal-to-noise ratio measured against the speech itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def white_noise(n: int, sources: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n)


def pink_noise(n: int, sources: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """1/f noise: white noise shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0
    return np.fft.irfft(spectrum / np.sqrt(freqs), n)


def babble_noise(n: int, sources: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Several other spoken clips overlapped at random offsets (cross-talk), looped to ``n``."""
    out = np.zeros(n)
    for clip in sources:
        tiled = np.tile(clip, n // max(len(clip), 1) + 2)
        start = int(rng.integers(len(clip)))
        out += tiled[start : start + n] * rng.uniform(0.5, 1.0)
    return out


# kind -> noise(n, babble sources, rng); only babble uses the sources.
NOISES: dict[str, Callable[[int, Sequence[np.ndarray], np.random.Generator], np.ndarray]] = {
    "white": white_noise,
    "pink": pink_noise,
    "babble": babble_noise,
}


def mix(
    speech: np.ndarray,
    rng: np.random.Generator,
    *,
    kind: str,
    snr_db: float,
    lead_s: float,
    tail_s: float,
    babble_sources: Sequence[np.ndarray] = (),
    sample_rate: int = 16000,
) -> np.ndarray:
    """Speech padded by ``lead_s``/``tail_s`` seconds, plus noise at ``snr_db``.

    Returns (samples,) float32 peak-normalized to a random level in [0.3, 0.9].
    """
    lead, tail = int(lead_s * sample_rate), int(tail_s * sample_rate)
    n = lead + len(speech) + tail
    assert kind in NOISES, f"unknown noise kind {kind!r}; known: {sorted(NOISES)}"
    assert kind != "babble" or babble_sources, "babble noise needs source clips"
    noise = NOISES[kind](n, babble_sources, rng)
    speech_rms = float(np.sqrt(np.mean(np.square(speech, dtype=np.float64))))
    noise_rms = float(np.sqrt(np.mean(np.square(noise)))) or 1.0
    out = noise * (speech_rms / noise_rms) * 10.0 ** (-snr_db / 20.0)
    out[lead : lead + len(speech)] += speech
    out *= rng.uniform(0.3, 0.9) / max(float(np.abs(out).max()), 1e-9)
    return out.astype(np.float32)
