"""Typed settings of the architecture search, with the paper's values as defaults (§5.1).

Presets: ``paper`` (the defaults: Cityscapes, 40 epochs, architecture steps from epoch 20) and
``cpu`` (the built-in synthetic data, small F and crops: a few minutes on a laptop CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autodeeplab.config.settings import register_presets
from autodeeplab.errors import ConfigError
from autodeeplab.fast.execution import ExecutionConfig
from autodeeplab.space.autodeeplab.supernet import SearchSpaceConfig


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
    synthetic_train_samples: int = 64
    synthetic_val_samples: int = 16
    synthetic_size: tuple[int, int] = (64, 64)

    def __post_init__(self) -> None:
        self.scale_range = tuple(self.scale_range)
        self.synthetic_size = tuple(self.synthetic_size)


@dataclass
class SearchConfig:
    """Everything a search run depends on; written to the run directory as ``config.yaml``."""

    space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)
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
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    """How the supernet runs (batched nodes, channels-last, checkpointing, precision); exact unless
    ``execution.precision`` is reduced. See :mod:`autodeeplab.fast.execution`."""

    def __post_init__(self) -> None:
        self.arch_betas = tuple(self.arch_betas)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field for the first value that cannot work.

        Called by ``run_search`` (and the pipeline's input checks) before anything is read or written.
        """
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "data.crop_size": self.data.crop_size,
            "space.filter_multiplier": self.space.filter_multiplier,
            "space.num_layers": self.space.num_layers,
            "space.num_blocks": self.space.num_blocks,
            "space.num_levels": self.space.num_levels,
            "keep_checkpoints": self.keep_checkpoints,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key}: must be at least 1, got {value}")
        for key, value in {"lr": self.lr, "arch_lr": self.arch_lr}.items():
            if not value > 0:
                raise ConfigError(f"{key}: must be positive, got {value}")
        non_negative = {
            "arch_start_epoch": self.arch_start_epoch,
            "lr_min": self.lr_min,
            "weight_decay": self.weight_decay,
            "arch_weight_decay": self.arch_weight_decay,
            "grad_clip": self.grad_clip,
            "checkpoint_every": self.checkpoint_every,
        }
        for key, value in non_negative.items():
            if not value >= 0:
                raise ConfigError(f"{key}: must be >= 0, got {value}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum: must be in [0, 1), got {self.momentum}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"steps_per_epoch: must be at least 1 or null, got {self.steps_per_epoch}")
        if self.data.num_workers < 0:
            raise ConfigError(f"data.num_workers: must be >= 0, got {self.data.num_workers}")
        if self.data.max_val_images is not None and self.data.max_val_images < 1:
            raise ConfigError(
                f"data.max_val_images: must be at least 1 or null, got {self.data.max_val_images}"
            )
        if self.space.spatial_dims != 2:
            raise ConfigError("space.spatial_dims: only 2 (images) is supported by the search loop for now")
        self.execution.check_levels(self.space.num_levels)  # before any data is read
        low, high = self.data.scale_range
        if not 0 < low <= high:
            raise ConfigError(f"data.scale_range: must be 0 < low <= high, got {list(self.data.scale_range)}")


register_presets(
    SearchConfig,
    {
        "paper": {},
        "cpu": {
            "space": {"filter_multiplier": 4},
            "data": {
                "dataset": "synthetic",
                "crop_size": 64,
                "num_workers": 0,
                "synthetic_train_samples": 48,
                "synthetic_val_samples": 8,
                "synthetic_size": [64, 64],
            },
            "epochs": 6,
            "arch_start_epoch": 2,
            "batch_size": 4,
            "checkpoint_every": 0,  # epochs of a few seconds: their ends are checkpoints enough
        },
    },
)
