"""``mmfurnace.train(cfg)``, ``mmfurnace.compress(...)``, ``mmfurnace.export(...)`` and
``mmfurnace.serve(...)``: the packages of those names are callable.

The top-level API cannot hold plain functions under these names: importing the package
``mmfurnace.train`` sets the attribute ``mmfurnace.train`` to the package (Python's import
system does that for every submodule), which would replace a function of that name. So the
package itself is made callable, and calling it runs its entry point; everything else about it
(``mmfurnace.train.recipe``, ``from mmfurnace.export import RUNTIMES``) is unchanged.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class CallablePackage(types.ModuleType):
    """A package whose call runs the function named by its ``__entrypoint__`` ("module:name")."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return entrypoint(self)(*args, **kwargs)


def entrypoint(package: types.ModuleType) -> Any:
    """The function a callable package runs."""
    module, _, name = package.__entrypoint__.partition(":")
    return getattr(importlib.import_module(module), name)


def make_callable(package: str, target: str) -> None:
    """Make the (already imported) ``package`` callable: calling it calls ``target``."""
    module = sys.modules[package]
    module.__entrypoint__ = target
    module.__class__ = CallablePackage
