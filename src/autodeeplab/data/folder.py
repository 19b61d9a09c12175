"""Your own data: a folder of images, a folder of masks matched by file stem, and a small classes file.

Layout under the data root, either flat or with one sub-folder per split::

    classes.yaml              (or classes.yml / classes.json)
    images/<stem>.<png|jpg|...>      or   images/<split>/<stem>.<ext>
    masks/<stem>.png                 or   masks/<split>/<stem>.png
    splits/<split>.txt        optional, flat layout only: one stem per line

Splits: the sub-folder names when images/ has sub-folders; otherwise the ``splits/*.txt`` files when present;
otherwise ``all`` (every sample), ``val`` (every fifth sample in stem order: the 5th, 10th, ...) and
``train`` (the rest), so that a plain folder can be searched and validated without further set-up.

Classes file (YAML or JSON)::

    names: [background, road, car]             # required: mask value i is class names[i]
    colours: [[0, 0, 0], [128, 64, 128], [0, 0, 142]]   # optional: palette; also decodes RGB masks
    ignore: 255                                # optional (default 255): mask value meaning "unlabelled"
    ignore_colour: [255, 255, 255]             # optional: the "unlabelled" colour of RGB masks

Masks are single-channel PNGs of class values (8 or 16 bit), or RGB pictures when ``colours`` is given.
Image sizes may vary: crop sizes are checked against the largest image of the split (from the file headers).
A stem in a split list with neither an image nor a mask is a problem (list file and line), never skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from autodeeplab.data.base import PairedFilesDataset, Transform
from autodeeplab.data.imageio import IMAGE_SUFFIXES
from autodeeplab.data.labels import IGNORE_INDEX, Colour, LabelMap, bit_palette
from autodeeplab.data.problems import DataProblem, DataProblemError, problem
from autodeeplab.data.scan import Sample, files_by_key, pair_by_key, stem_key
from autodeeplab.fileio import loads_json, loads_yaml

CLASSES_FILES = ("classes.yaml", "classes.yml", "classes.json")
FLAT_SPLITS = ("all", "train", "val")
VAL_EVERY = 5  # flat folder without split lists: every VAL_EVERY-th sample goes to "val"
MAX_CLASSES = IGNORE_INDEX  # train ids must stay below the ignore label
MAX_STORED_VALUE = 65535  # 16-bit masks


class FolderDataset(PairedFilesDataset):
    """Images + masks matched by stem, classes from a classes file (see the module docstring)."""

    name = "folder"
    image_size = property(PairedFilesDataset.largest_image_size)  # sizes vary: the largest listed
    layout = (
        "a plain folder: <root>/images/ and <root>/masks/ (files matched by stem, optionally in per-split"
        " sub-folders) and <root>/classes.yaml (or classes.json)"
    )

    def __init__(
        self,
        root: str | Path | None,
        split: str,
        transform: Transform | None = None,
        seed: int = 0,
        strict: bool = True,
    ) -> None:
        self.classes_file: Path | None = None
        if root is not None and Path(root).expanduser().is_dir():
            self._read_classes(Path(root).expanduser())
        super().__init__(root, split, transform, seed, strict)

    @classmethod
    def available_splits(cls, root: str | Path | None) -> tuple[str, ...]:
        if root is None:
            return FLAT_SPLITS
        root = Path(root).expanduser()
        images = root / "images"
        subfolders = sorted(p.name for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
        if subfolders:
            return tuple(subfolders)
        lists = sorted(p.stem for p in (root / "splits").glob("*.txt"))
        return tuple(lists) if lists else FLAT_SPLITS

    def _read_classes(self, root: Path) -> None:
        found = [root / n for n in CLASSES_FILES if (root / n).is_file()]
        if not found:
            return  # reported by _scan as a layout problem
        path = self.classes_file = found[0]
        try:
            text = path.read_text(encoding="utf-8")
            spec = loads_json(text) if path.suffix == ".json" else loads_yaml(text)
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataProblemError(problem(path, f"unreadable classes file ({reason})")) from None
        names, colours, ignore, ignore_colour = _parse_classes(spec, path)
        self.class_names = names
        self.palette = colours if colours is not None else bit_palette(len(names))
        self.label_map = LabelMap(
            {i: i for i in range(len(names))} | {ignore: IGNORE_INDEX},
            f"0..{len(names) - 1}, or {ignore} (ignore)",
        )
        if colours is not None:
            table = {colour: index for index, colour in enumerate(colours)}
            if ignore_colour is not None:
                table[ignore_colour] = ignore
            self.colour_labels = table

    def _scan(self) -> tuple[list[Sample], list[DataProblem]]:
        image_root, mask_root = self.root / "images", self.root / "masks"
        if self.classes_file is None:
            return [], [self.wrong_layout(self.root / CLASSES_FILES[0])]
        for folder in (image_root, mask_root):
            if not folder.is_dir():
                return [], [self.wrong_layout(folder)]
        nested = (image_root / self.split).is_dir()
        image_dir = image_root / self.split if nested else image_root
        mask_dir = mask_root / self.split if nested else mask_root
        if not mask_dir.is_dir():
            return [], [self.wrong_layout(mask_dir)]
        images, problems = files_by_key(image_dir, IMAGE_SUFFIXES, stem_key)
        masks, more = files_by_key(mask_dir, IMAGE_SUFFIXES, stem_key)
        missing: list[DataProblem] = []
        if not nested:
            keep, missing = self._flat_split_stems(images.keys() | masks.keys())
            images = {k: v for k, v in images.items() if k in keep}
            masks = {k: v for k, v in masks.items() if k in keep}
        samples, orphans = pair_by_key(
            images, masks, lambda k: mask_dir / f"{k}.png", lambda k: image_dir / f"{k}.*"
        )
        return samples, problems + more + missing + orphans

    def _flat_split_stems(self, on_disk: set[str]) -> tuple[set[str], list[DataProblem]]:
        """The stems of this split of a flat folder, and one problem per listed stem found on neither side."""
        list_file = self.root / "splits" / f"{self.split}.txt"
        if list_file.is_file():
            keep: set[str] = set()
            missing = []
            for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
                stem = line.strip()
                if not stem:
                    continue
                keep.add(stem)
                if stem not in on_disk:
                    missing.append(problem(list_file, f"line {number}: {stem!r} has neither image nor label"))
            return keep, missing
        if self.split == "all":
            return set(on_disk), []
        in_val = {stem for i, stem in enumerate(sorted(on_disk)) if i % VAL_EVERY == VAL_EVERY - 1}
        return (in_val if self.split == "val" else on_disk - in_val), []


def _parse_classes(spec: Any, path: Path) -> tuple[tuple[str, ...], list[Colour] | None, int, Colour | None]:
    """Validate a classes file's content: (names, colours or None, ignore value, ignore colour or None)."""

    def bad(field: str, what: str) -> DataProblemError:
        return DataProblemError(problem(path, f"field '{field}': {what}"))

    if not isinstance(spec, dict):
        raise DataProblemError(
            problem(path, "expected a mapping with 'names' (and optional colours, ignore)")
        )
    unknown = sorted(set(spec) - {"names", "colours", "ignore", "ignore_colour"})
    if unknown:
        raise bad(unknown[0], "unknown field (known: names, colours, ignore, ignore_colour)")
    names = spec.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise bad("names", "must be a non-empty list of class names")
    if len(set(names)) != len(names):
        raise bad("names", "class names must be unique")
    if len(names) > MAX_CLASSES:
        raise bad("names", f"at most {MAX_CLASSES} classes are supported, got {len(names)}")
    ignore = spec.get("ignore", IGNORE_INDEX)
    if (
        not isinstance(ignore, int)
        or isinstance(ignore, bool)
        or not len(names) <= ignore <= MAX_STORED_VALUE
    ):
        raise bad(
            "ignore",
            f"must be an integer in {len(names)}..{MAX_STORED_VALUE} (not a class value), got {ignore!r}",
        )
    colours = spec.get("colours")
    if colours is not None:
        if not isinstance(colours, list) or len(colours) != len(names):
            raise bad("colours", f"must list one [R, G, B] per class ({len(names)})")
        colours = [_colour(c, lambda what: bad("colours", what)) for c in colours]
        if len(set(colours)) != len(colours):
            raise bad("colours", "class colours must be distinct")
    ignore_colour = spec.get("ignore_colour")
    if ignore_colour is not None:
        ignore_colour = _colour(ignore_colour, lambda what: bad("ignore_colour", what))
    return tuple(names), colours, ignore, ignore_colour


def _colour(value: Any, bad) -> Colour:
    if not (isinstance(value, list | tuple) and len(value) == 3 and all(isinstance(v, int) for v in value)):
        raise bad(f"expected [R, G, B] integers, got {value!r}")
    if not all(0 <= v <= 255 for v in value):
        raise bad(f"colour values must be within 0..255, got {value!r}")
    return (value[0], value[1], value[2])
