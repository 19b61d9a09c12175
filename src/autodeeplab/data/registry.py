"""Dataset names → reader classes, and :func:`build_dataset`: the one way the package opens a dataset."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from autodeeplab.data.ade20k import ADE20KDataset
from autodeeplab.data.base import SegmentationDataset, Transform
from autodeeplab.data.camvid import CamVidDataset
from autodeeplab.data.cityscapes import CityscapesDataset
from autodeeplab.data.folder import FolderDataset
from autodeeplab.data.synthetic import SyntheticDataset
from autodeeplab.data.voc import VOCDataset
from autodeeplab.data.volumes import MSDDataset, NiftiFolderDataset
from autodeeplab.errors import ConfigError

READERS: dict[str, type[SegmentationDataset]] = {
    "synthetic": SyntheticDataset,
    "camvid": CamVidDataset,
    "cityscapes": CityscapesDataset,
    "voc": VOCDataset,
    "ade20k": ADE20KDataset,
    "folder": FolderDataset,
    "nifti": NiftiFolderDataset,
    "msd": MSDDataset,
}
DATASET_NAMES: tuple[str, ...] = tuple(READERS)
"""Names accepted by ``--dataset``; ``synthetic`` (the first) is the default and needs no data root."""
DEFAULT_DATASET = DATASET_NAMES[0]

# Arguments every reader takes positionally or that build_dataset passes itself.
_COMMON = {"self", "root", "split", "transform"}


def dataset_class(name: str) -> type[SegmentationDataset]:
    """The reader class of ``name``; ConfigError naming the ``dataset`` field when unknown."""
    try:
        return READERS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"dataset: {name!r} is not a known dataset (choose from: {', '.join(DATASET_NAMES)})"
        ) from None


def dataset_options(name: str) -> tuple[str, ...]:
    """Keyword options the reader of ``name`` accepts (e.g. ``seed``, ``strict``, ``num_samples``)."""
    parameters = inspect.signature(dataset_class(name).__init__).parameters
    return tuple(p for p in parameters if p not in _COMMON)


def check_split(name: str, root: str | Path | None, split: str, field: str = "split") -> None:
    """Refuse an unknown dataset ``name`` or a ``split`` it does not offer under ``root``, before any file
    is listed: a :class:`ConfigError` naming ``field`` (e.g. ``data.val_split``) and the splits to choose."""
    dataset_class(name).check_split_name(root, split, field)


def build_dataset(
    name: str,
    root: str | Path | None,
    split: str,
    transform: Transform | None = None,
    **options: Any,
) -> SegmentationDataset:
    """Open split ``split`` of dataset ``name`` stored under ``root`` (``None`` for ``synthetic``).

    ``options`` go to the reader: all take ``seed`` (augmentation; also content for synthetic) and ``strict``
    (raise the first listing problem, default True); ``synthetic`` takes ``num_samples`` and ``size``; ``voc``
    takes ``augmented``. Unknown options, names and splits raise :class:`ConfigError` naming the field;
    broken data raise :class:`~autodeeplab.errors.DataError` naming the file.
    """
    reader = dataset_class(name)
    allowed = dataset_options(name)
    for key in options:
        if key not in allowed:
            raise ConfigError(f"{key}: not an option of the {name} dataset (options: {', '.join(allowed)})")
    return reader(root, split, transform, **options)
