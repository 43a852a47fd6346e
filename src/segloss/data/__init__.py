"""Datasets (official on-disk layouts), joint transforms and the DataModule."""

from segloss.data.cityscapes import CityscapesDataset
from segloss.data.datamodule import SegmentationDataModule
from segloss.data.synthetic import SyntheticCity
from segloss.errors import DatasetFormatError, DatasetNotFoundError

__all__ = [
    "CityscapesDataset",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "SegmentationDataModule",
    "SyntheticCity",
]
