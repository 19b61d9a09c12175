"""Reading NIfTI volumes (nibabel, the optional ``medical`` extra) into arrays, with one-line problems.

A volume is read in the voxel order it is stored in (no reorientation): the array axes ``(D, H, W)`` of the
package are the file's ``(i, j, k)``, and a prediction written back with the input's affine and header lies
on the same grid, so that viewers overlay it exactly. Images become float32 and labels int64 whatever their
stored dtype (``scl_slope``/``scl_inter`` applied for images; labels must hold whole numbers).

Everything that can be wrong with a file is a :class:`~autodeeplab.data.problems.DataProblemError` naming the
file: not NIfTI, truncated, non-finite voxels, a 4D image where channels are not expected, label values
that are not whole numbers. A ``.nii.gz`` is decompressed in full, its CRC and length checked, before nibabel
parses it: nibabel alone stops reading once it has the voxels, so it takes a file cut short by a few bytes.
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autodeeplab.data.problems import DataProblem, DataProblemError, problem
from autodeeplab.errors import ConfigError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
AFFINE_TOLERANCE_MM = 1e-3
"""Image and label affines may differ by this much per entry (rounding in the writers), no more."""


def require_nibabel() -> Any:
    """The nibabel module, or a one-line ConfigError saying how to install it."""
    try:
        import nibabel
    except ImportError:
        raise ConfigError(
            "reading NIfTI volumes needs nibabel: pip install -e '.[medical]' (or pip install nibabel)"
        ) from None
    return nibabel


def nifti_stem(path: Path) -> str | None:
    """``hippocampus_001`` for ``hippocampus_001.nii.gz`` or ``.nii``; None for other files."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


@dataclass
class VolumeFile:
    """One NIfTI file read into memory.

    ``data`` is ``[*S]`` or, for a multi-channel image, ``[C, *S]`` (channels first); ``affine`` the 4×4
    voxel-to-world matrix; ``spacing`` the voxel size of the three spatial axes (mm).
    """

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[-3:])  # type: ignore[return-value]


NIFTI_HEADER_SIZES = {348: "Nifti1Image", 540: "Nifti2Image"}
"""``sizeof_hdr`` (the first four bytes) of NIfTI-1 and NIfTI-2 files, and nibabel's class of each."""


def _from_gzip(nibabel: Any, path: Path) -> Any:
    """A ``.nii.gz`` file decompressed in full before nibabel parses it: :func:`gzip.decompress` checks the
    stream's end marker, CRC and length, which nibabel's own reader does not (it stops once it has the
    voxels it needs, so a file cut just before its end, or with a flipped byte, would be read silently)."""
    packed = path.read_bytes()
    if not packed:
        raise ValueError("empty file")
    raw = gzip.decompress(packed)
    sizes = [int.from_bytes(raw[:4], order) for order in ("little", "big")] if len(raw) >= 4 else []
    size = next((n for n in sizes if n in NIFTI_HEADER_SIZES), 0)
    kind = NIFTI_HEADER_SIZES.get(size)
    if kind is None:
        raise ValueError("not a NIfTI file (its header does not start with the NIfTI header size)")
    if len(raw) < size:
        raise EOFError(f"the header ends after {len(raw)} of its {size} bytes")
    return getattr(nibabel, kind).from_bytes(raw)


_SHORT_DATA = re.compile(r"Expected \d+ bytes, got \d+ bytes")


def _load(path: Path) -> tuple[Any, np.ndarray]:
    nibabel = require_nibabel()
    if not path.is_file():
        raise DataProblemError(problem(path, "file not found"))
    try:
        if path.name.lower().endswith(".gz"):
            image = _from_gzip(nibabel, path)
        else:
            image = nibabel.load(str(path), mmap=False)
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # a hostile file can fail anywhere in nibabel's parsing: each is a problem
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = reason.replace(f" from {path}", "")  # nibabel's "Expected N bytes, got M bytes from PATH"
        if isinstance(exc, (EOFError, zlib.error)) or _SHORT_DATA.search(reason):
            reason = f"truncated file ({reason})"
        elif isinstance(exc, gzip.BadGzipFile):
            reason = f"corrupt compressed file ({reason})"
        raise DataProblemError(problem(path, f"unreadable NIfTI volume: {reason}")) from None
    return image, np.asarray(data)


