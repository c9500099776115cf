"""Multimodal data: preprocessors per modality, alignment, readers, packed cache, loader."""

from mmfurnace.data.batch import Batch, Sample, collate_samples

__all__ = ["Batch", "Sample", "collate_samples"]
