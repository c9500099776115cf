"""The modalities mmfurnace knows. Sorted, so dict iteration order is stable everywhere."""

from __future__ import annotations

from typing import Literal

Modality = Literal["audio", "image", "text"]
MODALITIES: tuple[Modality, ...] = ("audio", "image", "text")
SEQUENCE_MODALITIES: tuple[Modality, ...] = ("audio", "text")
