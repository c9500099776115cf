"""Packed on-disk cache of preprocessed samples, read back through memory maps: written by
:mod:`.cache_write`, read by :mod:`.cache_read`, checked by :mod:`.cache_verify`.

Layout of a cache directory (format version ``FORMAT_VERSION``)::

    <root>/
      <modality>.npy   every present sample's tensor for that modality, concatenated along
                       axis 0: image (sum of channels, height, width), audio
                       (sum of frames, features), text (sum of tokens,). A sample's tensor is
                       ``array[offset : offset + length]``.
      index.npz        per sample i (all splits, in write order):
                         <modality>_offset  (samples,) int64  row where its tensor starts
                         <modality>_length  (samples,) int64  rows it spans (0 when absent)
                         <modality>_present (samples,) bool
                         labels  (samples,) int64 class index, or (samples, classes) float32
                         split   (samples,) int16 index into info.json "splits"
                         ids     (samples,) str
      info.json        {"format": "mmfurnace-packed", "version": 1, "info": DatasetInfo,
                        "splits": [...], "counts": {split: n}, "num_samples": n,
                        "arrays": {modality: {"dtype", "shape"}}}

``info.json`` is written last and the whole directory is built beside the target and swapped
into place (:func:`mmfurnace.io.atomic_dir`), so a directory at the target path that has an
``info.json`` is complete.
"""

from __future__ import annotations

from mmfurnace.data.cache_read import (
    FORMAT_NAME,
    FORMAT_VERSION,
    REBUILD_HINT,
    SPLIT_ORDER,
    PackedDataset,
    read_header,
)
from mmfurnace.data.cache_verify import verify_packed
from mmfurnace.data.cache_write import pack_datasets, write_packed

# The cache is written, read and verified in three modules; this one is the import path for all.
__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "REBUILD_HINT", "SPLIT_ORDER", "PackedDataset",
           "pack_datasets", "read_header", "verify_packed", "write_packed"]
