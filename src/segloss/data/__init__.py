"""Datasets (official on-disk layouts), joint transforms and the DataModule.

The names below are imported on first use (PEP 562), so that ``segloss-synthetic`` — which needs only
numpy and PIL — does not pay for importing torch and Lightning.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "CityscapesDataset": "segloss.data.cityscapes",
    "SegmentationDataModule": "segloss.data.datamodule",
    "ImageMaskFolderDataset": "segloss.data.folders",
    "MSDSliceDataset": "segloss.data.medical",
    "MSDVolumeDataset": "segloss.data.volumes",
    "SyntheticCity": "segloss.data.synthetic",
    "VOCDataset": "segloss.data.voc",
    "DatasetFormatError": "segloss.errors",
    "DatasetNotFoundError": "segloss.errors",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