def _spatial(data: np.ndarray, path: Path, channels: bool, kind: str = "image") -> np.ndarray:
    """Drop trailing singleton axes beyond the third; move a 4th axis to the front when ``channels``."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 3:
        return data[None] if channels else data
    if data.ndim == 4 and channels:
        return np.moveaxis(data, -1, 0)
    shape = "×".join(str(s) for s in data.shape)
    if data.ndim == 4 and kind == "image":
        raise DataProblemError(
            problem(
                path,
                f"4D image ({shape}) where a 3D volume is expected; multi-channel images are read with "
                "--dataset msd, whose dataset.json names the channels under 'modality'",
            )
        )
    if data.ndim == 4:
        raise DataProblemError(
            problem(path, f"4D {kind} ({shape}) where a 3D volume is expected (one class value per voxel)")
        )
    raise DataProblemError(problem(path, f"{data.ndim}D array ({shape}) is not a 3D volume"))


def _spacing(image: Any, path: Path) -> tuple[float, float, float]:
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    if len(zooms) != 3 or not all(np.isfinite(z) and z > 0 for z in zooms):
        raise DataProblemError(
            problem(path, f"voxel spacing {zooms} in the header is not three positive sizes")
        )
    return zooms  # type: ignore[return-value]


def read_image_volume(path: str | Path, channels: bool = False) -> VolumeFile:
    """An image volume as float32 ``[C, D, H, W]`` (``channels``: a 4th axis becomes C) or
    ``[1, D, H, W]``."""
    path = Path(path)
    image, data = _load(path)
    if data.dtype.kind not in "iufb":  # complex voxels, RGB records
        raise DataProblemError(problem(path, f"image volume of dtype {data.dtype} (expected real numbers)"))
    data = _spatial(data, path, channels=channels)
    if data.ndim == 3:
        data = data[None]
    data = data.astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        raise DataProblemError(problem(path, "image holds NaN or infinite voxels"))
    return VolumeFile(
        np.ascontiguousarray(data), np.asarray(image.affine, dtype=np.float64), _spacing(image, path)
    )


def read_label_volume(path: str | Path) -> VolumeFile:
    """A label volume as int64 ``[D, H, W]``; non-integer or non-finite values are a problem."""
    path = Path(path)
    image, data = _load(path)
    data = _spatial(data, path, channels=False, kind="label volume")
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise DataProblemError(problem(path, "label volume holds NaN or infinite voxels"))
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            odd = np.unique(data[rounded != data])[:3]
            shown = ", ".join(str(v) for v in odd)  # numpy's shortest form of the stored dtype: 0.9999999
            raise DataProblemError(
                problem(
                    path, f"label values {shown} are not whole numbers (a label volume holds class values)"
                )
            )
        data = rounded
    elif data.dtype.kind not in "iub":
        raise DataProblemError(
            problem(path, f"label volume of dtype {data.dtype} (expected integer classes)")
        )
    return VolumeFile(
        data.astype(np.int64), np.asarray(image.affine, dtype=np.float64), _spacing(image, path)
    )


@dataclass(frozen=True)
class LabelSummary:
    """What checks and statistics need of a label volume, without its voxels: the grid, and each stored value
    with its voxel count."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    values: np.ndarray
    """The distinct stored values, sorted (int64)."""
    counts: np.ndarray
    """``counts[i]`` voxels hold ``values[i]`` (int64)."""


def summarise_label_volume(path: str | Path) -> LabelSummary:
    """Read a label volume (:func:`read_label_volume`, the same problems) and keep its summary."""
    label = read_label_volume(path)
    values, counts = np.unique(label.data, return_counts=True)
    return LabelSummary(label.shape, label.affine, label.spacing, values, counts.astype(np.int64))


_summaries: dict[tuple[str, int, int, int, int], LabelSummary | DataProblem] = {}


def label_summary(path: Path) -> LabelSummary:
    """The :class:`LabelSummary` of a label file, read once per process and file version (path, inode, size,
    modification and change times, so that a file made readable by a change of permissions is read
    again): naming the classes from the label values, ``data check`` and ``data stats`` then
    read each label volume once between them. A file that cannot be read raises its problem each time
    without being read again."""
    try:
        stat = path.stat()
    except OSError:
        raise DataProblemError(problem(path, "file not found")) from None
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _summaries:
        try:
            _summaries[key] = summarise_label_volume(path)
        except DataProblemError as exc:
            _summaries[key] = exc.problem
    found = _summaries[key]
    if isinstance(found, DataProblem):
        raise DataProblemError(found)
    return found


def check_pair(
    image: VolumeFile, label: VolumeFile | LabelSummary, image_path: Path, label_path: Path
) -> None:
    """Image and label must lie on the same voxel grid: same spatial shape, affines within tolerance."""
    if image.shape != label.shape:
        shown = "×".join(map(str, image.shape)), "×".join(map(str, label.shape))
        raise DataProblemError(
            problem(label_path, f"label is {shown[1]} voxels but its image {image_path.name} is {shown[0]}")
        )
    difference = float(np.abs(image.affine - label.affine).max())
    if not difference <= AFFINE_TOLERANCE_MM:  # NaN (a broken header) is no match either
        raise DataProblemError(
            problem(
                label_path,
                f"affine differs from its image {image_path.name}'s by up to {difference:.4g} (tolerance "
                f"{AFFINE_TOLERANCE_MM:g}): the label does not lie on the image's voxel grid",
            )
        )


def zscore_nonzero(image: np.ndarray) -> np.ndarray:
    """Per-channel z-score over the nonzero voxels (nnU-Net's MRI scheme): ``[C, *S]`` → float32 ``[C, *S]``.

    The mean and standard deviation come from the voxels that are not 0 (the background outside a
    skull-stripped or cropped scan); every voxel is then shifted and scaled by them. A channel with no
    nonzero voxel, or a constant one, is only centred.
    """
    out = np.empty_like(image, dtype=np.float32)
    for c, channel in enumerate(image):
        values = channel[channel != 0]
        if values.size == 0:
            out[c] = channel
            continue
        mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
        out[c] = (channel - mean) / (std if std > 0 else 1.0)
    return out
