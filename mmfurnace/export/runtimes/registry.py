"""RUNTIMES: backend name -> Runtime class (``RUNTIMES["onnxruntime"](export_dir, **options)``)."""

from __future__ import annotations

from mmfurnace.registry import Registry

RUNTIMES: Registry[type] = Registry("runtime")
