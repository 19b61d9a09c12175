"""Per-class scores of label volumes: Dice and HD95 (95th-percentile symmetric surface distance).

NaN conventions (NaN in Python floats, ``None`` in JSON, as :mod:`autodeeplab.infer.metrics` does): a class
absent from both prediction and truth has no Dice; a class empty in either has no HD95; background (class 0)
has a Dice but never an HD95. Means skip NaNs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from autodeeplab.errors import ConfigError, DataError

INSTALL_HINT = "pip install -e '.[medical]'"


def _require(module: str, what: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ConfigError(
            f"{what} needs {module.split('.')[0]} (the medical extra): {INSTALL_HINT}"
        ) from None


def _labels(values: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label volume [D, H, W], got {array.dtype} {array.shape}")
    return array.astype(np.int64, copy=False)


def _pair(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    ignore_index: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pred, target, valid)`` as int64 numpy volumes, checked as :class:`ConfusionMatrix` checks them."""
    p, t = _labels(pred, "pred"), _labels(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} != target shape {t.shape}")
    valid = t != ignore_index if ignore_index is not None else np.ones(t.shape, dtype=bool)
    bad = t[valid & ((t < 0) | (t >= num_classes))]
    if bad.size:
        raise DataError(
            f"ground-truth label {int(bad[0])} is outside 0..{num_classes - 1} and is not the ignore label "
            f"{ignore_index}"
        )
    if p.size and (int(p.min()) < 0 or int(p.max()) >= num_classes):
        raise ValueError(f"predicted labels must lie in 0..{num_classes - 1}")
    return p, t, valid


def dice_per_class(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
) -> list[float]:
    """Dice ``2|P∩T| / (|P| + |T|)`` of each class ``0 .. K-1`` (background included) of two label volumes
    ``[D, H, W]``, counted over the voxels whose ``target`` is not ``ignore_index``; NaN for a class absent
    from both (no evidence either way, so it is left out of means rather than scored 0 or 1)."""
    p, t, valid = _pair(pred, target, num_classes, ignore_index)
    p, t = p[valid], t[valid]
    # Three bincounts give every class's |P∩T|, |P| and |T| in one pass each: exact integer counts.
    both = np.bincount(t[p == t], minlength=num_classes).astype(np.float64)
    size = np.bincount(p, minlength=num_classes) + np.bincount(t, minlength=num_classes)
    return [2.0 * both[c] / size[c] if size[c] else math.nan for c in range(num_classes)]


def hd95_per_class(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    spacing: Sequence[float],
    ignore_index: int | None = 255,
) -> list[float]:
    """95th-percentile symmetric Hausdorff distance of each class of two label volumes ``[D, H, W]``, in
    the units of ``spacing`` (voxel size along ``D, H, W``); a list of ``num_classes`` with NaN for class 0
    (background) and for a class empty in the prediction or the truth.

    The definition is MONAI's ``compute_hausdorff_distance(..., percentile=95)`` (a test checks they agree):
    a surface is the mask voxels with a 6-neighbour outside the mask; distances from each surface voxel to
    the other surface are exact Euclidean with ``sampling=spacing``; the result is the larger of the two
    directed 95th percentiles. Written on scipy (which MONAI calls for it anyway) so that label volumes need
    no one-hot ``[1, K, D, H, W]`` float copies, no MONAI import, and the ignore mask fits in: predicted
    voxels on ignored truth neither make a class non-empty nor count as surface, yet still shape the mask
    (so the ignored region draws no surface of its own).
    """
    ndimage = _require("scipy.ndimage", "HD95")
    sampling = tuple(float(s) for s in spacing)
    if len(sampling) != 3 or not all(s > 0 and math.isfinite(s) for s in sampling):
        raise ValueError(f"spacing must be three positive voxel sizes, got {list(spacing)}")
    p, t, valid = _pair(pred, target, num_classes, ignore_index)
    out = [math.nan] * num_classes
    for c in range(1, num_classes):
        pc, tc = p == c, t == c
        if not (pc & valid).any() or not tc.any():
            continue
        # Crop to the box around both masks: both surfaces lie inside it, so the distance transform on the
        # crop is exact, and a small organ in a big scan costs the organ's size rather than the scan's.
        axes = np.nonzero(pc | tc)
        box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in axes)
        pc, tc, keep = pc[box], tc[box], valid[box]
        surface_p = pc & ~ndimage.binary_erosion(pc) & keep
        surface_t = tc & ~ndimage.binary_erosion(tc)
        if not surface_p.any():  # every predicted surface voxel lies in the ignored region
            continue
        p_to_t = ndimage.distance_transform_edt(~surface_t, sampling=sampling)[surface_p]
        t_to_p = ndimage.distance_transform_edt(~surface_p, sampling=sampling)[surface_t]
        out[c] = float(max(np.percentile(p_to_t, 95), np.percentile(t_to_p, 95)))
    return out


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _json(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def keep_largest_component(labels: np.ndarray) -> np.ndarray:
    """Labels ``[D, H, W]`` with every foreground class reduced to its largest connected component
    (26-connectivity: voxels touching at a corner belong together); the rest becomes background (0).

    nnU-Net's post-processing for structures that come in one piece (it applies it when it raises the
    cross-validation Dice): islands of a class away from the structure are removed. A copy; ties between
    components of equal size keep the first in scan order.
    """
    ndimage = _require("scipy.ndimage", "keeping the largest component")
    out = np.array(labels, copy=True)
    structure = np.ones((3,) * out.ndim, dtype=bool)
    for c in np.unique(out):
        if c == 0:
            continue
        components, count = ndimage.label(out == c, structure=structure)
        if count > 1:
            sizes = np.bincount(components.ravel())[1:]
            out[(components > 0) & (components != int(np.argmax(sizes)) + 1)] = 0
    return out
