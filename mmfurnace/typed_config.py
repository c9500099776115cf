"""Typed, validated config objects: strict pydantic models, YAML loading, dotted overrides.

Every section of the run config subclasses :class:`StrictModel`, so an unknown key or a value
of the wrong type is an error that names the key and what is allowed, never a silent default.
Override values are parsed as YAML (:func:`safe_load`: PyYAML's safe loader), never evaluated.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mmfurnace.errors import ConfigError

M = TypeVar("M", bound="StrictModel")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that reads 1e-3 and 3E5 as numbers: YAML 1.1 wants a dot in a
    float, so ``lr: 3e-4`` (in a file, an override or a mapping such as ``finetune={lr: 3e-4}``)
    would otherwise be the string "3e-4"."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def safe_load(text: str) -> Any:
    """YAML text -> Python data, safely (no object construction), exponent floats as numbers."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


class FieldError(ValueError):
    """Raised by a model validator about one field below the model: ``loc`` is that field's
    path relative to the model, so the error names it (``data.audio.n_mfcc``), not the model."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are rejected, assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; raise ConfigError naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (copied). Values are parsed as YAML."""
    result = _deep_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        parts = key.strip().split(".")
        try:
            value = safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from None
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {item!r}: {where} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def parse(
    model: type[M],
    raw: dict[str, Any],
    *,
    source: str = "config",
    overrides: list[str] | None = None,
) -> M:
    """Validate ``raw`` into ``model``; raise ConfigError listing every bad key with allowed values.

    ``overrides`` are the ``key=value`` items already applied to ``raw``: a bad key that one
    of them set is blamed on it (``[set by override 'train.epoch=3']``), not on ``source``.
    """
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        lines = [_describe(model, e, overrides or []) for e in err.errors()]
        from_overrides = [_OVERRIDE_MARK in line for line in lines]
        if all(from_overrides):
            what = "invalid override" if len(lines) == 1 else "invalid overrides"
        elif any(from_overrides):
            what = "invalid config and overrides"
            lines = [ln if o else f"{ln} [in {source}]" for ln, o in zip(lines, from_overrides, strict=True)]
        else:
            what = "invalid config"
        raise ConfigError(f"{source}: {what}\n  " + "\n  ".join(lines)) from None


def _describe(model: type[BaseModel], error: dict[str, Any], overrides: list[str]) -> str:
    loc = tuple(str(p) for p in error["loc"])
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        loc += cause.loc
    key = ".".join(loc) or "<root>"
    origin = _origin(loc, overrides)
    if error["type"] == "extra_forbidden":
        allowed = _fields_at(model, error["loc"][:-1])
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"{key}: unknown key{hint}{origin}"
    if isinstance(cause, FieldError):
        return f"{key}: {cause}{origin}"
    return f"{key}: {error['msg']} (got {error.get('input')!r}){origin}"


_OVERRIDE_MARK = " [set by override "


def _origin(loc: tuple[str, ...], overrides: list[str]) -> str:
    """`` [set by override 'k=v']`` when the last override setting ``loc`` (or a section
    above it) is one of ``overrides``; else nothing: the error is the source's."""
    for item in reversed(overrides):
        path = tuple(p.strip() for p in item.partition("=")[0].strip().split("."))
        if loc[: len(path)] == path:
            return f"{_OVERRIDE_MARK}{item!r}]"
    return ""


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (sub)model found by walking ``loc`` through annotations."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            current = _submodel(current)
            if current is None:
                return []
        field = current.model_fields.get(str(part))
        if field is None:
            # dict[str, Submodel]: the part is a key, stay on the value type
            continue
        current = _submodel(field.annotation)
        if current is None:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _submodel(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}
