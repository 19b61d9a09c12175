"""Typed settings of the architecture search, with the paper's values as defaults (§5.1).

Presets: ``paper`` (the defaults: Cityscapes, 40 epochs, architecture steps from epoch 20) and
``cpu`` (the built-in synthetic data, small F and crops: a few minutes on a laptop CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autodeeplab.config.checks import (
    at_least,
    at_least_one_or_null,
    below_one,
    dotted,
    non_negative,
    positive,
    scale_range,
    seed_range,
    split_fractions,
)
from autodeeplab.config.settings import register_presets
from autodeeplab.config.volumes import VolumeDataConfig
from autodeeplab.errors import ConfigError
from autodeeplab.fast.execution import ExecutionConfig
from autodeeplab.search.budgets import BudgetConfig
from autodeeplab.space.autodeeplab.supernet import SearchSpaceConfig
from autodeeplab.space.dints.config import DintsSpaceConfig, check_sample_size

SEARCH_SPACES = ("autodeeplab", "dints")


@dataclass
class SearchDataConfig:
    """Where the search reads images from, and how it crops them."""

    dataset: str = "cityscapes"
    """A name from ``autodeeplab.data.DATASET_NAMES``; ``synthetic`` needs no root."""
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    crop_size: int = 321
    """Paper: 321×321 random crops from half-resolution Cityscapes images."""
    scale_range: tuple[float, float] = (1.0, 1.0)
    """Random rescaling before the crop; the paper's search uses plain crops."""
    flip: bool = True
    num_workers: int = 2
    max_val_images: int | None = None
    """Validate on the first N images only (None: the whole split)."""
    val_crop: bool = True
    """Validate on the centre ``crop_size`` window of each image (one supernet forward of a training crop
    per image; the paper does not say how it validated during the search); false: whole images, which on
    large photos costs many times a training step per image."""
    synthetic_train_samples: int = 64
    synthetic_val_samples: int = 16
    synthetic_size: tuple[int, int] = (64, 64)
    split_fractions: tuple[float, float] = (0.15, 0.15)
    """A plain folder without split lists: about these fractions of its samples form val and test (each
    file's split fixed by its name and ``split_seed``; see :func:`autodeeplab.data.folder.seeded_split`)."""
    split_seed: int = 0
    volumes: VolumeDataConfig = field(default_factory=VolumeDataConfig)
    """Volumes (``nifti``, ``msd``): split order, training patch, resampling, sliding window."""

    def __post_init__(self) -> None:
        # Normalise only; the checks are in validate(), called by SearchConfig with the section's name.
        self.scale_range = tuple(self.scale_range)
        self.synthetic_size = tuple(self.synthetic_size)
        self.split_fractions = tuple(self.split_fractions)

    def validate(self, where: str = "data") -> None:
        """Raise :class:`ConfigError` naming ``{where}.{field}`` for the first value that cannot work."""
        at_least(dotted(where, "crop_size"), self.crop_size, 1)
        scale_range(dotted(where, "scale_range"), self.scale_range)
        at_least(dotted(where, "num_workers"), self.num_workers, 0)
        at_least_one_or_null(dotted(where, "max_val_images"), self.max_val_images)
        at_least(dotted(where, "synthetic_train_samples"), self.synthetic_train_samples, 1)
        split_fractions(dotted(where, "split_fractions"), self.split_fractions)
        seed_range(dotted(where, "split_seed"), self.split_seed)
        at_least(dotted(where, "synthetic_val_samples"), self.synthetic_val_samples, 1)
        self.volumes.validate(dotted(where, "volumes"))


