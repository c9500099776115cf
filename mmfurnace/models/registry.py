"""The model registries: ``ENCODERS["cnn1d"]`` and ``FUSIONS["late"]`` map a name to a builder.

A registered builder is a plain function taking keyword arguments only (timm's model
entrypoints). Every encoder builder is called with the same keywords — ``input_shape``,
``input_dtype``, ``vocab_size``, ``dim``, ``layers``, ``heads``, ``dropout``, ``path`` — and uses
the ones it needs; every fusion builder gets ``dims``, ``num_classes``, ``hidden_dim``,
``heads``, ``layers``, ``rank``, ``tensor_dim``, ``dropout``. An unknown name raises ConfigError
listing the known ones.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mmfurnace.registry import Registry

ENCODERS: Registry[Callable[..., nn.Module]] = Registry("encoder")
FUSIONS: Registry[Callable[..., nn.Module]] = Registry("fusion")
