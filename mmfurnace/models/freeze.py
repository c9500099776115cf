"""Freezing an encoder, whole or all but its top blocks (``model.encoders.<m>.freeze``).

A frozen part gets ``requires_grad = False`` *and* stays in eval mode while the classifier
trains (``MultimodalClassifier.train`` honours the mark set here): its dropout, stochastic
depth and normalisation statistics are those of inference, so a frozen encoder is a fixed
function of its input. That is what lets the feature cache (``models/feature_cache.py``)
compute its outputs once.

``unfreeze_top=k`` keeps the last ``k`` of the encoder's ``freeze_groups()`` trainable.
An encoder that supports it lists its blocks, input to output::

    def freeze_groups(self) -> list[nn.Module]:  # e.g. [stem, block_0, ..., block_n, head]

Parameters outside every listed group stay frozen.
"""

from __future__ import annotations

from torch import nn

from mmfurnace.errors import ConfigError

KEEP_EVAL = "mmfurnace_keep_eval"  # attribute marking a module that must not leave eval mode


def freeze_(encoder: nn.Module, *, unfreeze_top: int = 0, name: str = "encoder") -> nn.Module:
    """Freeze ``encoder`` in place except its last ``unfreeze_top`` blocks; return it.

    ConfigError (naming ``name``) when ``unfreeze_top`` asks for more blocks than the encoder
    lists, or the encoder lists none."""
    if unfreeze_top < 0:
        raise ConfigError(f"{name}: unfreeze_top must be >= 0, got {unfreeze_top}")
    encoder.requires_grad_(False)
    if unfreeze_top == 0:
        keep_eval_(encoder)
        return encoder
    groups_fn = getattr(encoder, "freeze_groups", None)
    if groups_fn is None:
        raise ConfigError(
            f"{name}: {type(encoder).__name__} does not list its blocks, so unfreeze_top is not "
            "available for it; use freeze: true alone (whole encoder) or freeze: false"
        )
    groups = list(groups_fn())
    if unfreeze_top > len(groups):
        raise ConfigError(
            f"{name}: unfreeze_top {unfreeze_top} exceeds the {len(groups)} blocks of "
            f"{type(encoder).__name__}"
        )
    for group in groups[:-unfreeze_top]:
        keep_eval_(group)
    for group in groups[-unfreeze_top:]:
        group.requires_grad_(True)
    return encoder


def keep_eval_(module: nn.Module) -> None:
    """Mark ``module`` to stay in eval mode when its classifier is put in train mode."""
    setattr(module, KEEP_EVAL, True)
    module.eval()


def restore_eval(root: nn.Module) -> None:
    """Put every marked submodule of ``root`` back in eval mode (after ``root.train()``)."""
    for module in root.modules():
        if getattr(module, KEEP_EVAL, False):
            module.eval()


def is_frozen(encoder: nn.Module) -> bool:
    """True when the whole encoder is frozen: no trainable parameter and kept in eval mode,
    so its output is a fixed function of its input."""
    return getattr(encoder, KEEP_EVAL, False) and not any(
        p.requires_grad for p in encoder.parameters()
    )