@dataclass
class SearchConfig:
    """Everything a search run depends on; written to the run directory as ``config.yaml``."""

    search_space: str = "autodeeplab"
    """``autodeeplab`` (the paper's cell and network-level search: ``space``) or ``dints`` (DiNTS's
    multi-path topology search: ``dints``; CLI ``--space dints``). Both take their dimensions from
    ``space.spatial_dims``."""
    space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)
    dints: DintsSpaceConfig = field(default_factory=DintsSpaceConfig)
    """The DiNTS supernet and its budget (used when ``search_space`` is ``dints``)."""
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    """A multiply-add target for the decoded Auto-DeepLab network (``budget.multiply_adds``, billions)."""
    data: SearchDataConfig = field(default_factory=SearchDataConfig)
    epochs: int = 40
    arch_start_epoch: int = 20
    """Architecture steps start at this epoch (warm-up: weights only)."""
    batch_size: int = 2
    lr: float = 0.025
    """Weight step: SGD, cosine-annealed from lr to lr_min over the epochs (per epoch)."""
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    """Clip the weight gradients' norm (DARTS convention; the paper is silent). 0 disables."""
    arch_lr: float = 3e-3
    """Architecture step: Adam on α and β."""
    arch_weight_decay: float = 1e-3
    arch_betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0
    steps_per_epoch: int | None = None
    """Cap on weight steps per epoch (None: one pass over trainA)."""
    checkpoint_every: int = 200
    """Also checkpoint every N weight steps inside an epoch (0: at epoch ends only). The paper's epoch is
    about 744 steps (2975 Cityscapes images, halves of 1488, batch 2), so 200 loses at most a quarter of an
    epoch to a kill while writing a few checkpoints per epoch; SIGINT/SIGTERM checkpoint at once anyway."""
    keep_checkpoints: int = 3
    tensorboard: bool = False
    """Also write TensorBoard event files (needs the optional ``tensorboard`` extra)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]``."""
    sync_bn: bool = False
    """With several processes (torchrun): the supernet's batch norms over the global batch of all ranks
    instead of each rank's share. Only on the reference path (every ``execution`` switch off: the fast path
    normalises with its own calls, which would bypass it) of the Auto-DeepLab space; refused otherwise. No
    effect in one process."""
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    """How the supernet runs (batched nodes, channels-last, checkpointing, precision); exact unless
    ``execution.precision`` is reduced. See :mod:`autodeeplab.fast.execution`."""

    def __post_init__(self) -> None:
        self.arch_betas = tuple(self.arch_betas)
        self.validate()

    def validate(self, where: str = "") -> None:
        """Raise :class:`ConfigError` naming ``{where}.{field}`` (bare at the top level, ``where=""``) for the
        first value that cannot work; the sections are validated under their keys (``data.crop_size``).

        Runs when the settings are built, so a bad file, preset, ``--set`` or ``--resume`` override fails
        before anything runs, and again in ``run_search`` (and the pipeline's input checks), for settings
        changed after they were built. Device checks wait for the device
        (:meth:`ExecutionConfig.check_device`).
        """
        for name in ("epochs", "batch_size", "keep_checkpoints"):
            at_least(dotted(where, name), getattr(self, name), 1)
        for name in ("lr", "arch_lr"):
            positive(dotted(where, name), getattr(self, name))
        for name in ("arch_start_epoch", "lr_min", "weight_decay", "arch_weight_decay", "grad_clip"):
            non_negative(dotted(where, name), getattr(self, name))
        at_least(dotted(where, "checkpoint_every"), self.checkpoint_every, 0)
        below_one(dotted(where, "momentum"), self.momentum)
        for index, beta in enumerate(self.arch_betas):
            below_one(dotted(where, f"arch_betas[{index}]"), beta)
        at_least_one_or_null(dotted(where, "steps_per_epoch"), self.steps_per_epoch)
        seed_range(dotted(where, "seed"), self.seed)
        if self.arch_start_epoch >= self.epochs:
            # Otherwise α and β never take a step and their random start would be reported as "found".
            raise ConfigError(
                f"{dotted(where, 'arch_start_epoch')}: must be less than epochs ({self.epochs}), got "
                f"{self.arch_start_epoch}: the architecture would never be optimised "
                f"(e.g. --set arch_start_epoch={self.epochs // 2})"
            )
        if self.search_space not in SEARCH_SPACES:
            raise ConfigError(
                f"{dotted(where, 'search_space')}: must be one of {', '.join(SEARCH_SPACES)}, got "
                f"{self.search_space!r}"
            )
        self.space.validate(dotted(where, "space"))
        self.dints.validate(dotted(where, "dints"))
        self.budget.validate(dotted(where, "budget"))
        if self.budget.multiply_adds is not None and self.space.spatial_dims != 2:
            raise ConfigError(
                f"{dotted(where, 'budget.multiply_adds')}: counts 2D networks; space.spatial_dims is "
                f"{self.space.spatial_dims}"
            )
        if self.budget.multiply_adds is not None and self.search_space != "autodeeplab":
            raise ConfigError(
                f"{dotted(where, 'budget.multiply_adds')}: a budget of the Auto-DeepLab search; a DiNTS "
                "search has dints.memory_budget"
            )
        if self.budget.multiply_adds is not None and self.execution.capture_steps:
            raise ConfigError(
                f"{dotted(where, 'execution.capture_steps')}: the multiply-add budget's term is not "
                "capturable yet; turn one of them off"
            )
        self.data.validate(dotted(where, "data"))
        self.execution.validate(dotted(where, "execution"))
        if self.search_space == "dints":
            check_sample_size(self.dints.depths, self.space.spatial_dims, self.data, dotted(where, "data"))
            # The Auto-DeepLab supernet's checkpointing switches do not reach DiNTS's supernet (which has its
            # own dints.recompute): a memory saving asked for would silently not happen.
            for name in ("checkpoint_cells", "checkpoint_levels"):
                if getattr(self.execution, name):
                    raise ConfigError(
                        f"{dotted(where, 'execution.' + name)}: applies to the Auto-DeepLab supernet only, "
                        "not to search_space=dints"
                    )
        else:
            self.execution.check_levels(self.space.num_levels, dotted(where, "execution"))


