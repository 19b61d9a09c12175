"""CamVid in the SegNet layout: 11 classes, value 11 = void (ignored), the given train/val/test split.

Layout under the data root::

    train/*.png   trainannot/*.png   train.txt
    val/*.png     valannot/*.png     val.txt
    test/*.png    testannot/*.png    test.txt

Images are RGB 480×360 (W×H); labels are 8-bit with values 0..11. Each line of a list file names an image and
its label under a foreign root (``/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png``): only the last
two parts of each path are used. Without a list file, images and labels are matched by file name.
"""

from __future__ import annotations

from pathlib import Path

from autodeeplab.data.base import PairedFilesDataset
from autodeeplab.data.labels import LabelMap
from autodeeplab.data.problems import DataProblem, problem
from autodeeplab.data.scan import (
    Sample,
    files_by_key,
    image_without_label,
    label_without_image,
    pair_by_key,
    stem_key,
)

CLASS_NAMES: tuple[str, ...] = (
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign_symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
)
# The SegNet tutorial's colours.
PALETTE: list[tuple[int, int, int]] = [
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
]
VOID = 11


class CamVidDataset(PairedFilesDataset):
    """CamVid (SegNet layout); untransformed items are ``(float32 [3, 360, 480], int64 [360, 480])``."""

    name = "camvid"
    splits = ("train", "val", "test")
    class_names = CLASS_NAMES
    palette = PALETTE
    image_size = (360, 480)
    label_map = LabelMap.identity(len(CLASS_NAMES), ignore_values=(VOID,))
    layout = (
        "CamVid SegNet layout: <root>/{train,val,test}/*.png with labels in"
        " <root>/{train,val,test}annot/*.png and list files <root>/{train,val,test}.txt"
    )

    def _scan(self) -> tuple[list[Sample], list[DataProblem]]:
        image_dir, label_dir = self.root / self.split, self.root / f"{self.split}annot"
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                return [], [self.wrong_layout(folder)]
        images, problems = files_by_key(image_dir, (".png",), stem_key)
        labels, label_problems = files_by_key(label_dir, (".png",), stem_key)
        on_disk, orphans = pair_by_key(
            images, labels, lambda k: label_dir / f"{k}.png", lambda k: image_dir / f"{k}.png"
        )
        problems += label_problems
        list_file = self.root / f"{self.split}.txt"
        if not list_file.is_file():
            return on_disk, problems + orphans
        listed, list_problems = self._read_list(list_file)
        # Orphans are reported once, whether the list names them or not.
        reported = {p.path for p in list_problems}
        return listed, problems + list_problems + [p for p in orphans if p.path not in reported]

    def _read_list(self, list_file: Path) -> tuple[list[Sample], list[DataProblem]]:
        samples: list[Sample] = []
        problems: list[DataProblem] = []
        for number, line in enumerate(list_file.read_text(encoding="utf-8-sig").splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                problems.append(
                    problem(list_file, f"line {number}: expected 'IMAGE LABEL', got {line.strip()!r}")
                )
                continue
            image, label = (self.root / Path(f).parts[-2] / Path(f).parts[-1] for f in fields)
            if image.is_file() and label.is_file():
                samples.append((image, label))
            elif image.is_file():
                problems.append(image_without_label(image, label))
            elif label.is_file():
                problems.append(label_without_image(label, image))
            else:
                problems.append(problem(list_file, f"line {number}: neither {image} nor {label} exists"))
        return samples, problems
