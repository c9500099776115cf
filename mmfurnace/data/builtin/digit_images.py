"""The image modality of digits-av: real handwritten digits, degraded on purpose.

Source: the UCI "Optical Recognition of Handwritten Digits" test set as bundled in
scikit-learn (``load_digits``: 1,797 8x8 images, 16 grey levels; Alpaydin & Kaynak).
Degradation in the spirit of AV-MNIST (which removes 75% of the PCA energy of MNIST):
project onto the first few principal components (fitted on the training split only),
upsample into a centred 20x20 box of a 28x28 image (MNIST's framing), add Gaussian
pixel noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 28
DIGIT_BOX = 20  # like MNIST: the digit fills a 20x20 box centred in the 28x28 image


def load_uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 8, 8) float64 in [0, 1], labels (n,) int64) from scikit-learn's copy."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images / 16.0, bunch.target.astype(np.int64)


def pca_project(
    images: np.ndarray, fit_on: np.ndarray, components: int | None = None, *,
    energy: float | None = None,
) -> tuple[np.ndarray, float]:
    """Reconstruct ``images`` (n, h, w) from their first ``components`` principal
    components -- or from as few as keep at least ``energy`` of it -- fitted on the rows
    ``fit_on`` only. Returns (images, energy kept), the energy being the fraction of the
    fitted set's variance those components explain (``len(singular)`` components: all)."""
    assert (components is None) != (energy is None), "give components or energy"
    flat = images.reshape(len(images), -1)
    mean = flat[fit_on].mean(axis=0)
    # SVD is deterministic (no randomized solver), so a fixed seed gives fixed images.
    _, singular, vt = np.linalg.svd(flat[fit_on] - mean, full_matrices=False)
    cumulative = np.cumsum(singular**2) / np.sum(singular**2)
    if components is None:
        components = int(np.searchsorted(cumulative, float(energy) - 1e-12) + 1)
    components = min(components, len(singular))
    basis = vt[:components]
    recon = (flat - mean) @ basis.T @ basis + mean
    return recon.reshape(images.shape), float(cumulative[components - 1])


def degrade(image: np.ndarray, rng: np.random.Generator, *, noise_std: float) -> np.ndarray:
    """(8, 8) float image -> (28, 28) uint8: bilinear upsampling to a centred 20x20 box,
    Gaussian noise over the whole image, clip."""
    box = Image.fromarray(image.astype(np.float32)).resize(
        (DIGIT_BOX, DIGIT_BOX), Image.Resampling.BILINEAR
    )
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float64)
    at = (IMAGE_SIZE - DIGIT_BOX) // 2
    canvas[at : at + DIGIT_BOX, at : at + DIGIT_BOX] = np.asarray(box)
    noisy = canvas + rng.normal(0.0, noise_std, (IMAGE_SIZE, IMAGE_SIZE))
    return (np.clip(noisy, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_png(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels).save(path, format="PNG")
