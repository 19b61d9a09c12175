"""3D volumes: sliding-window class probabilities, per-class Dice and HD95, and label volumes as NIfTI.

A model maps ``[N, C, d, h, w]`` patches to ``[N, K, d, h, w]`` logits. A volume ``[C, D, H, W]`` is covered
by overlapping patches (MONAI's ``sliding_window_inference``), their softmax probabilities are blended, and
the arg-max labels are scored per class: Dice ``2|P∩T| / (|P| + |T|)`` over the voxels whose truth is not
``ignore_index``, and HD95 (95th percentile of the symmetric surface distance, in the spacing's units).

NaN conventions (NaN in Python floats, ``None`` in JSON, as :mod:`autodeeplab.infer.metrics` does): a class
absent from both prediction and truth has no Dice; a class empty in either has no HD95 (a missed or
hallucinated structure has no surface to measure, so it lowers the Dice but leaves the HD95 mean alone);
background (class 0) has a Dice but never an HD95. Means skip NaNs and cover the foreground classes
``1 .. K-1`` only (background, most of any scan, would flatter them).

MONAI, nibabel and scipy are optional (the ``medical`` extra): each is imported where it is used (MONAI
alone takes seconds), and a missing one is a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import gzip
import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from autodeeplab.data.volumes import resample
from autodeeplab.errors import ConfigError, DataError
from autodeeplab.fileio import atomic_write_bytes
from autodeeplab.infer.volume_metrics import (
    _json,
    _labels,
    _nanmean,
    _require,
    dice_per_class,
    hd95_per_class,
    keep_largest_component,
)
from autodeeplab.outputs import NIFTI_DESCRIPTION
from autodeeplab.runs.device import preferred_memory_format
from autodeeplab.runs.distributed import gather_objects, shard_indices

BLEND_MODES = ("gaussian", "constant")


class VolumeDataset(Protocol):
    """What :func:`evaluate_volumes` reads: ``dataset[i]`` is ``(image [C, D, H, W] float32, mask [D, H, W]
    int64)``, mask values in ``0 .. num_classes-1`` or ``ignore_index``; ``spacing(i)`` is the voxel size
    (mm) along ``D, H, W``."""

    num_classes: int
    class_names: Sequence[str]
    ignore_index: int

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]: ...
    def volume_id(self, index: int) -> str: ...
    def spacing(self, index: int) -> tuple[float, float, float]: ...


def _patch_size(patch_size: Sequence[int]) -> tuple[int, int, int]:
    size = tuple(int(s) for s in patch_size)
    if len(size) != 3 or min(size) < 1 or size != tuple(patch_size):
        raise ConfigError(f"patch size must be three positive whole numbers, got {list(patch_size)}")
    return size  # type: ignore[return-value]


def sliding_window_probabilities(
    model: nn.Module,
    image: torch.Tensor,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    mode: str = "gaussian",
    mirror: bool = False,
) -> torch.Tensor:
    """Class probabilities ``[K, D, H, W]`` (float32, on ``image``'s device) of one volume ``[C, D, H, W]``.

    Patches of ``patch_size`` go to the model's device (its first parameter's), and their softmax
    probabilities are blended with a Gaussian weight (``"gaussian"``: voxels near a patch centre, with the
    most context, count most) or equally (``"constant"``). Probabilities, not logits, are blended, as in the
    2D sliding window of :mod:`autodeeplab.infer.evaluate`, so they sum to 1 over ``K`` at every voxel. A
    volume smaller than the patch along an axis is zero-padded by MONAI and cropped back: the model always
    gets whole patches of exactly ``patch_size`` (network strides need not divide the volume).

    ``mirror``: test-time mirroring as nnU-Net does it: the mean of the probabilities of the volume flipped
    along every subset of its three axes (8 passes, each flipped back), for a network trained with random
    flips on every axis.

    Runs under ``torch.no_grad()`` (not inference mode, whose tensors refuse later in-place edits) but
    leaves the model's mode alone: the caller puts it in eval mode (:func:`evaluate_volumes` does). The
    model's weights are put in the device's preferred memory layout (same values, faster on a CPU).
    """
    inferers = _require("monai.inferers", "sliding-window inference on volumes")
    if image.dim() != 4:
        raise ValueError(f"image must be one volume [C, D, H, W], got shape {tuple(image.shape)}")
    size = _patch_size(patch_size)
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap must be in [0, 1), got {overlap}")
    if mode not in BLEND_MODES:
        raise ConfigError(f"blend mode must be one of {', '.join(BLEND_MODES)}, got {mode!r}")
    if sw_batch_size < 1:
        raise ConfigError(f"sw_batch_size must be at least 1, got {sw_batch_size}")
    model_device = next((p.device for p in model.parameters()), image.device)
    layout = preferred_memory_format(model_device, len(size))
    model.to(memory_format=layout)  # the same numbers, faster convolutions (see preferred_memory_format)

    def predictor(patches: torch.Tensor) -> torch.Tensor:  # [n, C, *size] -> [n, K, *size]
        return torch.softmax(model(patches.contiguous(memory_format=layout)).float(), dim=1)

    # With mirroring: each subset of the spatial axes (2, 3, 4 of [1, C, D, H, W]), the identity first.
    flips = [a for r in range(4) for a in itertools.combinations((2, 3, 4), r)] if mirror else [()]
    volume, probs = image.unsqueeze(0).float(), None
    with torch.no_grad():
        for axes in flips:
            one = inferers.sliding_window_inference(
                volume.flip(axes) if axes else volume,
                roi_size=size,
                sw_batch_size=sw_batch_size,
                predictor=predictor,
                overlap=overlap,
                mode=mode,
                sw_device=model_device,  # patches go where the model is ...
                device=image.device,  # ... the stitched volume stays with the image (CPU memory for big ones)
            )
            one = one.flip(axes) if axes else one
            probs = one if probs is None else probs.add_(one)
        probs /= len(flips)
    if probs.shape[2:] != image.shape[1:]:  # MONAI crops its padding away; a model must keep sizes
        raise RuntimeError(f"sliding window gave {tuple(probs.shape)} for an image {tuple(image.shape)}")
    return probs[0]


@dataclass
class VolumeScores:
    """One volume's scores: ``dice`` and ``hd95`` hold one float per class (NaN = undefined, see the module
    docstring); the means cover the foreground classes ``1 .. K-1`` and skip NaNs."""

    id: str
    dice: list[float]
    hd95: list[float]
    mean_dice: float
    mean_hd95: float

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        return {
            "id": self.id,
            "mean_dice": _json(self.mean_dice),
            "mean_hd95": _json(self.mean_hd95),
            "dice": {n: _json(v) for n, v in zip(class_names, self.dice, strict=True)},
            "hd95": {n: _json(v) for n, v in zip(class_names, self.hd95, strict=True)},
        }


@dataclass
class VolumeEvalResult:
    """What :func:`evaluate_volumes` measured: the rows, each class's NaN-skipping mean over the volumes,
    and the means of those over the foreground classes (a class defined in no volume is left out)."""

    rows: list[VolumeScores]
    class_names: list[str]
    per_class_dice: list[float]
    per_class_hd95: list[float]
    mean_dice: float
    mean_hd95: float
    seconds: float

    def hd95_undefined(self) -> list[int]:
        """Per class, the volumes whose class is in the truth or the prediction but not both: missed or
        made up, with no distance to measure. The HD95 means leave them out, so say how many there are."""
        return [
            int(sum(r.dice[c] == 0.0 and math.isnan(r.hd95[c]) for r in self.rows)) if c else 0
            for c in range(len(self.class_names))
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (undefined values are ``None``): summary first, then one entry per volume."""
        names = self.class_names
        return {
            "num_volumes": len(self.rows),
            "seconds": round(self.seconds, 3),
            "mean_dice": _json(self.mean_dice),
            "mean_hd95": _json(self.mean_hd95),
            "per_class_dice": {n: _json(v) for n, v in zip(names, self.per_class_dice, strict=True)},
            "per_class_hd95": {n: _json(v) for n, v in zip(names, self.per_class_hd95, strict=True)},
            "hd95_undefined": dict(zip(names, self.hd95_undefined(), strict=True)),
            "class_names": list(names),
            "volumes": [row.to_dict(names) for row in self.rows],
        }

    def format_table(self) -> str:
        """One line per class (Dice in %, HD95 in the spacing's units), then the foreground means."""
        width = max([len("mean (foreground)")] + [len(n) for n in self.class_names])

        def line(name: str, dice: float, hd95: float) -> str:
            d = "-" if math.isnan(dice) else f"{100 * dice:.2f}"
            h = "-" if math.isnan(hd95) else f"{hd95:.2f}"
            return f"{name:<{width}}  {d:>7}  {h:>9}"

        rule = "-" * (width + 20)
        lines = [f"{'class':<{width}}  {'Dice %':>7}  {'HD95 mm':>9}", rule]
        for name, dice, hd95 in zip(self.class_names, self.per_class_dice, self.per_class_hd95, strict=True):
            lines.append(line(name, dice, hd95))
        lines += [rule, line("mean (foreground)", self.mean_dice, self.mean_hd95)]
        lines.append(f"{len(self.rows)} volumes in {self.seconds:.1f} s")
        missing = [f"{n} {k}" for n, k in zip(self.class_names, self.hd95_undefined(), strict=True) if k]
        if missing and not math.isnan(self.mean_hd95):
            lines.append("HD95 left out where a class was missed or made up: " + ", ".join(missing))
        return "\n".join(lines)


