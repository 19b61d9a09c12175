"""PASCAL VOC 2012 segmentation: 21 classes (background + 20), value 255 = object boundary (ignored).

Layout under the data root (the ``VOC2012`` folder, or a folder that contains ``VOC2012/``)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png            palette PNGs: the palette index is the class
    SegmentationClassAug/<id>.png         optional, SBD-augmented labels: used instead when present
    ImageSets/Segmentation/{train,val,trainval}.txt   (and train_aug.txt / trainval_aug.txt if you add them)

Palette PNGs decode to their indices directly (PIL mode ``P``). Labels saved as RGB pictures are decoded
through the VOC colour map (:func:`~autodeeplab.data.labels.bit_palette`), boundary colour (224, 224, 192) →
ignore. Pass ``augmented=False`` to use ``SegmentationClass`` even when ``SegmentationClassAug`` exists.
"""

from __future__ import annotations

from pathlib import Path

from autodeeplab.data.base import PairedFilesDataset, Transform
from autodeeplab.data.labels import LabelMap, bit_palette
from autodeeplab.data.problems import DataProblem, problem
from autodeeplab.data.scan import Sample, image_without_label, label_without_image

CLASS_NAMES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "dining table",
    "dog",
    "horse",
    "motorbike",
    "person",
    "potted plant",
    "sheep",
    "sofa",
    "train",
    "tv/monitor",
)
VOC_COLOURS = bit_palette(256)
PALETTE = VOC_COLOURS[: len(CLASS_NAMES)]
BOUNDARY = 255
BASE_SPLITS = ("train", "val", "trainval")
EXTRA_SPLITS = ("train_aug", "trainval_aug")  # offered when their list file exists
LIST_DIR = Path("ImageSets") / "Segmentation"


def _resolve_root(root: Path) -> Path:
    for inner in (root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if inner.is_dir():
            return inner
    return root


class VOCDataset(PairedFilesDataset):
    """PASCAL VOC 2012 (optionally SBD-augmented).

    Image sizes vary (at most 500×500), so ``image_size`` is the largest height and width of the split's
    images, read from the JPEG headers when a crop is checked: on the real data a 513 crop at the paper's
    largest scale 2.0 passes and a 3000 one is refused.
    """

    name = "voc"
    splits = BASE_SPLITS + EXTRA_SPLITS
    class_names = CLASS_NAMES
    palette = PALETTE
    image_size = property(PairedFilesDataset.largest_image_size)  # sizes vary: the largest listed
    label_map = LabelMap.identity(len(CLASS_NAMES), ignore_values=(BOUNDARY,))
    colour_labels = {colour: index for index, colour in enumerate(PALETTE)} | {
        VOC_COLOURS[BOUNDARY]: BOUNDARY
    }
    layout = (
        "PASCAL VOC 2012 layout: <root>/JPEGImages/<id>.jpg, <root>/SegmentationClass/<id>.png"
        " (or SegmentationClassAug/) and <root>/ImageSets/Segmentation/<split>.txt"
    )

    def __init__(
        self,
        root: str | Path | None,
        split: str,
        transform: Transform | None = None,
        seed: int = 0,
        strict: bool = True,
        augmented: bool = True,
    ) -> None:
        self.augmented = augmented
        super().__init__(
            None if root is None else _resolve_root(Path(root).expanduser()), split, transform, seed, strict
        )

    @classmethod
    def available_splits(cls, root: str | Path | None) -> tuple[str, ...]:
        if root is None:
            return BASE_SPLITS
        lists = _resolve_root(Path(root).expanduser()) / LIST_DIR
        return BASE_SPLITS + tuple(s for s in EXTRA_SPLITS if (lists / f"{s}.txt").is_file())

    def _scan(self) -> tuple[list[Sample], list[DataProblem]]:
        image_dir = self.root / "JPEGImages"
        aug_dir = self.root / "SegmentationClassAug"
        label_dir = aug_dir if self.augmented and aug_dir.is_dir() else self.root / "SegmentationClass"
        list_file = self.root / LIST_DIR / f"{self.split}.txt"
        for path in (image_dir, label_dir, list_file):
            if not path.exists():
                return [], [self.wrong_layout(path)]
        samples: list[Sample] = []
        problems: list[DataProblem] = []
        for number, line in enumerate(list_file.read_text(encoding="utf-8-sig").splitlines(), start=1):
            sample_id = line.strip()
            if not sample_id:
                continue
            image, label = image_dir / f"{sample_id}.jpg", label_dir / f"{sample_id}.png"
            if image.is_file() and label.is_file():
                samples.append((image, label))
            elif image.is_file():
                problems.append(image_without_label(image, label))
            elif label.is_file():
                problems.append(label_without_image(label, image))
            else:
                problems.append(
                    problem(list_file, f"line {number}: {sample_id!r} has neither image nor label")
                )
        return samples, problems
