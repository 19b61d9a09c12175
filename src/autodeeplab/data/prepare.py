"""A resized copy of Cityscapes, made once, so that half-resolution training does not resize on every read.

``prepare_cityscapes(root, out, scale=0.5)`` reads every sample of the chosen splits (validating it on the
way, with the usual messages), resizes images bilinearly and labels nearest-neighbour, and writes them to
``out`` in the Cityscapes layout with labels already as train ids (``*_gtFine_labelTrainIds.png``). ``out`` is
then an ordinary Cityscapes root. A marker file records the source and scale; a second run with the same
arguments resumes (files already written are kept), and a folder that is not such a copy is never written
into.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from autodeeplab.data.cityscapes import IMAGE_SUFFIX, PREPARED_MARKER, TRAIN_ID_SUFFIX, CityscapesDataset
from autodeeplab.data.imageio import encode_png
from autodeeplab.errors import ConfigError, DataError
from autodeeplab.fileio import atomic_write_bytes, atomic_write_json, loads_json


def prepare_cityscapes(
    root: str | Path,
    out: str | Path,
    scale: float = 0.5,
    splits: Sequence[str] = ("train", "val"),
    progress: Callable[[str, int, int], None] | None = None,
) -> int:
    """Write the resized copy of ``splits`` of Cityscapes ``root`` into ``out``; returns the files written."""
    root, out = Path(root).expanduser(), Path(out).expanduser()
    if not 0.0 < scale <= 1.0:
        raise ConfigError(f"scale: must be in (0, 1], got {scale!r}")
    if out.resolve() == root.resolve():
        raise ConfigError(f"out: {out} is the data root itself; choose another folder")
    datasets = [CityscapesDataset(root, split) for split in splits]  # raises on a broken layout first
    marker = {"source": str(root.resolve()), "scale": scale, "layout": "cityscapes"}
    _claim(out, marker)
    written = 0
    for dataset in datasets:
        for index in range(len(dataset)):
            image_path, label_path = dataset.samples[index]
            relative = image_path.parent.relative_to(root / "leftImg8bit")
            frame = image_path.name[: -len(IMAGE_SUFFIX)]
            image_out = out / "leftImg8bit" / relative / image_path.name
            label_out = out / "gtFine" / relative / f"{frame}{TRAIN_ID_SUFFIX}"
            if not (image_out.is_file() and label_out.is_file()):
                image, mask = dataset.load_raw(index)
                height, width = mask.shape
                size = (max(1, round(width * scale)), max(1, round(height * scale)))
                small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
                small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(size, Image.NEAREST))
                atomic_write_bytes(label_out, encode_png(small_mask))
                atomic_write_bytes(image_out, encode_png(small))
                written += 2
            if progress is not None:
                progress(dataset.split, index + 1, len(dataset))
    return written


def _claim(out: Path, marker: dict) -> None:
    """Make ``out`` ours: create it with a marker, or accept it if it carries the same marker."""
    marker_path = out / PREPARED_MARKER
    if marker_path.is_file():
        try:
            existing = loads_json(marker_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            existing = None
        if existing != marker:
            raise DataError(
                f"{out}: holds a prepared copy made with other settings ({marker_path.name}); choose another"
                " --out"
            )
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            f"{out}: exists and is not an empty folder nor a prepared copy; refusing to write into it"
        )
    atomic_write_json(marker_path, marker)
