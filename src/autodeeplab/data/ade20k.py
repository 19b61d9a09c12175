"""ADE20K SceneParsing (``ADEChallengeData2016``): 150 classes; stored 0 = "other" → ignore, 1..150 → 0..149.

Layout under the data root (the ``ADEChallengeData2016`` folder, or a folder that contains it)::

    images/training/*.jpg        annotations/training/*.png
    images/validation/*.jpg      annotations/validation/*.png

Split ``train`` reads ``training``, ``val`` reads ``validation``; images and labels are matched by file stem.
The palette is the VOC colour map shifted by one (class ``k`` gets colour ``k + 1``): ADE20K has no
official one.
"""

from __future__ import annotations

from pathlib import Path

from autodeeplab.data.base import PairedFilesDataset, Transform
from autodeeplab.data.labels import IGNORE_INDEX, LabelMap, bit_palette
from autodeeplab.data.problems import DataProblem
from autodeeplab.data.scan import Sample, files_by_key, pair_by_key, stem_key

# fmt: off
CLASS_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)
# fmt: on
SPLIT_FOLDERS = {"train": "training", "val": "validation"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
OTHER = 0  # stored value of unlabelled / "other" pixels


def _resolve_root(root: Path) -> Path:
    inner = root / "ADEChallengeData2016"
    return inner if inner.is_dir() else root


class ADE20KDataset(PairedFilesDataset):
    """ADE20K SceneParsing. Image sizes vary: ``image_size`` is the largest of the split's (file headers)."""

    name = "ade20k"
    splits = tuple(SPLIT_FOLDERS)
    class_names = CLASS_NAMES
    palette = bit_palette(len(CLASS_NAMES) + 1)[1:]
    image_size = property(PairedFilesDataset.largest_image_size)  # sizes vary: the largest listed
    label_map = LabelMap(
        {OTHER: IGNORE_INDEX} | {k + 1: k for k in range(len(CLASS_NAMES))},
        f"1..{len(CLASS_NAMES)}, or {OTHER} (other, ignored)",
    )
    layout = (
        "ADE20K SceneParsing layout: <root>/images/{training,validation}/*.jpg with labels in"
        " <root>/annotations/{training,validation}/*.png"
    )

    def __init__(
        self,
        root: str | Path | None,
        split: str,
        transform: Transform | None = None,
        seed: int = 0,
        strict: bool = True,
    ) -> None:
        super().__init__(
            None if root is None else _resolve_root(Path(root).expanduser()), split, transform, seed, strict
        )

    def _scan(self) -> tuple[list[Sample], list[DataProblem]]:
        folder = SPLIT_FOLDERS[self.split]
        image_dir, label_dir = self.root / "images" / folder, self.root / "annotations" / folder
        for path in (image_dir, label_dir):
            if not path.is_dir():
                return [], [self.wrong_layout(path)]
        images, problems = files_by_key(image_dir, IMAGE_SUFFIXES, stem_key)
        labels, more = files_by_key(label_dir, (".png",), stem_key)
        samples, orphans = pair_by_key(
            images, labels, lambda k: label_dir / f"{k}.png", lambda k: image_dir / f"{k}.jpg"
        )
        return samples, problems + more + orphans
