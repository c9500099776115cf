"""Datasets mmfurnace builds itself, offline, from sources that ship with its dependencies."""

from mmfurnace.data.builtin.digits_av import CLASS_NAMES, Degradation, build_digits_av_raw

__all__ = ["CLASS_NAMES", "Degradation", "build_digits_av_raw"]
