"""The model registries: ``ENCODERS["cnn1d"]`` and ``FUSIONS["late"]`` map a name to a builder.

A registered builder is a plain function taking keyword arguments only (timm's model
entrypoints). An encoder builder names in its signature what it uses, out of ``input_shape``,
``input_dtype``, ``vocab_size`` and the EncoderConfig settings (``dim``, ``layers``, ``heads``,
``dropout``, ``channels``, ``path``, ...), and gets just those; a setting it does not name,
changed from its default, is a ConfigError. Every fusion builder gets ``dims``, ``num_classes``, ``hidden_dim``,
``heads``, ``layers``, ``rank``, ``tensor_dim``, ``dropout``, ``late_head``. An unknown name raises ConfigError
listing the known ones.

``FUSION_PRUNERS[fusion class name]`` holds how structured pruning narrows that fusion; each
fusion registers its own next to itself (:mod:`mmfurnace.models.pruning`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from mmfurnace.registry import Registry

ENCODERS: Registry[Callable[..., nn.Module]] = Registry("encoder")
FUSIONS: Registry[Callable[..., nn.Module]] = Registry("fusion")
FUSION_PRUNERS: Registry[Any] = Registry("fusion with channel pruning")
