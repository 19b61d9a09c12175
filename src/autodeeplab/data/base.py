"""The dataset contract every reader follows, and the shared reader for image-file + label-file layouts.

``dataset[i]`` is ``(image float32 [3, H, W] normalised, mask int64 [H, W])`` with mask values in
``0..num_classes-1`` or :data:`IGNORE_INDEX`. Augmentation randomness is drawn from a generator seeded by
``(seed, epoch, index)`` only, so a sample is the same whatever the number of DataLoader workers and whichever
worker reads it. Call :meth:`SegmentationDataset.set_epoch` before each epoch's iterator is created
(workers copy the dataset when the iterator starts, so ``persistent_workers=True`` would keep the old epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from autodeeplab.data.imageio import check_same_size, read_label, read_rgb, read_size
from autodeeplab.data.labels import IGNORE_INDEX, Colour, LabelMap, decode_colours
from autodeeplab.data.problems import DataProblem, DataProblemError, problem
from autodeeplab.data.transforms import EvalTransform
from autodeeplab.errors import ConfigError

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]
"""``transform(image uint8 [H, W, 3], mask uint8 [H, W], rng) -> (float32 [3, h, w], int64 [h, w])``."""

Sample = tuple[Path, Path]
"""(image file, label file) of one sample."""


class SegmentationDataset(Dataset):
    """Base class: class metadata, seeded per-sample augmentation and raw access for overlays.

    Subclasses set ``name``, ``splits``, ``class_names``, ``palette`` (one RGB per class) and implement
    ``__len__``, :meth:`image_path` and :meth:`_load`.
    """

    name: str = ""
    splits: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    palette: list[Colour] = []
    ignore_index: int = IGNORE_INDEX
    image_size: tuple[int, int] | None = None
    """(H, W) that bounds the images, for crop checks: their nominal size where all share one (CamVid,
    Cityscapes, synthetic); where sizes vary (VOC, ADE20K, plain folders), the largest height and width of
    the split's images, read from the file headers on first use (see
    :meth:`PairedFilesDataset.largest_image_size`); ``None`` when not known (nothing listed)."""

    def __init__(self, split: str, transform: Transform | None = None, seed: int = 0) -> None:
        if not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed: must be a non-negative integer, got {seed!r}")
        self.split = split
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.problems: list[DataProblem] = []
        self.warnings: list[str] = []
        """Things about the data a user should know that do not stop it (e.g. files no split list names)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def available_splits(cls, root: str | Path | None) -> tuple[str, ...]:
        """The split names this dataset offers (some layouts decide from what is on disk)."""
        return cls.splits

    @classmethod
    def check_split_name(cls, root: str | Path | None, split: str, field: str = "split") -> None:
        """ConfigError naming ``field`` unless ``split`` is one of :meth:`available_splits` (no listing)."""
        choices = cls.available_splits(root)
        if split not in choices:
            listed = ", ".join(choices) if choices else "none found"
            raise ConfigError(f"{field}: {split!r} is not a split of {cls.name} (choose from: {listed})")

    def _check_split(self, root: str | Path | None) -> None:
        self.check_split_name(root, self.split)

    def __len__(self) -> int:
        raise NotImplementedError

    def image_path(self, index: int) -> Path | str:
        """Where sample ``index`` comes from (a file path, or a pseudo path for generated data)."""
        raise NotImplementedError

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` as ``(uint8 [H, W, 3] RGB, uint8 [H, W] train ids)``; raises DataProblemError."""
        raise NotImplementedError

    def _index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        return index % len(self)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` un-normalised and un-augmented: ``(uint8 [H, W, 3] RGB, int64 [H, W] mask)``."""
        image, mask = self._load(self._index(index))
        return image, mask.astype(np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Make the next reads use the augmentation draws of ``epoch``."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"epoch: must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def sample_rng(self, index: int) -> np.random.Generator:
        """The generator of sample ``index`` in the current epoch: a pure function of (seed, epoch, index)."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._index(index)
        image, mask = self._load(index)
        transform = self.transform if self.transform is not None else EvalTransform()
        return transform(image, mask, self.sample_rng(index))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, samples={len(self)}, classes={self.num_classes})"


