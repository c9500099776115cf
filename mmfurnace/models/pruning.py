"""How a fusion declares its structured (channel) pruning, next to the fusion itself.

Structured pruning (:mod:`mmfurnace.compress.channels`) narrows every encoder and then the
fusion, and only the fusion knows how its layers read the encoders and each other. So each
fusion module registers a :class:`FusionPruner` for its class in ``FUSION_PRUNERS`` with the
:func:`fusion_pruner` decorator, in its own file:

    @fusion_pruner(EarlyFusion, shrink_input=shrink_proj_input)
    def _prune(f: EarlyFusion, pr: Chooser) -> Tensor: ...

``shrink_input(fusion, modality, keep)`` drops the input columns that read encoder
``modality``'s output channels not in ``keep``; ``prune(fusion, pr)`` narrows the fusion itself
with the chooser's picks and returns the kept output channels (None when the output width is
unchanged, e.g. a fusion that outputs logits). A fusion without one cannot be channel-pruned:
``FUSION_PRUNERS[name]`` raises ConfigError listing the fusions that can.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from torch import Tensor, nn

from mmfurnace.models.registry import FUSION_PRUNERS
from mmfurnace.models.surgery import slice_linear_


class Chooser(Protocol):
    """What a fusion's pruner asks the pruning run (its ratio, importance, rounding)."""

    def count(self, n: int, multiple: int = 1) -> int:
        """How many of ``n`` channels to keep (a multiple of ``multiple``)."""
        ...

    def choose(self, parts: Sequence[tuple[Tensor, int]], n: int, keep: int) -> Tensor:
        """Sorted indices of the ``keep`` most important of ``n`` channels, channel c being the
        slice ``t.select(dim, c)`` of every (t, dim) in ``parts``."""
        ...

    def stream_keep(self, parts: list[tuple[Tensor, int]], blocks: Iterable[nn.TransformerEncoderLayer],
                    width: int) -> Tensor:
        """Kept channels of a transformer's residual stream (every tensor reading it votes)."""
        ...

    def encoder_layer(self, layer: nn.TransformerEncoderLayer, stream: Tensor) -> None:
        """Shrink a TransformerEncoderLayer to residual channels ``stream`` (heads, FFN too)."""
        ...


class FusionPruner(NamedTuple):
    shrink_input: Callable[[Any, str, Tensor], None]
    prune: Callable[[Any, Chooser], Tensor | None]


def fusion_pruner(
    fusion: type[nn.Module], *, shrink_input: Callable[[Any, str, Tensor], None]
) -> Callable[[Callable[[Any, Chooser], Tensor | None]], Callable[[Any, Chooser], Tensor | None]]:
    """Register the decorated ``prune(fusion, chooser)`` and ``shrink_input`` for ``fusion``
    (by its class name) in ``FUSION_PRUNERS``."""

    def register(prune: Callable[[Any, Chooser], Tensor | None]) -> Callable[[Any, Chooser], Tensor | None]:
        FUSION_PRUNERS.register(fusion.__name__)(FusionPruner(shrink_input, prune))
        return prune

    return register


def shrink_proj_input(fusion: Any, modality: str, keep: Tensor) -> None:
    """For fusions whose modality ``m`` enters through the Linear ``fusion.proj[m]``."""
    slice_linear_(fusion.proj[modality], inp=keep)
