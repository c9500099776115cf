"""The mel front-end of Google's speech_embedding model, in torch (``features="speech_mel"``).

openWakeWord 0.4.0 ships this front-end as ``melspectrogram.onnx`` (a torchlibrosa export):
STFT as two convolutions (n_fft 512, a 400-sample periodic Hann window centred in it, hop 160,
no centring), power, a Slaney mel bank of 32 bins over 60-3800 Hz, ``10*log10(max(1e-10, .))``
and an 80 dB floor below the maximum; openWakeWord then applies ``x / 10 + 2`` before the
embedding model. Its input is 16 kHz audio in int16 scale (not -1..1).

Both of its weight tensors are analytic, so they are rebuilt here rather than read from the
file (tests compare them with the ONNX initializers: 3e-8): a deployment needs no
openWakeWord files to compute features. Two deliberate differences, both in how a batch is
handled, not in what one clip gives:

- the ONNX graph takes the 80 dB floor's maximum over the *whole batch* (a ReduceMax with no
  axes), so a clip's features depend on its batch-mates; here it is per clip (openWakeWord
  itself runs the front-end one clip at a time, which is what the parity tests compare to);
- a clip shorter than one embedding window (76 frames, 12,512 samples) is padded with digital
  silence to one window, so every clip gives at least one embedding.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from mmfurnace.data.audio import mel_filterbank
from mmfurnace.errors import InputError

SAMPLE_RATE = 16000
N_FFT = 512
WIN_LENGTH = 400
HOP_LENGTH = 160
N_MELS = 32
F_MIN, F_MAX = 60.0, 3800.0
TOP_DB = 80.0
AMIN = 1e-10
INT16_SCALE = 32768.0  # soundfile's float = int16 / 32768, so this restores the PCM values
# The embedding model sees 76 frames at a time (0.775 s), windows 8 frames (80 ms) apart.
WINDOW_FRAMES = 76
WINDOW_STEP = 8
MIN_SAMPLES = N_FFT + (WINDOW_FRAMES - 1) * HOP_LENGTH  # 12,512: one window of frames


def speech_mel_frames(samples: int) -> int:
    """Frames that :func:`speech_mel` gives for a clip of ``samples`` samples (>= 76)."""
    return (max(int(samples), MIN_SAMPLES) - N_FFT) // HOP_LENGTH + 1


def speech_mel(waveforms: Tensor) -> Tensor:
    """speech_embedding's input features.

    waveforms (batch, samples) float at 16 kHz in [-1, 1] -> (batch, frames, 32) float32 with
    frames = speech_mel_frames(samples) >= 76. Each row's 80 dB floor is its own. Runs on the
    waveforms' device.
    """
    if waveforms.dim() != 2:
        raise InputError(
            f"speech_mel expects (batch, samples), got shape {tuple(waveforms.shape)}"
        )
    x = waveforms.to(torch.float32) * INT16_SCALE
    if x.shape[1] < MIN_SAMPLES:
        x = torch.nn.functional.pad(x, (0, MIN_SAMPLES - x.shape[1]))
    window = _window(x.device)
    spec = torch.stft(
        x, n_fft=N_FFT, hop_length=HOP_LENGTH, win_length=WIN_LENGTH, window=window,
        center=False, return_complex=True,
    )
    power = spec.real.square() + spec.imag.square()  # (batch, n_freqs, frames)
    mel = torch.matmul(power.transpose(1, 2), _mel_bank(x.device))  # (batch, frames, 32)
    db = 10.0 * torch.log10(mel.clamp(min=AMIN))
    db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - TOP_DB)
    return db / 10.0 + 2.0


@functools.lru_cache(maxsize=4)
def _window(device: torch.device) -> Tensor:
    return torch.hann_window(WIN_LENGTH, periodic=True, device=device)


@functools.lru_cache(maxsize=4)
def _mel_bank(device: torch.device) -> Tensor:
    fb = mel_filterbank(sample_rate=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, f_min=F_MIN, f_max=F_MAX)
    return fb.to(device)


def dft_basis() -> tuple[Tensor, Tensor]:
    """The real and imaginary STFT kernels (257, 512) that melspectrogram.onnx stores as conv
    weights: cos / -sin of the DFT times the window zero-padded to n_fft, centred."""
    n = torch.arange(N_FFT, dtype=torch.float64)
    k = torch.arange(N_FFT // 2 + 1, dtype=torch.float64)[:, None]
    lpad = (N_FFT - WIN_LENGTH) // 2
    window = torch.zeros(N_FFT, dtype=torch.float64)
    window[lpad : lpad + WIN_LENGTH] = torch.hann_window(WIN_LENGTH, periodic=True, dtype=torch.float64)
    angle = 2 * torch.pi * k * n / N_FFT
    return (torch.cos(angle) * window).float(), (-torch.sin(angle) * window).float()


def mel_bank() -> Tensor:
    """The mel bank (257, 32) that melspectrogram.onnx stores as ``melW``."""
    return _mel_bank(torch.device("cpu")).clone()
