"""Datasets (official on-disk layouts), joint transforms and the DataModule."""

from segloss.data.cityscapes import CityscapesDataset
from segloss.data.datamodule import SegmentationDataModule
from segloss.data.folders import ImageMaskFolderDataset
from segloss.data.medical import MSDSliceDataset
from segloss.data.synthetic import SyntheticCity
from segloss.data.voc import VOCDataset
from segloss.errors import DatasetFormatError, DatasetNotFoundError

__all__ = [
    "CityscapesDataset",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "ImageMaskFolderDataset",
    "MSDSliceDataset",
    "SegmentationDataModule",
    "SyntheticCity",
    "VOCDataset",
]
