"""Builders that wire encoders, fusion and head from a ModelConfig and a DatasetInfo."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import ConfigError
from mmfurnace.models.classifier import MultimodalClassifier
from mmfurnace.models.config import DEFAULT_ENCODERS, EncoderConfig, ModelConfig, settings_taken
from mmfurnace.models.freeze import freeze_
from mmfurnace.models.registry import ENCODERS, FUSIONS


def build_encoder(modality: str, cfg: EncoderConfig, info: DatasetInfo) -> nn.Module:
    """The encoder ``cfg.name`` sized for ``info``'s ``modality`` input.

    The builder gets the keywords its signature names, from the input's shape and dtype, the
    vocabulary size and ``cfg``'s settings (so an encoder added later with a setting of its
    own gets it, and others never see it); a setting changed from its default that the
    builder does not take is a ConfigError naming it (EncoderConfig checks this at parse time).
    """
    if modality not in info.input_shapes:
        raise ConfigError(
            f"dataset has no input shape for {modality!r}; it has {sorted(info.input_shapes)}"
        )
    unused = cfg.unused_settings()
    if unused:
        raise ConfigError(f"model.encoders.{modality}: encoder {cfg.name!r} has no setting {', '.join(unused)}")
    builder = ENCODERS[cfg.name]
    offered = {
        "input_shape": tuple(info.input_shapes[modality]),
        "input_dtype": info.input_dtypes.get(modality, "float32"),
        "vocab_size": info.vocab_size,
        # layers/channels left unset (None): each builder has its own default
        **{k: v for k, v in cfg.settings().items() if v is not None or k not in ("layers", "channels")},
    }
    taken = settings_taken(builder, offered)
    try:
        encoder = builder(**(offered if taken is None else {k: offered[k] for k in taken}))
        if cfg.freeze:
            freeze_(encoder, unfreeze_top=cfg.unfreeze_top, name=cfg.name)
        return encoder
    except ConfigError as err:
        raise ConfigError(f"model.encoders.{modality}: {err}") from None


def build_fusion(cfg: ModelConfig, dims: dict[str, int], num_classes: int) -> nn.Module:
    """The fusion ``cfg.fusion`` for encoders of widths ``dims`` (modality -> out_dim)."""
    try:
        return FUSIONS[cfg.fusion](
            dims=dims,
            num_classes=num_classes,
            hidden_dim=cfg.hidden_dim,
            heads=cfg.heads,
            layers=cfg.layers,
            rank=cfg.rank,
            tensor_dim=cfg.tensor_dim,
            dropout=cfg.dropout,
            late_head=cfg.late_head,
        )
    except ConfigError as err:
        raise ConfigError(f"model.fusion: {err}") from None


def build_model(
    cfg: ModelConfig, info: DatasetInfo, modalities: Sequence[str] | None = None
) -> MultimodalClassifier:
    """A classifier over ``modalities`` (default: all of ``info.modalities``). One modality
    gives a unimodal model with the same fusion code path."""
    chosen = sorted(modalities if modalities is not None else info.modalities)
    if not chosen:
        raise ConfigError("model needs at least one modality")
    unknown = [m for m in chosen if m not in info.modalities]
    if unknown:
        raise ConfigError(
            f"modalities {unknown} are not in the dataset, which has {list(info.modalities)}"
        )
    missing = [m for m in chosen if m not in cfg.encoders]
    if missing:
        raise ConfigError(f"model.encoders has no entry for {missing}")
    encoders = nn.ModuleDict({m: build_encoder(m, cfg.encoders[m], info) for m in chosen})
    fusion = build_fusion(cfg, {m: encoders[m].out_dim for m in chosen}, info.num_classes)
    head = (
        nn.Identity()
        if getattr(fusion, "produces_logits", False)
        else nn.Linear(fusion.out_dim, info.num_classes)
    )
    return MultimodalClassifier(
        encoders=encoders,
        fusion=fusion,
        head=head,
        modalities=chosen,
        multilabel=info.multilabel,
        proj_dim=cfg.proj_dim,
        feature_norm=cfg.feature_norm,
    )


def small_config(fusion: str) -> ModelConfig:
    """A ModelConfig with every width at 32: fast enough for tests, demos and CPUs."""
    return ModelConfig(
        encoders={m: EncoderConfig(name=n, dim=32, heads=4) for m, n in DEFAULT_ENCODERS.items()},
        fusion=fusion,
        hidden_dim=32,
        heads=4,
        tensor_dim=8,
        proj_dim=16,
    )


def late_fusion_small(
    info: DatasetInfo, modalities: Sequence[str] | None = None
) -> MultimodalClassifier:
    return build_model(small_config("late"), info, modalities)


def cross_attention_small(
    info: DatasetInfo, modalities: Sequence[str] | None = None
) -> MultimodalClassifier:
    return build_model(small_config("cross_attention"), info, modalities)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_model(model: MultimodalClassifier) -> dict[str, object]:
    """Parameter counts per part: {"encoders": {modality: n}, "projections", "fusion", "head",
    "total", "trainable"} plus the class names of the fusion and encoders."""
    return {
        "modalities": list(model.modalities),
        "encoders": {m: count_params(e) for m, e in model.encoders.items()},
        "encoder_types": {m: type(e).__name__ for m, e in model.encoders.items()},
        "fusion_type": type(model.fusion).__name__,
        "projections": count_params(model.projections),
        "fusion": count_params(model.fusion),
        "head": count_params(model.head),
        "total": count_params(model),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
