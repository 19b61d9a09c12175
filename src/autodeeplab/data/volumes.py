"""3D volumes: NIfTI pairs in a plain folder (``nifti``) and the Medical Segmentation Decathlon (``msd``).

Layouts::

    nifti:  <root>/images/<id>.nii.gz   <root>/labels/<id>.nii.gz   (same names; .nii too)
            <root>/classes.yaml         optional (names, values, ignore: see data/classes_file.py)
    msd:    <root>/dataset.json         its 'training' list of {"image", "label"} paths, 'labels' and
            <root>/imagesTr/  labelsTr/ 'modality' (the channels of a 4D image, channels last on disk)

``dataset[i]`` is ``(image float32 [C, D, H, W], mask int64 [D, H, W])``: the image z-scored per channel over
its nonzero voxels (:func:`~autodeeplab.data.nifti.zscore_nonzero`), the mask in ``0..K-1`` or the ignore
label, both optionally resampled to ``target_spacing`` (image trilinear, mask nearest) and then passed
through the transform (patch sampling for training, see :mod:`autodeeplab.data.volume_transforms`).

Classes: a ``nifti`` folder without a classes file takes its classes from the label values of all its
volumes (read once per process), which must be ``0..K-1`` with none missing; ``msd`` takes dataset.json's
``labels``.

Splits: ``all`` is every pair; ``train``/``val``/``test`` are made here from the ids. ``split_order="seeded"``
(default) is :func:`~autodeeplab.data.folder.seeded_split` (each id's split fixed by its name and
``split_seed``); ``"sorted"`` takes the last ``round(n·test)`` sorted ids for test and the
``round(n·val)`` before them for val: with fractions (0.1, 0.2) the 260 hippocampus volumes split into 182
train, 26 val and the last 52 for test. The split is written into each run (``data_split.json``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autodeeplab.config.checks import split_fractions as split_fractions_check
from autodeeplab.config.volumes import SPLIT_ORDERS
from autodeeplab.data.base import SegmentationDataset
from autodeeplab.data.classes_file import MAX_CLASSES, find_classes_file, read_classes_file
from autodeeplab.data.folder import seeded_split
from autodeeplab.data.labels import LabelMap, bit_palette
from autodeeplab.data.nifti import (
    VolumeFile,
    check_pair,
    label_summary,
    nifti_stem,
    read_image_volume,
    read_label_volume,
    zscore_nonzero,
)
from autodeeplab.data.problems import DataProblem, DataProblemError, problem
from autodeeplab.data.scan import files_by_key, pair_by_key
from autodeeplab.errors import ConfigError
from autodeeplab.fileio import loads_json

VolumeTransform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]
"""``transform(image [C, D, H, W], mask [D, H, W], rng)`` → ``(float32 [C, d, h, w], int64 [d, h, w])``."""

VOLUME_SPLITS = ("all", "train", "val", "test")
VOLUME_DATASETS = ("nifti", "msd")
"""The dataset names whose samples are volumes (``[C, D, H, W]``)."""


def as_tensors(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation transform: the whole volume, unchanged."""
    return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(mask))


def sorted_split(ids: Sequence[str], fractions: Sequence[float]) -> dict[str, list[str]]:
    """The last ``round(n·fractions[1])`` sorted ids are test, the ``round(n·fractions[0])`` before them
    val, the rest train."""
    ordered = sorted(ids)
    n = len(ordered)
    n_test, n_val = round(n * fractions[1]), round(n * fractions[0])
    cut = n - n_test - n_val
    return {"train": ordered[:cut], "val": ordered[cut : n - n_test], "test": ordered[n - n_test :]}


def resample(volume: torch.Tensor, shape: Sequence[int], labels: bool) -> torch.Tensor:
    """``[C, D, H, W]`` (or ``[D, H, W]`` labels) to spatial ``shape``: trilinear, or nearest for labels."""
    x = volume[None] if labels else volume
    mode = "nearest-exact" if labels else "trilinear"
    kwargs = {} if labels else {"align_corners": False}
    x = torch.nn.functional.interpolate(x[None].float(), size=tuple(shape), mode=mode, **kwargs)[0]
    return x[0].long() if labels else x


