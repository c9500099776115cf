"""Samples and batches that carry a per-modality presence mask.

Shapes (named the same across the codebase):
    image  (channels, height, width) float32   -> batch (batch, channels, height, width)
    audio  (frames, features)        float32   -> batch (batch, frames, features)
    text   (tokens,)                 int64     -> batch (batch, tokens)
A missing modality is data: the sample leaves it out and the batch marks it absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mmfurnace.errors import InputError
from mmfurnace.modalities import SEQUENCE_MODALITIES

PAD_ID = 0


@dataclass
class Sample:
    """One example: the modalities it has, and its label.

    ``inputs`` holds only the modalities that are present; ``present`` is derived from it
    for the modalities the dataset declares. ``label`` is a () int64 class index or a
    (num_labels,) float32 multi-hot vector.
    """

    inputs: dict[str, Tensor]
    label: Tensor
    meta: dict[str, object] = field(default_factory=dict)

    def present(self, modalities: Sequence[str]) -> dict[str, bool]:
        return {m: m in self.inputs for m in modalities}


@dataclass
class Batch:
    """A collated batch.

    inputs:  modality -> tensor; only modalities present in at least one sample appear.
             Rows of absent samples hold padding (zeros / PAD_ID) and must be ignored.
    valid:   sequence modality -> (batch, seq) bool, True where a real frame/token is (False
             on padding; the opposite of torch's ``key_padding_mask``).
    present: every declared modality -> (batch,) bool.
    labels:  (batch,) int64 or (batch, num_labels) float32.
    """

    inputs: dict[str, Tensor]
    valid: dict[str, Tensor]
    present: dict[str, Tensor]
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def padding(self) -> dict[str, Tensor]:
        """The old name of :attr:`valid` (same masks, True on real steps), for code written
        against it; new code reads ``valid``."""
        return self.valid

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device, non_blocking=non_blocking) for k, v in d.items()}

        return Batch(
            inputs=move(self.inputs),
            valid=move(self.valid),
            present=move(self.present),
            labels=self.labels.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        # DataLoader(pin_memory=True) calls this on custom batch types.
        def pin(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.pin_memory() for k, v in d.items()}

        return Batch(pin(self.inputs), pin(self.valid), pin(self.present), self.labels.pin_memory())

    @property
    def modalities(self) -> list[str]:
        return sorted(self.present)


def collate_samples(samples: Sequence[Sample], modalities: Sequence[str]) -> Batch:
    """Stack samples into a Batch, padding variable-length audio/text and keeping the mask."""
    if not samples:
        raise InputError("cannot collate an empty list of samples")
    modalities = sorted(modalities)
    inputs: dict[str, Tensor] = {}
    valid: dict[str, Tensor] = {}
    present: dict[str, Tensor] = {}
    for modality in modalities:
        rows = [s.inputs.get(modality) for s in samples]
        present[modality] = torch.tensor([r is not None for r in rows], dtype=torch.bool)
        real = [r for r in rows if r is not None]
        if not real:
            continue
        if modality in SEQUENCE_MODALITIES:
            inputs[modality], valid[modality] = _pad_sequences(modality, rows)
        else:
            inputs[modality] = _stack_fixed(modality, rows, real[0])
    labels = torch.stack([torch.as_tensor(s.label) for s in samples])
    return Batch(inputs=inputs, valid=valid, present=present, labels=labels)


def _stack_fixed(modality: str, rows: list[Tensor | None], like: Tensor) -> Tensor:
    for r in rows:
        if r is not None and r.shape != like.shape:
            raise InputError(
                f"{modality}: samples in one batch differ in shape ({tuple(like.shape)} vs "
                f"{tuple(r.shape)}); resize them to one size in preprocessing"
            )
    zero = torch.zeros_like(like)
    return torch.stack([zero if r is None else r for r in rows])


def _pad_sequences(modality: str, rows: list[Tensor | None]) -> tuple[Tensor, Tensor]:
    real = [r for r in rows if r is not None]
    trailing = real[0].shape[1:]
    for r in real:
        if r.shape[1:] != trailing:
            raise InputError(
                f"{modality}: feature shape differs within a batch ({tuple(trailing)} vs "
                f"{tuple(r.shape[1:])})"
            )
    longest = max(max(int(r.shape[0]) for r in real), 1)
    fill = PAD_ID if real[0].dtype in (torch.int64, torch.int32) else 0
    out = torch.full((len(rows), longest, *trailing), fill, dtype=real[0].dtype)
    mask = torch.zeros(len(rows), longest, dtype=torch.bool)
    for i, r in enumerate(rows):
        if r is None:
            continue
        n = int(r.shape[0])
        out[i, :n] = r
        mask[i, :n] = True
    return out, mask