class PairedFilesDataset(SegmentationDataset):
    """A dataset stored as pairs of files: an RGB image and a label map of the same size.

    Subclasses describe the layout (``layout``: the human description used in "wrong folder layout" messages)
    and implement :meth:`_scan`, which lists the pairs of one split and the problems found while listing.
    With ``strict`` (the default, used by training and search) the first listing problem is raised at once;
    ``autodeeplab data check`` builds the dataset with ``strict=False`` and collects them all.
    """

    layout: str = ""
    label_map: LabelMap = LabelMap.identity(1)
    colour_labels: Mapping[Colour, int] | None = None
    """When set, RGB label files are decoded through this colour → stored value table."""
    colour_hint: str = ""
    """Ends the message for an RGB label file when :attr:`colour_labels` is not set: how to make it one."""

    def __init__(
        self,
        root: str | Path | None,
        split: str,
        transform: Transform | None = None,
        seed: int = 0,
        strict: bool = True,
    ) -> None:
        super().__init__(split, transform, seed)
        if root is None or str(root) == "":
            raise ConfigError(f"data_root: the {self.name} dataset needs a data root (--data-root PATH)")
        self.root = Path(root).expanduser()
        self._largest_size: tuple[int, int] | None = None
        self._check_split(self.root)
        self.samples: list[Sample] = []
        if not self.root.is_dir():
            self.problems = [problem(self.root, f"data root not found (expected {self.layout})")]
        else:
            self.samples, self.problems = self._scan()
            if not self.samples and not self.problems:
                self.problems = [problem(self.root, f"split {split!r} is empty: no samples found")]
        if strict and self.problems:
            first = self.problems[0]
            more = len(self.problems) - 1
            if more:
                hint = f" (and {more} more problems; run 'autodeeplab data check' to list them)"
                first = DataProblem(first.path, first.message + hint)
            raise DataProblemError(first)

    def _scan(self) -> tuple[list[Sample], list[DataProblem]]:
        raise NotImplementedError

    def wrong_layout(self, missing: Path) -> DataProblem:
        """The problem for a root that lacks ``missing``, saying which layout was expected."""
        return problem(missing, f"wrong folder layout: not found; expected {self.layout}")

    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, index: int) -> Path:
        return self.samples[self._index(index)][0]

    def label_path(self, index: int) -> Path:
        return self.samples[self._index(index)][1]

    def largest_image_size(self) -> tuple[int, int] | None:
        """The largest height and the largest width among this split's images (``None``: no samples).

        For layouts whose image sizes vary, as their ``image_size``. Only the file headers are read, once per
        dataset object (about 30 µs a cached file on a laptop: some 0.6 s for ADE20K's 20k training images);
        an unreadable header raises the problem :meth:`load_raw` would raise for that file.
        """
        if self._largest_size is None and self.samples:
            sizes = [read_size(image) for image, _ in self.samples]
            self._largest_size = (max(h for h, _ in sizes), max(w for _, w in sizes))
        return self._largest_size

    def label_map_for(self, label_path: Path) -> LabelMap:
        """The label encoding of one label file (layouts with several label kinds override this)."""
        return self.label_map

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.samples[index]
        image = read_rgb(image_path)
        label_map = self.label_map_for(label_path)
        colours = self.colour_labels
        raw = read_label(label_path, colours is not None, self.colour_hint, colours, label_map)
        if raw.ndim == 3 and self.colour_labels is not None:
            raw = decode_colours(raw, self.colour_labels, label_path, label_map.expected)
        try:
            check_same_size(image, raw, image_path, label_path)
        except DataProblemError as size_problem:
            # Report stray values too, so that one round of fixing the file is enough.
            try:
                label_map.apply(raw, label_path)
            except DataProblemError as value_problem:
                both = f"{size_problem.problem.message}; {value_problem.problem.message}"
                raise DataProblemError(problem(label_path, both)) from None
            raise
        return image, label_map.apply(raw, label_path)
