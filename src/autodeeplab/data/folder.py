"""Your own data: a folder of images, a folder of masks matched by file stem, and a small classes file.

Layout under the data root, either flat or with one sub-folder per split::

    classes.yaml              (or classes.yml / classes.json)
    images/<stem>.<png|jpg|...>      or   images/<split>/<stem>.<ext>
    masks/<stem>.png                 or   masks/<split>/<stem>.png
    splits/<split>.txt        optional, flat layout only: one stem per line

Splits: the sub-folder names when images/ has sub-folders; otherwise the ``splits/*.txt`` files when present;
otherwise ``all`` (every sample) and a seeded ``train``/``val``/``test`` split made here (see
:func:`seeded_split`: about ``split_fractions`` = (val, test) of the samples, each file's split fixed by its
stem and ``split_seed`` alone, so that adding files never moves the ones there), so that a plain folder is
searched, trained and scored on held-out images without further set-up.

The classes file says which stored mask value is which class and which is ignored: see
:mod:`autodeeplab.data.classes_file` (``names``, ``values``, ``ignore``, ``colours``, ``ignore_colour``).

Split lists hold one stem per line (``#`` starts a comment). A stem in two of the ``train``/``val``/``test``
lists is a problem (the scores would be measured on trained-on images); files that no list names are a
warning with their count. Entries whose name starts with a dot (``.ipynb_checkpoints``, ``.DS_Store``) are
not part of the data anywhere.

Masks are single-channel PNGs of class values (8 or 16 bit), or RGB pictures when ``colours`` is given;
JPEG (and WebP) masks are refused: lossy compression changes class values where nobody can see it.
Image sizes may vary: crop sizes are checked against the largest image of the split (from the file headers).
A stem in a split list with neither an image nor a mask is a problem (list file and line), never skipped;
so are image files the split-folder layout would not read (beside the split folders, or in a sub-folder of
one: :func:`files_beside_split_folders`, :func:`files_below_split_folder`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from autodeeplab.config.checks import split_fractions as split_fractions_check
from autodeeplab.data.base import PairedFilesDataset, Transform
from autodeeplab.data.classes_file import (
    CLASSES_FILES,
    ClassesSpec,
    find_classes_file,
    read_classes_file,
)
from autodeeplab.data.imageio import IMAGE_SUFFIXES
from autodeeplab.data.labels import bit_palette
from autodeeplab.data.problems import DataProblem, problem
from autodeeplab.data.scan import Sample, files_by_key, pair_by_key, stem_key, visible

FLAT_SPLITS = ("all", "train", "val", "test")
DEFAULT_SPLIT_FRACTIONS = (0.15, 0.15)
"""A plain folder without split lists: about this fraction of the samples for val, and for test."""
HELD_OUT = ("train", "val", "test")
"""Split lists that must not share a stem."""
LOSSY_MASK_SUFFIXES = (".jpg", ".jpeg", ".webp")
REFUSED_MASKS = {
    **dict.fromkeys(LOSSY_MASK_SUFFIXES, "lossy mask: JPEG/WebP compression changes class values"),
    ".gif": "GIF mask: GIF writers may reorder the palette, so its indices need not be the class values",
}
"""Image formats read as pictures but refused as masks, and why."""
_SHOWN = 3  # examples named in a message


class FolderDataset(PairedFilesDataset):
    """Images + masks matched by stem, classes from a classes file (see the module docstring)."""

    name = "folder"
    image_size = property(PairedFilesDataset.largest_image_size)  # sizes vary: the largest listed
    colour_hint = "; for colour-coded masks give 'colours:' (one [R, G, B] per class) in the classes file"
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
        split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
        split_seed: int = 0,
    ) -> None:
        split_fractions_check("split_fractions", tuple(split_fractions))
        self.split_fractions = (float(split_fractions[0]), float(split_fractions[1]))
        self.split_seed = split_seed
        self.split_record: dict[str, list[str]] | None = None
        """The stems of each split when this reader made the split (no lists, no sub-folders), else None:
        what a run writes into its folder (``data_split.json``)."""
        self.classes_file: Path | None = None
        self.classes: ClassesSpec | None = None
        if root is not None and Path(root).expanduser().is_dir():
            self._read_classes(Path(root).expanduser())
        super().__init__(root, split, transform, seed, strict)

    @classmethod
    def available_splits(cls, root: str | Path | None) -> tuple[str, ...]:
        if root is None:
            return FLAT_SPLITS
        root = Path(root).expanduser()
        images = root / "images"
        folders = sorted(images.iterdir()) if images.is_dir() else []
        subfolders = [p.name for p in folders if p.is_dir() and visible(Path(p.name))]
        if subfolders:
            return tuple(subfolders)
        lists = sorted(p.stem for p in (root / "splits").glob("*.txt") if visible(Path(p.name)))
        return tuple(lists) if lists else FLAT_SPLITS

    def _read_classes(self, root: Path) -> None:
        path = self.classes_file = find_classes_file(root)
        if path is None:
            return  # reported by _scan as a layout problem
        spec = self.classes = read_classes_file(path)
        self.class_names = spec.names
        self.palette = spec.colours if spec.colours is not None else bit_palette(len(spec.names))
        self.label_map = spec.label_map()
        self.colour_labels = spec.colour_table()

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
        if nested:  # files no split would read: never dropped silently
            problems += files_beside_split_folders(image_root) + files_beside_split_folders(mask_root)
            problems += files_below_split_folder(image_dir) + files_below_split_folder(mask_dir)
        for stem, mask in sorted(masks.items()):
            why = REFUSED_MASKS.get(mask.suffix.lower())
            if why:
                del masks[stem]  # reported here, not again as an image without a mask
                images.pop(stem, None)
                more.append(problem(mask, f"{why}; save masks as PNG"))
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
        """The stems of this split of a flat folder, and one problem per listed stem found on neither side,
        per stem shared with another held-out list; files that no list names become a warning."""
        lists = {p.stem: p for p in sorted((self.root / "splits").glob("*.txt")) if visible(Path(p.name))}
        if self.split not in lists:
            return self._default_split(on_disk), []
        list_file = lists[self.split]
        stems, problems = read_split_list(list_file, on_disk)
        # Each list read once: this split's for its problems, every list's stems for leaks and leftovers.
        listed_in = {name: set(read_split_list(path, on_disk)[0]) for name, path in lists.items()}
        if self.split in HELD_OUT:
            for other in HELD_OUT:
                if other == self.split or other not in lists:
                    continue
                shared = sorted(set(stems) & listed_in[other])
                if shared:
                    shown = _examples([repr(stem) for stem in shared])
                    problems.append(
                        problem(
                            list_file,
                            f"{len(shared)} stems are also in {lists[other].name} ({shown}): a sample in "
                            f"two of {'/'.join(HELD_OUT)} leaks between training and scoring",
                        )
                    )
        unlisted = sorted(on_disk - set().union(*listed_in.values()))
        if unlisted:
            shown = _examples(unlisted)
            self.warnings.append(
                f"{self.root / 'splits'}: {len(unlisted)} samples are in no split list and not used ({shown})"
            )
        return set(stems), problems

    def _default_split(self, on_disk: set[str]) -> set[str]:
        """Without split lists: ``all``, or this split of :func:`seeded_split` (recorded in
        :attr:`split_record`)."""
        if self.split == "all":
            return set(on_disk)
        self.split_record = seeded_split(on_disk, self.split_fractions, self.split_seed)
        return set(self.split_record[self.split])


def files_beside_split_folders(folder: Path) -> list[DataProblem]:
    """A problem for the image files directly in ``images/`` or ``masks/`` (``folder``) beside the split
    folders: they belong to no split."""
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and is_image_file(p))
    why = f"{len(loose)} image files beside the split folders belong to no split and are not read"
    return [problem(folder, f"{why} ({_examples(loose)}): move them into a split folder")] if loose else []


def files_below_split_folder(folder: Path) -> list[DataProblem]:
    """A problem for each sub-folder of a split folder holding image files: samples are matched by name
    within the split folder, so a Cityscapes-like city level is not read."""
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and visible(Path(p.name))):
        inside = [f for f in sub.rglob("*") if is_image_file(f) and visible(f.relative_to(sub))]
        if inside:
            why = f"{len(inside)} image files in a sub-folder of a split folder are not read (samples are"
            found.append(problem(sub, f"{why} matched by name within the split folder): move them up"))
    return found


def is_image_file(path: Path) -> bool:
    """A visible file with one of the endings read as images."""
    return path.suffix.lower() in IMAGE_SUFFIXES and visible(Path(path.name))


def seeded_split(stems: set[str], fractions: Sequence[float], seed: int) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` (sorted stems): a stem whose hash score
    ``sha256(f"{seed}:{stem}")`` in [0, 1) is below ``fractions[0]`` goes to val, below their sum to test.

    Each stem's split depends on its name and ``seed`` alone, so adding or removing files never moves
    the others (the proportions are approximate). With three or more samples, every split gets at least
    one (the lowest-scored stem of the largest split moves), so that a small folder still has all three.
    """
    val_cut, test_cut = fractions[0], fractions[0] + fractions[1]
    scores = {stem: _score(seed, stem) for stem in stems}
    split = {"train": [], "val": [], "test": []}
    for stem in sorted(stems):
        score = scores[stem]
        split["val" if score < val_cut else "test" if score < test_cut else "train"].append(stem)
    wanted = {"train": True, "val": fractions[0] > 0, "test": fractions[1] > 0}
    for name in ("train", "val", "test"):
        if wanted[name] and not split[name] and len(stems) >= 3:
            donor = max(split.values(), key=len)  # the largest split keeps at least one
            moved = min(donor, key=lambda stem: scores[stem])
            donor.remove(moved)
            split[name].append(moved)
    return split


def _score(seed: int, stem: str) -> float:
    digest = hashlib.sha256(f"{seed}:{stem}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _examples(items: list[str]) -> str:
    return ", ".join(items[:_SHOWN]) + (", ..." if len(items) > _SHOWN else "")


def read_split_list(path: Path, on_disk: set[str]) -> tuple[dict[str, int], list[DataProblem]]:
    """``{stem: line number}`` of a split list (``#`` starts a comment) and a problem per stem on disk on
    neither side, with a hint when the line looks like a file name or a path."""
    stems: dict[str, int] = {}
    problems = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        stem = line.split("#", 1)[0].strip()
        if not stem:
            continue
        stems.setdefault(stem, number)
        if stem in on_disk:
            continue
        name = Path(stem)
        hint = ""
        if name.stem in on_disk and name.suffix:
            hint = f"; list stems without the extension ({name.stem!r})"
        elif name.name != stem and Path(name.name).stem in on_disk:
            hint = f"; list stems, not paths ({Path(name.name).stem!r})"
        problems.append(problem(path, f"line {number}: {stem!r} has neither image nor label{hint}"))
    return stems, problems