class VolumeDataset(SegmentationDataset):
    """Pairs of NIfTI volumes; subclasses list them (:meth:`_list_pairs`) and name the classes."""

    spatial_dims = 3
    in_channels = 1
    channels_on_disk = False
    """Whether a 4th axis of an image file holds its channels (``msd``); otherwise a 4D image is refused."""
    layout = ""

    def __init__(
        self,
        root: str | Path | None,
        split: str,
        transform: VolumeTransform | None = None,
        seed: int = 0,
        strict: bool = True,
        split_fractions: Sequence[float] = (0.15, 0.15),
        split_seed: int = 0,
        split_order: str = "seeded",
        target_spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__(split, None, seed)
        self.transform = transform  # type: ignore[assignment]
        split_fractions_check("split_fractions", tuple(split_fractions))
        if split_order not in SPLIT_ORDERS:
            raise ConfigError(f"split_order: must be one of {', '.join(SPLIT_ORDERS)}, got {split_order!r}")
        if target_spacing is not None and (
            len(target_spacing) != 3 or not all(isinstance(s, (int, float)) and s > 0 for s in target_spacing)
        ):
            raise ConfigError(
                f"target_spacing: must be three positive sizes in mm or null, got {target_spacing!r}"
            )
        self.split_fractions = (float(split_fractions[0]), float(split_fractions[1]))
        self.split_seed, self.split_order = split_seed, split_order
        self.target_spacing = None if target_spacing is None else tuple(float(s) for s in target_spacing)
        if root is None or str(root) == "":
            raise ConfigError(f"data_root: the {self.name} dataset needs a data root (--data-root PATH)")
        self.root = Path(root).expanduser()
        self.check_split_name(self.root, split)
        self.split_record: dict[str, list[str]] | None = None
        self._spacings: dict[int, tuple[float, float, float]] = {}
        self.label_map = LabelMap.identity(1)
        self.samples: list[tuple[Path, Path]] = []
        self.ids: list[str] = []
        self.strict = strict
        self.class_problem: DataProblem | None = None
        """Why the classes could not be named (then ``class_names`` is empty); None when they were."""
        if not self.root.is_dir():
            self.problems = [problem(self.root, f"data root not found (expected {self.layout})")]
        else:
            pairs, self.problems = self._list_pairs()
            if pairs and not (strict and self.problems):
                # Without strict (data check, data stats), name the classes from the pairs there are, so
                # that their label values are checked against the right class set despite an orphan.
                try:
                    self._name_classes(pairs)
                except DataProblemError as exc:
                    if strict:
                        raise
                    self.class_problem = exc.problem
                    self.problems.append(exc.problem)
            chosen = self._split_ids(sorted(pairs))
            self.ids = [i for i in sorted(pairs) if i in chosen]
            self.samples = [pairs[i] for i in self.ids]
            if not self.samples and not self.problems:
                self.problems = [problem(self.root, f"split {split!r} is empty: no volumes found")]
        if strict and self.problems:
            first, more = self.problems[0], len(self.problems) - 1
            if more:
                first = DataProblem(
                    first.path,
                    f"{first.message} (and {more} more problems; run 'autodeeplab data check' to list them)",
                )
            raise DataProblemError(first)

    # -- what subclasses provide ------------------------------------------------------------------------
    def _list_pairs(self) -> tuple[dict[str, tuple[Path, Path]], list[DataProblem]]:
        """``{id: (image file, label file)}`` of every pair, and the problems found while listing."""
        raise NotImplementedError

    def _name_classes(self, pairs: dict[str, tuple[Path, Path]]) -> None:
        """Set ``class_names``, ``palette`` and ``label_map``."""
        raise NotImplementedError

    # -- splits -----------------------------------------------------------------------------------------
    @classmethod
    def available_splits(cls, root: str | Path | None) -> tuple[str, ...]:
        return VOLUME_SPLITS

    def _split_ids(self, ids: list[str]) -> set[str]:
        if self.split == "all":
            return set(ids)
        if self.split_order == "sorted":
            self.split_record = sorted_split(ids, self.split_fractions)
        else:
            self.split_record = seeded_split(set(ids), self.split_fractions, self.split_seed)
        return set(self.split_record[self.split])

    # -- reading ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, index: int) -> Path:
        return self.samples[self._index(index)][0]

    def label_path(self, index: int) -> Path:
        return self.samples[self._index(index)][1]

    def volume_id(self, index: int) -> str:
        return self.ids[self._index(index)]

    def spacing(self, index: int) -> tuple[float, float, float]:
        """The voxel size (mm) of the volume ``dataset[index]`` returns (the target spacing when set)."""
        if self.target_spacing is not None:
            return self.target_spacing  # type: ignore[return-value]
        index = self._index(index)
        if index not in self._spacings:
            self._spacings[index] = read_label_volume(self.label_path(index)).spacing
        return self._spacings[index]

    def read_image(self, path: Path) -> VolumeFile:
        """An image file of this dataset, raw (float32 ``[C, D, H, W]``), its channels checked."""
        image = read_image_volume(path, channels=self.channels_on_disk)
        found = image.data.shape[0]
        if found != self.in_channels:
            raise DataProblemError(
                problem(path, f"{found} channel{'s' * (found != 1)}, {self.channels_expected()}")
            )
        return image

    def channels_expected(self) -> str:
        """How many channels an image must have, and who says so (for messages)."""
        return f"expected {self.in_channels}"

    def load_volume(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Volume ``index`` normalised, before the transform: ``(float32 [C, D, H, W], int64 [D, H, W])``."""
        image_path, label_path = self.samples[self._index(index)]
        image = self.read_image(image_path)
        label = read_label_volume(label_path)
        check_pair(image, label, image_path, label_path)
        self._spacings[self._index(index)] = image.spacing
        mask = self.label_map.apply(label.data, label_path).astype(np.int64)
        data = zscore_nonzero(image.data)
        if self.target_spacing is not None and tuple(image.spacing) != self.target_spacing:
            shape = [
                max(1, round(n * s / t))
                for n, s, t in zip(image.shape, image.spacing, self.target_spacing, strict=True)
            ]
            data = resample(torch.from_numpy(data), shape, labels=False).numpy()
            mask = resample(torch.from_numpy(mask), shape, labels=True).numpy()
        return data, mask

    def original_labels(self, index: int) -> tuple[np.ndarray, tuple[float, float, float]]:
        """Labels ``int64 [D, H, W]`` of volume ``index`` on its file's own grid, and their voxel size (mm):
        scores are computed on these, also for a dataset resampled to ``target_spacing``."""
        path = self.label_path(index)
        label = read_label_volume(path)
        return self.label_map.apply(label.data, path).astype(np.int64), tuple(label.spacing)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        return self.load_volume(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._index(index)
        image, mask = self.load_volume(index)
        transform = self.transform if self.transform is not None else as_tensors
        return transform(image, mask, self.sample_rng(index))

    def label_values(self, pairs: dict[str, tuple[Path, Path]]) -> np.ndarray:
        """The sorted distinct stored values of every label volume (:func:`label_summary`: read once per
        process). A label file that cannot be read raises its problem; without ``strict`` it is left out
        (``data check`` reports it with the others)."""
        found = [np.zeros(0, dtype=np.int64)]
        for _, label in sorted(pairs.values()):
            try:
                found.append(label_summary(label).values)
            except DataProblemError:
                if self.strict:
                    raise
        return np.unique(np.concatenate(found))


class NiftiFolderDataset(VolumeDataset):
    """``images/`` + ``labels/`` of NIfTI files with the same names (the hippocampus layout)."""

    name = "nifti"
    layout = "<root>/images/*.nii.gz and <root>/labels/*.nii.gz with the same file names"

    def _list_pairs(self) -> tuple[dict[str, tuple[Path, Path]], list[DataProblem]]:
        images_dir, labels_dir = self.root / "images", self.root / "labels"
        for folder in (images_dir, labels_dir):
            if not folder.is_dir():
                return {}, [problem(folder, f"wrong folder layout: not found; expected {self.layout}")]
        images, problems = files_by_key(images_dir, (".gz", ".nii"), nifti_stem)
        labels, more = files_by_key(labels_dir, (".gz", ".nii"), nifti_stem)
        samples, orphans = pair_by_key(
            images, labels, lambda k: labels_dir / f"{k}.nii.gz", lambda k: images_dir / f"{k}.nii.gz"
        )
        return {nifti_stem(image): (image, label) for image, label in samples}, problems + more + orphans

    def _name_classes(self, pairs: dict[str, tuple[Path, Path]]) -> None:
        path = find_classes_file(self.root)
        if path is not None:
            spec = read_classes_file(path)
            self.class_names, self.label_map = spec.names, spec.label_map()
            self.palette = spec.colours if spec.colours is not None else bit_palette(len(spec.names))
            # As for a plain folder: data check and the start of a run refuse 0/255 labels whose
            # foreground the default 'ignore: 255' would hide.
            self.classes, self.classes_file = spec, path
            return
        values = self.label_values(pairs)
        count = int(values.max()) + 1 if values.size else 1
        hint = f"say which value is which class in {self.root / 'classes.yaml'} ('values:' and 'ignore:')"
        if values.min(initial=0) < 0 or len(values) != count:
            shown = ", ".join(str(int(v)) for v in values[:8]) + (", ..." if len(values) > 8 else "")
            missing = sorted(set(range(min(count, 1000))) - {int(v) for v in values})[:8]
            absent = f" ({', '.join(map(str, missing))} never occur)" if missing and values.min() >= 0 else ""
            raise DataProblemError(
                problem(
                    self.root / "labels",
                    f"label values {shown} are not 0..K-1 with none missing{absent}; {hint}",
                )
            )
        if count > MAX_CLASSES:
            raise DataProblemError(
                problem(
                    self.root / "labels",
                    f"label values 0..{count - 1} would be {count} classes, more than the {MAX_CLASSES} "
                    f"supported (are these label volumes?); {hint}",
                )
            )
        self.class_names = ("background", *(f"class {v}" for v in range(1, count)))
        self.palette = bit_palette(count)
        self.label_map = LabelMap.identity(count, ignore_values=())
        self.warnings.append(
            f"{self.root}: no classes file; {count} classes from the label values 0..{count - 1} "
            f"(name them in classes.yaml: 'names: [background, ...]')"
        )


class MSDDataset(VolumeDataset):
    """A Medical Segmentation Decathlon task folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``)."""

    name = "msd"
    layout = (
        "a Decathlon task: <root>/dataset.json with a 'training' list, <root>/imagesTr/, <root>/labelsTr/"
    )
    channels_on_disk = True

    def channels_expected(self) -> str:
        return f"but dataset.json's 'modality' names {self.in_channels}"

    def _read_json(self) -> dict[str, Any]:
        path = self.root / "dataset.json"
        if not path.is_file():
            raise DataProblemError(problem(path, f"wrong folder layout: not found; expected {self.layout}"))
        try:
            spec = loads_json(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataProblemError(problem(path, f"unreadable dataset.json ({exc})")) from None
        if not isinstance(spec, dict) or not isinstance(spec.get("training"), list):
            raise DataProblemError(problem(path, "dataset.json: expected an object with a 'training' list"))
        return spec

    def _list_pairs(self) -> tuple[dict[str, tuple[Path, Path]], list[DataProblem]]:
        path = self.root / "dataset.json"
        try:
            spec = self._read_json()
        except DataProblemError as exc:
            return {}, [exc.problem]
        self._spec = spec
        modality = spec.get("modality", {"0": "image"})
        self.in_channels = len(modality) if isinstance(modality, (dict, list)) and modality else 1
        pairs: dict[str, tuple[Path, Path]] = {}
        problems: list[DataProblem] = []
        for n, entry in enumerate(spec["training"]):
            where = f"dataset.json: training[{n}]"
            if not isinstance(entry, dict) or not all(
                isinstance(entry.get(k), str) for k in ("image", "label")
            ):
                problems.append(problem(path, f"{where}: expected {{'image': path, 'label': path}}"))
                continue
            image, label = (self.root / entry[k] for k in ("image", "label"))
            missing = [p for p in (image, label) if not p.is_file()]
            for p in missing:
                problems.append(problem(p, f"named by {where} but not found"))
            key = nifti_stem(image) or image.name
            if key in pairs:
                problems.append(problem(path, f"{where}: {key!r} is listed twice"))
            elif not missing:
                pairs[key] = (image, label)
        return pairs, problems

    def _name_classes(self, pairs: dict[str, tuple[Path, Path]]) -> None:
        path = self.root / "dataset.json"
        labels = self._spec.get("labels")
        try:
            table = {int(k): str(v) for k, v in labels.items()}
        except (AttributeError, TypeError, ValueError):
            raise DataProblemError(problem(path, "dataset.json: 'labels' must map values to names")) from None
        if sorted(table) != list(range(len(table))) or not table:
            raise DataProblemError(
                problem(
                    path, f"dataset.json: 'labels' values {sorted(table)} are not 0..K-1 with none missing"
                )
            )
        if len(table) > MAX_CLASSES:
            raise DataProblemError(
                problem(
                    path,
                    f"dataset.json: 'labels' names {len(table)} classes, more than the {MAX_CLASSES} "
                    "supported",
                )
            )
        self.class_names = tuple(table[v] for v in range(len(table)))
        self.palette = bit_palette(len(table))
        self.label_map = LabelMap.identity(len(table), ignore_values=())
