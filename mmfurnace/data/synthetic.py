"""Random samples shaped like a dataset, for profiling and benchmarks without the real data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from mmfurnace.data.batch import Sample


class SyntheticDataset(Dataset):
    """``size`` random Samples shaped for ``info`` (every modality present); sequence
    modalities get ``lengths[modality]`` steps. For profiling without the real data."""

    def __init__(self, info: Any, size: int, *, lengths: Mapping[str, int], modalities: Sequence[str] | None = None) -> None:
        self.info = info
        self.size = size
        self.modalities = sorted(modalities or info.modalities)
        self.lengths = dict(lengths)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Sample:
        g = torch.Generator().manual_seed(i)
        inputs = {}
        for m in self.modalities:
            shape = [self.lengths.get(m, 16) if d is None else d for d in self.info.input_shapes[m]]
            if self.info.input_dtypes.get(m, "float32").startswith("int"):
                inputs[m] = torch.randint(1, max(int(self.info.vocab_size or 2), 2), shape, generator=g)
            else:
                inputs[m] = torch.randn(shape, generator=g)
        if self.info.multilabel:
            label = (torch.rand(self.info.num_classes, generator=g) > 0.5).float()
        else:
            label = torch.tensor(i % self.info.num_classes)
        return Sample(inputs=inputs, label=label)