def evaluate_volumes(
    model: nn.Module,
    dataset: VolumeDataset,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    device: str | torch.device = "cpu",
    max_volumes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    sw_batch_size: int = 1,
    with_hd95: bool = True,
    mirror: bool = False,
    largest_component: bool = False,
    world: int = 1,
    rank: int = 0,
) -> VolumeEvalResult:
    """Sliding-window inference, Dice and HD95 on each of the first ``max_volumes`` volumes of ``dataset``
    (all when ``None``).

    ``device`` is where each volume and its stitched probabilities ``[K, D, H, W]`` live; the patches run on
    the model's own device (so a model on a GPU with ``device="cpu"`` keeps big volumes in host memory).
    ``progress(done, total)`` is called after each volume. The model is put in eval mode and restored.
    ``with_hd95=False`` skips the distances (all NaN): the search's validation needs only Dice. ``mirror``:
    test-time mirroring (see :func:`sliding_window_probabilities`); ``largest_component``: each class cut
    to its largest connected piece before scoring (:func:`keep_largest_component`). ``world``/``rank``:
    in a distributed run each rank scores every ``world``-th volume from ``rank`` and every rank gets all
    the rows, in volume order, and the means over them: the same numbers as one process.
    """
    k, ignore = int(dataset.num_classes), dataset.ignore_index
    names = [str(n) for n in dataset.class_names]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")
    if max_volumes is not None and max_volumes < 0:
        raise ValueError(f"max_volumes must not be negative, got {max_volumes}")
    total = len(dataset) if max_volumes is None else min(len(dataset), max_volumes)
    rows: list[VolumeScores] = []
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        for i in shard_indices(total, rank, world):
            image, mask = dataset[i]
            if tuple(mask.shape) != tuple(image.shape[1:]):
                raise DataError(
                    f"{dataset.volume_id(i)}: mask {tuple(mask.shape)} does not match image "
                    f"{tuple(image.shape)}"
                )
            probs = sliding_window_probabilities(
                model, image.to(device), patch_size, overlap, sw_batch_size, mirror=mirror
            )
            spacing = dataset.spacing(i)
            if (
                getattr(dataset, "target_spacing", None) is not None
            ):  # scored on the file's grid, like predict
                mask, spacing = dataset.original_labels(i)
                if tuple(probs.shape[1:]) != mask.shape:
                    probs = resample(probs, mask.shape, labels=False)
            labels = probs.argmax(dim=0).cpu().numpy()
            del probs  # K float volumes: free them before the next volume is read
            if largest_component:
                labels = keep_largest_component(labels)
            dice = dice_per_class(labels, mask, k, ignore)
            hd95 = hd95_per_class(labels, mask, k, spacing, ignore) if with_hd95 else [math.nan] * k
            rows.append(
                VolumeScores(dataset.volume_id(i), dice, hd95, _nanmean(dice[1:]), _nanmean(hd95[1:]))
            )
            if progress is not None:
                progress(len(rows), total)
    finally:
        model.train(was_training)
    if world > 1:  # rank r holds volumes r, r + world, ...: interleave them back into volume order
        shares = gather_objects(rows, world)
        rows = [shares[i % world][i // world] for i in range(total)]
    per_class_dice = [_nanmean([r.dice[c] for r in rows]) for c in range(k)]
    per_class_hd95 = [_nanmean([r.hd95[c] for r in rows]) for c in range(k)]
    means = _nanmean(per_class_dice[1:]), _nanmean(per_class_hd95[1:])
    seconds = time.perf_counter() - start
    return VolumeEvalResult(rows, names, per_class_dice, per_class_hd95, *means, seconds)


def write_label_volume(
    labels: np.ndarray | torch.Tensor,
    reference_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
) -> Path:
    """Write labels ``[D, H, W]`` as NIfTI (``.nii`` or ``.nii.gz``) on the grid of the reference image.

    The reference's header is copied (affine, qform/sform and their codes, zooms, units) so that viewers
    overlay the labels on it exactly; the data type becomes uint8 (labels up to 255) or int16, with no
    intensity scaling (a CT reference's ``scl_inter = -1024`` must not shift the labels). The file is
    written atomically. Refused with :class:`ConfigError` when the shape differs from the reference's
    first three dimensions.
    """
    nibabel = _require("nibabel", "writing NIfTI label volumes")
    out = Path(out_path)
    if not out.name.lower().endswith((".nii", ".nii.gz")):
        raise ConfigError(f"{out}: a label volume is written as .nii or .nii.gz")
    array = _labels(labels, "labels")
    try:
        reference = nibabel.load(str(reference_path))
    except (OSError, EOFError, ValueError, nibabel.filebasedimages.ImageFileError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{reference_path}: unreadable reference volume ({reason})") from None
    if array.shape != tuple(reference.shape[:3]):
        raise ConfigError(
            f"{reference_path}: labels of shape {array.shape} do not match the reference volume's "
            f"{tuple(reference.shape[:3])}"
        )
    if array.size and (int(array.min()) < 0 or int(array.max()) > np.iinfo(np.int16).max):
        raise ValueError(f"labels must lie in 0..{np.iinfo(np.int16).max}")
    dtype = np.uint8 if not array.size or int(array.max()) <= 255 else np.int16
    if isinstance(reference, nibabel.Nifti1Image):  # NIfTI-2 too (a subclass): keep its header verbatim
        header = reference.header.copy()
        header.set_data_dtype(dtype)
        header.set_slope_inter(1.0, 0.0)
        header["cal_min"], header["cal_max"] = 0, 0  # 0, 0 = unset: no CT display window on labels
        header["descrip"] = NIFTI_DESCRIPTION.encode()  # ours: a later predict may replace it
        # affine=None: nibabel keeps the header's qform and sform (matrices and codes) exactly as they are
        image = type(reference)(array.astype(dtype), None, header=header)
    else:  # another format nibabel reads (Analyze, MGH): only its affine carries over
        image = nibabel.Nifti1Image(array.astype(dtype), reference.affine)
        image.header["descrip"] = NIFTI_DESCRIPTION.encode()
    data = image.to_bytes()
    if out.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)  # mtime 0: the same labels give the same bytes
    atomic_write_bytes(out, data)
    return out
