"""Cityscapes (fine annotations): 19 train classes, every other label id ignored.

Layout under the data root::

    leftImg8bit/{train,val,test}/<city>/<name>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<name>_gtFine_labelIds.png       (ids 0..33: LABEL_ID_TO_TRAIN_ID)
    gtFine/{train,val,test}/<city>/<name>_gtFine_labelTrainIds.png  (used as is when present)

Half resolution (the paper's search: 512×1024 images, 321×321 crops) is done once, not on every read:
``autodeeplab data prepare --dataset cityscapes --data-root FULL --out HALF --scale 0.5`` writes a resized
copy in this same layout (labels as ``*_labelTrainIds.png``), which is then read with ``--data-root HALF``.
See :mod:`autodeeplab.data.prepare`.
"""

from __future__ import annotations

from pathlib import Path

from autodeeplab.data.base import PairedFilesDataset
from autodeeplab.data.labels import IGNORE_INDEX, LabelMap
from autodeeplab.data.problems import DataProblem
from autodeeplab.data.scan import Sample, files_by_key, pair_by_key
from autodeeplab.fileio import loads_json

CLASS_NAMES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
PALETTE: list[tuple[int, int, int]] = [
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
]
NUM_LABEL_IDS = 34  # label ids 0..33 of the official table (licence plate, id -1, is never drawn)
# The official label id → train id table (cityscapesScripts labels.py) for the 19 evaluated classes.
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_ID_SUFFIX = "_gtFine_labelIds.png"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"
FULL_SIZE = (1024, 2048)  # (H, W) of the original images
PREPARED_MARKER = ".autodeeplab-prepared.json"

LABEL_IDS = LabelMap(
    {i: LABEL_ID_TO_TRAIN_ID.get(i, IGNORE_INDEX) for i in range(NUM_LABEL_IDS)},
    f"label ids 0..{NUM_LABEL_IDS - 1}",
)
TRAIN_IDS = LabelMap.identity(len(CLASS_NAMES))


class CityscapesDataset(PairedFilesDataset):
    """Cityscapes fine. Sizes are 1024×2048 (H×W), or those of a prepared copy (see module docstring)."""

    name = "cityscapes"
    splits = ("train", "val", "test")
    class_names = CLASS_NAMES
    palette = PALETTE
    image_size = FULL_SIZE
    label_map = LABEL_IDS
    layout = (
        "Cityscapes layout: <root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png with labels in"
        " <root>/gtFine/<split>/<city>/*_gtFine_labelIds.png (or *_gtFine_labelTrainIds.png)"
    )

    def _scan(self) -> tuple[list[Sample], list[DataProblem]]:
        self.image_size = prepared_size(self.root)
        image_dir, label_dir = self.root / "leftImg8bit" / self.split, self.root / "gtFine" / self.split
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                return [], [self.wrong_layout(folder)]
        images, problems = files_by_key(image_dir, (".png",), _city_key(IMAGE_SUFFIX), recursive=True)
        train_ids, more = files_by_key(label_dir, (".png",), _city_key(TRAIN_ID_SUFFIX), recursive=True)
        label_ids, most = files_by_key(label_dir, (".png",), _city_key(LABEL_ID_SUFFIX), recursive=True)
        labels = label_ids | train_ids  # a *_labelTrainIds.png wins over the *_labelIds.png of the same frame
        samples, orphans = pair_by_key(
            images,
            labels,
            lambda k: label_dir / f"{k}{LABEL_ID_SUFFIX}",
            lambda k: image_dir / f"{k}{IMAGE_SUFFIX}",
        )
        return samples, problems + more + most + orphans

    def label_map_for(self, label_path: Path) -> LabelMap:
        return TRAIN_IDS if label_path.name.endswith(TRAIN_ID_SUFFIX) else LABEL_IDS


def _city_key(suffix: str):
    """Key ``<city>/<name>`` so that frames of different cities never collide."""

    def key(path: Path) -> str | None:
        return f"{path.parent.name}/{path.name[: -len(suffix)]}" if path.name.endswith(suffix) else None

    return key


def prepared_size(root: Path) -> tuple[int, int]:
    """(H, W) of the images under ``root``: full size, or the size recorded by ``data prepare``."""
    marker = root / PREPARED_MARKER
    if not marker.is_file():
        return FULL_SIZE
    try:
        scale = float(loads_json(marker.read_text(encoding="utf-8"))["scale"])
    except (OSError, ValueError, KeyError, TypeError):
        return FULL_SIZE
    return round(FULL_SIZE[0] * scale), round(FULL_SIZE[1] * scale)
