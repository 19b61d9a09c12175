"""Datasets for segmentation: readers for the usual layouts, the synthetic default, transforms and checks.

``build_dataset(name, root, split, transform)`` returns a :class:`SegmentationDataset` whose items are
``(image float32 [3, H, W] normalised, mask int64 [H, W])``, mask values in ``0..num_classes-1`` or 255
(ignore). This package knows nothing of models.
"""

from __future__ import annotations

from autodeeplab.data.base import PairedFilesDataset, SegmentationDataset
from autodeeplab.data.checks import CheckReport, check_dataset, check_dataset_report
from autodeeplab.data.labels import IGNORE_INDEX, LabelMap
from autodeeplab.data.prepare import prepare_cityscapes
from autodeeplab.data.problems import DataProblem, DataProblemError
from autodeeplab.data.registry import (
    DATASET_NAMES,
    DEFAULT_DATASET,
    build_dataset,
    check_split,
    dataset_class,
    dataset_options,
)
from autodeeplab.data.splits import set_epoch
from autodeeplab.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    check_crop_size,
    denormalize_image,
    normalize_image,
)

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_DATASET",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CheckReport",
    "DataProblem",
    "DataProblemError",
    "EvalTransform",
    "LabelMap",
    "PairedFilesDataset",
    "SegmentationDataset",
    "TrainTransform",
    "build_dataset",
    "check_crop_size",
    "check_dataset",
    "check_dataset_report",
    "check_split",
    "dataset_class",
    "dataset_options",
    "denormalize_image",
    "normalize_image",
    "prepare_cityscapes",
    "set_epoch",
]