register_presets(
    SearchConfig,
    {
        "paper": {},
        # `autodeeplab run`'s search, about 90 s on 2 CPU cores: the supernet's step time is dispatch
        # bound there (about proportional to L·B, almost independent of F, crop and batch), so a short,
        # narrow supernet (L=4, B=3) with batches of 8; four weight steps an epoch, architecture steps from
        # the third epoch on. Its validation mIoU rises over the epochs on the default synthetic data.
        "cpu": {
            "space": {"filter_multiplier": 4, "num_layers": 4, "num_blocks": 3},
            # --space dints: a small topology space of the same order of step time (3 depths, 4 blocks).
            "dints": {"depths": 3, "blocks": 4, "channels": 8},
            "data": {
                "dataset": "synthetic",
                "crop_size": 64,
                "num_workers": 0,
                "synthetic_train_samples": 64,
                "synthetic_val_samples": 16,
                "synthetic_size": [64, 64],
                "max_val_images": 16,  # a laptop's search of a user's own photos validates in seconds
            },
            "epochs": 8,
            "arch_start_epoch": 2,
            "batch_size": 8,
            "lr": 0.05,
            "checkpoint_every": 0,  # epochs of a few seconds: their ends are checkpoints enough
        },
        # A 3D search on Hippocampus (MSD Task04) for 2 CPU cores: a short, narrow volumetric supernet
        # (L=4, B=5 as in the paper, F=4) on 32x40x32 patches, the training preset's split (182 training
        # volumes: trainA/trainB halves of 91), validated on the centre patches of 13 val volumes. 3D
        # depthwise and dilated convolutions are slow on CPU (no optimised kernels): see
        # benchmarks/hippocampus_result.md for its time.
        "hippocampus": {
            "space": {
                "spatial_dims": 3,
                "filter_multiplier": 4,
                "num_layers": 4,
                "stem_channels": [8, 8, 16],
            },
            # --space dints: DiNTS's 4 depths at half its width, 8 blocks (about 1 s a weight step here).
            "dints": {"depths": 4, "blocks": 8, "channels": 16},
            "data": {
                "dataset": "nifti",
                "root": "../shared/data/hippocampus",
                "split_fractions": [0.1, 0.2],
                "volumes": {"split_order": "sorted", "patch_size": [32, 40, 32], "foreground_prob": 0.5},
                "num_workers": 0,
                "max_val_images": 13,
            },
            "epochs": 6,
            "arch_start_epoch": 2,
            "steps_per_epoch": 20,
            "batch_size": 2,
            "lr": 0.05,
            "checkpoint_every": 20,
            "device": "cpu",
        },
    },
)
