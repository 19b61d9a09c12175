"""The ``data.volumes`` section of the search and training settings: how volumes are read and sampled.

Used with the volume datasets (``nifti``, ``msd``); images ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autodeeplab.config.checks import below_one, dotted
from autodeeplab.errors import ConfigError

SPLIT_ORDERS = ("seeded", "sorted")


@dataclass
class VolumeDataConfig:
    """Splits, resampling, training patches and the sliding window of volumes."""

    split_order: str = "seeded"
    """``seeded``: each id's split fixed by its name and ``data.split_seed`` (about ``data.split_fractions``
    of the ids in val and test); ``sorted``: the last ``round(n · test)`` sorted ids for test and the
    ``round(n · val)`` before them for val (the documented hippocampus split)."""
    patch_size: tuple[int, int, int] = (64, 64, 64)
    """The training patch (D, H, W), padded where a volume is smaller; also the sliding window of
    evaluation."""
    foreground_prob: float = 0.33
    """The probability that a training patch is centred on a foreground voxel (otherwise anywhere)."""
    target_spacing: tuple[float, float, float] | None = None
    """Resample every volume to this voxel size (mm) when read; null keeps each file's own."""
    window_overlap: float = 0.5
    """The fraction of a sliding-window patch shared with its neighbour at evaluation."""

    def __post_init__(self) -> None:
        # Normalise only (YAML gives lists); the checks are in validate().
        self.patch_size = tuple(self.patch_size)
        if self.target_spacing is not None:
            self.target_spacing = tuple(self.target_spacing)

    def validate(self, where: str = "data.volumes") -> None:
        """Raise :class:`ConfigError` naming ``{where}.{field}`` for the first value that cannot work."""
        patch = self.patch_size
        if len(patch) != 3 or not all(_is_int(p) and p >= 1 for p in patch):
            raise ConfigError(
                f"{dotted(where, 'patch_size')}: must be three integers >= 1, got {list(patch)}"
            )
        prob = self.foreground_prob
        if not _is_number(prob) or not 0.0 <= prob <= 1.0:
            raise ConfigError(f"{dotted(where, 'foreground_prob')}: must be a number in [0, 1], got {prob!r}")
        if self.split_order not in SPLIT_ORDERS:
            raise ConfigError(
                f"{dotted(where, 'split_order')}: must be one of {', '.join(SPLIT_ORDERS)}, "
                f"got {self.split_order!r}"
            )
        spacing = self.target_spacing
        if spacing is not None and (len(spacing) != 3 or not all(_is_number(s) and s > 0 for s in spacing)):
            raise ConfigError(
                f"{dotted(where, 'target_spacing')}: must be null or three positive sizes in mm, "
                f"got {list(spacing)}"
            )
        below_one(dotted(where, "window_overlap"), self.window_overlap)

    def dataset_options(self, split_fractions: Any, split_seed: int) -> dict[str, Any]:
        """The ``build_dataset`` options of a volume dataset (JSON types: recorded in ``model.pt``)."""
        spacing = None if self.target_spacing is None else list(self.target_spacing)
        return {
            "split_fractions": list(split_fractions),
            "split_seed": split_seed,
            "split_order": self.split_order,
            "target_spacing": spacing,
        }


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
