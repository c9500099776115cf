"""MultimodalClassifier: encoders (one per modality) -> fusion -> head, with a presence mask."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mmfurnace.data.batch import Batch
from mmfurnace.errors import ConfigError, InputError
from mmfurnace.models.freeze import restore_eval
from mmfurnace.models.layers import Standardize, zero_absent
from mmfurnace.models.outputs import EncoderOutput, FusionOutput


class ClassifierOutput(NamedTuple):
    """logits:          (batch, num_classes).
    embeddings:      modality -> (batch, dim) pooled encoder output, for the modalities given;
                     rows where the modality is absent are computed from zeros and must be
                     masked with ``present`` by the loss.
    projected:       modality -> (batch, proj_dim), embeddings in the shared consistency space.
    fused:           (batch, fusion.out_dim).
    unimodal_logits: modality -> (batch, num_classes), from late fusion; else None.
    weights:         (batch, num_modalities) per-row modality weights (late, gated); else None.
    """

    logits: Tensor
    embeddings: dict[str, Tensor]
    projected: dict[str, Tensor]
    fused: Tensor
    unimodal_logits: dict[str, Tensor] | None
    weights: Tensor | None


class MultimodalClassifier(nn.Module):
    """Encoders -> fusion -> head. ``encode`` and ``fuse`` are separate so a server can run each
    encoder on its own device and the fusion + head elsewhere."""

    def __init__(
        self,
        *,
        encoders: nn.ModuleDict,
        fusion: nn.Module,
        head: nn.Module,
        modalities: Sequence[str],
        multilabel: bool = False,
        proj_dim: int = 32,
        feature_norm: str | bool = "none",
    ) -> None:
        super().__init__()
        self.modalities = sorted(modalities)
        if sorted(encoders.keys()) != self.modalities:
            raise ConfigError(
                f"encoders {sorted(encoders.keys())} do not match modalities {self.modalities}"
            )
        fusion_modalities = getattr(fusion, "modalities", self.modalities)
        if list(fusion_modalities) != self.modalities:
            raise ConfigError(
                f"fusion was built for {list(fusion_modalities)}, model has {self.modalities}"
            )
        self.encoders = encoders
        self.fusion = fusion
        self.head = head
        self.projections = nn.ModuleDict(
            {m: nn.Linear(encoders[m].out_dim, proj_dim) for m in self.modalities}
        )
        self.multilabel = multilabel
        # Pretrained encoders' outputs differ in scale by 50x and more (speech_embedding's
        # average |x| is ~12, EfficientNet's and MiniLM's ~0.2): the fusion would then weigh
        # the loudest modality most. A LayerNorm per modality, or per-feature standardisation
        # with train statistics (as the logistic-regression probe does), puts them on one
        # scale; it sits after the encoder, so a frozen encoder's cached features still apply.
        kind = {True: "layernorm", False: "none"}.get(feature_norm, feature_norm)  # type: ignore[call-overload]
        norms = {"layernorm": nn.LayerNorm, "standardize": Standardize}
        if kind != "none" and kind not in norms:
            raise ConfigError(f"feature_norm {feature_norm!r}: use none, layernorm or standardize")
        self.feature_norms = (
            nn.ModuleDict({m: norms[kind](int(encoders[m].out_dim)) for m in self.modalities})
            if kind != "none" else None
        )

    def train(self, mode: bool = True) -> MultimodalClassifier:
        """Train/eval mode; frozen encoder parts (models/freeze.py) stay in eval mode."""
        super().train(mode)
        restore_eval(self)
        return self

    def with_encoders(self, replacements: Mapping[str, nn.Module]) -> MultimodalClassifier:
        """A classifier that shares this one's fusion, head, projections and other encoders
        (the same parameter objects) but runs ``replacements[m]`` as the encoder of ``m``.
        Training it trains this one. Used to run a frozen encoder from cached features."""
        unknown = sorted(set(replacements) - set(self.modalities))
        if unknown:
            raise ConfigError(f"with_encoders: no modality {unknown} in {self.modalities}")
        view = copy.copy(self)  # shallow: the submodules are shared, not copied
        view._modules = dict(self._modules)  # its own table, so the swap below stays its own
        view.encoders = nn.ModuleDict(
            {m: replacements.get(m, self.encoders[m]) for m in self.modalities}
        )
        return view

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute encoder (and cross-attention fusion) activations in backward to save memory."""
        for encoder in self.encoders.values():
            encoder.set_grad_checkpointing(enabled)
        if hasattr(self.fusion, "set_grad_checkpointing"):
            self.fusion.set_grad_checkpointing(enabled)

    def encode(
        self, modality: str, x: Tensor, valid: Tensor | None = None, present: Tensor | None = None
    ) -> EncoderOutput:
        """Run one modality's encoder. x: that modality's batch tensor; valid (batch, seq) bool
        True=real; present (batch,) bool: absent rows are zeroed (and their valid mask cleared)
        first, so whatever they hold cannot reach any output or gradient."""
        if modality not in self.encoders:
            raise InputError(f"model has no encoder for {modality!r}; it has {self.modalities}")
        if present is not None:
            present = present.to(torch.bool)
            x = zero_absent(x, present)
            if valid is not None:
                valid = valid & present.unsqueeze(1)
        out = self.encoders[modality](x, valid)
        if self.feature_norms is None:
            return out
        norm = self.feature_norms[modality]
        return EncoderOutput(norm(out.sequence), norm(out.pooled), out.valid)

    def fuse(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        """Fusion + head: features of any subset of modalities -> logits (batch, num_classes)."""
        return self.head(self.fusion(features, present).fused)

    def forward(
        self,
        inputs: dict[str, Tensor],
        present: dict[str, Tensor],
        valid: dict[str, Tensor] | None = None,
    ) -> ClassifierOutput:
        """inputs: modality -> batch tensor (a modality left out is absent for every row);
        present: modality -> (batch,) bool; valid: sequence modality -> (batch, seq) bool, True=real."""
        unknown = sorted(set(inputs) - set(self.modalities))
        if unknown:
            raise InputError(
                f"inputs have modalities {unknown} the model was not built for ({self.modalities})"
            )
        if not inputs:
            raise InputError(f"inputs hold no modality; the model takes {self.modalities}")
        valid = valid or {}
        features = {
            m: self.encode(m, inputs[m], valid.get(m), present.get(m))
            for m in self.modalities
            if m in inputs
        }
        fusion_out: FusionOutput = self.fusion(features, present)
        embeddings = {m: f.pooled for m, f in features.items()}
        return ClassifierOutput(
            logits=self.head(fusion_out.fused),
            embeddings=embeddings,
            projected={m: self.projections[m](e) for m, e in embeddings.items()},
            fused=fusion_out.fused,
            unimodal_logits=fusion_out.unimodal_logits,
            weights=fusion_out.weights,
        )

    def forward_batch(self, batch: Batch) -> ClassifierOutput:
        return self(batch.inputs, batch.present, batch.valid)
