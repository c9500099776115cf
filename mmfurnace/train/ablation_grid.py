"""Ablation grids: a :class:`ConfigVariant` (a name plus dotted overrides of a base run config), and
the parsing and cartesian expansion of ``key=[v1,v2]`` grids into named variants."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmfurnace.errors import ConfigError
from mmfurnace.typed_config import safe_load

_NAME_OK = re.compile(r"[^A-Za-z0-9._+=,-]")


@dataclass(frozen=True)
class ConfigVariant:
    """One variant of the base run config in an ablation: a name (also its folder name) and
    the dotted overrides that make it."""

    name: str
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", tuple(self.overrides))
        if not self.name or self.name in (".", "..") or _NAME_OK.search(self.name):
            raise ConfigError(
                f"variant name {self.name!r} must be non-empty and use only letters, digits and ._+=,-"
            )
        for item in self.overrides:
            if "=" not in item:
                raise ConfigError(f"variant {self.name}: override {item!r} is not key.path=value")


# ----------------------------------------------------------------------------- grids


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """Parse command-line grid specs into ``{dotted key: [values]}``.

    Syntax, one spec per key: ``key.path=V1,V2,...``. Values are YAML (``0.1`` is a float,
    ``true`` a bool, ``early`` a string, ``[audio, image]`` a list). Values are separated by
    commas outside brackets, or, when the spec contains ``|``, by ``|`` only. So::

        model.fusion=early,late                       -> ["early", "late"]
        train.alpha=0,0.1                             -> [0, 0.1]
        data.modalities=[image]|[audio,image,text]    -> [["image"], ["audio", "image", "text"]]
        data.modalities=[image],[audio,text]          -> [["image"], ["audio", "text"]]
        train.lr=1e-3,3e-3                            -> [0.001, 0.003]

    Raises ConfigError for a spec without ``=``, an empty value, invalid YAML or a key given
    twice.
    """
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"grid spec {spec!r} is not of the form key.path=value1,value2")
        if key in grid:
            raise ConfigError(f"grid spec {spec!r}: {key} is given twice")
        pieces = text.split("|") if "|" in text else _split_top_level(text)
        values = []
        for piece in pieces:
            if not piece.strip():
                raise ConfigError(f"grid spec {spec!r}: empty value (check for a stray ',' or '|')")
            try:
                values.append(safe_load(piece))
            except yaml.YAMLError as err:
                raise ConfigError(f"grid spec {spec!r}: {piece!r} is not valid YAML: {err}") from None
        grid[key] = values
    return grid


def _split_top_level(text: str) -> list[str]:
    pieces, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    return pieces


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[ConfigVariant]:
    """The cartesian product of ``grid`` (dotted key -> values) as named variants.

    The first key varies slowest. Names read ``fusion=early,alpha=0.1,modalities=audio+image``:
    the last part of each key (the whole key when two keys share a last part), list values
    joined by ``+``. An empty grid gives the single variant ``base`` with no overrides.
    """
    if not grid:
        return [ConfigVariant("base")]
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"grid key {key}: expected a non-empty list of values, got {values!r}")
    short = {key: key.rsplit(".", 1)[-1] for key in grid}
    labels = {k: (s if list(short.values()).count(s) == 1 else k) for k, s in short.items()}
    variants: list[ConfigVariant] = []
    seen: set[str] = set()
    for combo in itertools.product(*grid.values()):
        pairs = list(zip(grid, combo, strict=True))
        name = ",".join(f"{labels[k]}={_name_value(v)}" for k, v in pairs)
        name = _NAME_OK.sub("_", name)
        base, n = name, 2
        while name in seen:
            name, n = f"{base}-{n}", n + 1
        seen.add(name)
        variants.append(ConfigVariant(name, tuple(f"{k}={format_value(v)}" for k, v in pairs)))
    return variants


def format_value(value: Any) -> str:
    """Write ``value`` as the YAML text an override needs; ``safe_load`` reads it back."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{format_value(k)}: {format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        try:
            plain = safe_load(value) == value and not any(c in value for c in ",[]{}#")
        except yaml.YAMLError:
            plain = False
        return value if plain else json.dumps(value)
    if isinstance(value, float):
        return _float_text(value)
    return json.dumps(value if not isinstance(value, Path) else str(value))


def _float_text(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:  # YAML 1.1 needs the dot: 1e-05 -> 1.0e-05
        text = f"{mantissa}.0e{exponent}"
    return text


def _name_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_name_value(v) for v in value) or "none"
    if isinstance(value, dict):
        return "+".join(f"{k}-{_name_value(v)}" for k, v in value.items()) or "none"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return str(value)
