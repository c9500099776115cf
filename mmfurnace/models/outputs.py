"""What encoders and fusions return. Shapes are named the same everywhere in mmfurnace."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class EncoderOutput(NamedTuple):
    """One modality, encoded.

    sequence: (batch, seq, dim) tokens (spatial positions, frames or text tokens; seq=1 for
        a flat feature vector).
    pooled:   (batch, dim) one vector per row (masked mean over real tokens).
    valid:    (batch, seq) bool, True where a token is real (not padding); None when every token is real.
    """

    sequence: Tensor
    pooled: Tensor
    valid: Tensor | None

    @property
    def padding(self) -> Tensor | None:
        """The old name of :attr:`valid` (True on real tokens), for code written against it."""
        return self.valid


class FusionOutput(NamedTuple):
    """The fused representation.

    fused:           (batch, out_dim); for late fusion these are already logits.
    unimodal_logits: modality -> (batch, num_classes), only from fusions that make them.
    weights:         (batch, num_modalities) per-row modality weights (late, gated), columns
                     in sorted modality order; zero for absent modalities.
    """

    fused: Tensor
    unimodal_logits: dict[str, Tensor] | None
    weights: Tensor | None
