"""Listing the files of a split and pairing images with labels, reporting orphans on either side.

The messages here are the ones ``autodeeplab data check`` prints and training raises; keep them stable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from autodeeplab.data.problems import DataProblem, problem

Sample = tuple[Path, Path]


def image_without_label(image: Path, expected_label: Path) -> DataProblem:
    return problem(image, f"image without label: expected label file {expected_label}")


def label_without_image(label: Path, expected_image: Path) -> DataProblem:
    return problem(label, f"label without image: expected image file {expected_image}")


def files_by_key(
    folder: Path, suffixes: Iterable[str], key: Callable[[Path], str | None], recursive: bool = False
) -> tuple[dict[str, Path], list[DataProblem]]:
    """Files of ``folder`` with one of ``suffixes`` (lower-case), indexed by ``key(path)``.

    ``key`` returns ``None`` for files that are not part of the layout (they are skipped, e.g. Cityscapes'
    ``*_color.png``). Two files with the same key are a problem: which one is meant cannot be guessed.
    """
    suffixes = tuple(suffixes)
    found: dict[str, Path] = {}
    problems: list[DataProblem] = []
    paths = folder.rglob("*") if recursive else folder.iterdir()
    for path in sorted(paths):
        if not visible(path.relative_to(folder)):
            continue  # .ipynb_checkpoints/, .DS_Store, editors' ._files: never data
        if not (path.suffix.lower() in suffixes and path.is_file()):
            continue
        name = key(path)
        if name is None:
            continue
        if name in found:
            problems.append(problem(path, f"two files for the same sample: this one and {found[name].name}"))
            continue
        found[name] = path
    return found, problems


def pair_by_key(
    images: dict[str, Path],
    labels: dict[str, Path],
    expected_label: Callable[[str], Path],
    expected_image: Callable[[str], Path],
) -> tuple[list[Sample], list[DataProblem]]:
    """Pairs for keys present on both sides (sorted by key), and one problem per orphan."""
    samples = [(images[k], labels[k]) for k in sorted(images.keys() & labels.keys())]
    problems = [
        image_without_label(images[k], expected_label(k)) for k in sorted(images.keys() - labels.keys())
    ]
    problems += [
        label_without_image(labels[k], expected_image(k)) for k in sorted(labels.keys() - images.keys())
    ]
    return samples, problems


def visible(path: Path) -> bool:
    """Whether no part of ``path`` starts with a dot (hidden entries are never part of a dataset)."""
    return not any(part.startswith(".") for part in path.parts if part not in (".", ".."))


def stem_key(path: Path) -> str:
    return path.stem
