"""Seeing a dataset with only some of its modalities (a unimodal baseline, an ablation)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from torch.utils.data import Dataset

from mmfurnace.errors import ConfigError


class ModalityView(Dataset):
    """A dataset seen with only ``keep`` of its modalities (its ``info`` says so too)."""

    def __init__(self, dataset: Dataset, keep: Sequence[str]) -> None:
        info = dataset.info
        self.dataset, self.keep = dataset, tuple(keep)
        self.info = replace(
            info,
            modalities=self.keep,
            input_shapes={m: s for m, s in info.input_shapes.items() if m in keep},
            input_dtypes={m: d for m, d in info.input_dtypes.items() if m in keep},
            vocab_size=info.vocab_size if "text" in keep else None,
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        sample = self.dataset[index]
        return replace(sample, inputs={m: x for m, x in sample.inputs.items() if m in self.keep})


def restrict_modalities(datasets: Mapping[str, Dataset], modalities: Sequence[str]) -> dict[str, Dataset]:
    """Each split seen with only the ``modalities`` it has; ConfigError when none is left."""
    out: dict[str, Dataset] = {}
    for split, dataset in datasets.items():
        have = tuple(dataset.info.modalities)
        keep = tuple(m for m in have if m in modalities)
        if not keep:
            raise ConfigError(f"data.modalities {list(modalities)}: the {split} dataset has only {list(have)}")
        out[split] = dataset if keep == have else ModalityView(dataset, keep)
    return out
