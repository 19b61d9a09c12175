"""Typed settings of the retraining (paper §5.2, Table 3), with the paper's values as defaults.

The ``model`` section is the found network's own settings type,
:class:`~autodeeplab.nets.network.NetworkConfig`, so every setting of the network (stem widths, ASPP
rates and width, decoder widths, dropout, drop path, ...) can be set from YAML or ``--set model.<field>``.
In training ``model.num_classes`` defaults to ``null``: the dataset's class count (a number must equal it);
``model.in_channels`` defaults to ``null`` too (the data's channels: 3 for images, the modalities of
volumes); ``model.spatial_dims`` must be 2 for images and 3 for volumes (``nifti``, ``msd``).

Presets: ``paper`` (the defaults: Cityscapes, 769×769 crops, 1.5M iterations, poly lr 0.05; see
:class:`TrainConfig` for what the paper leaves open), ``cpu`` (CamVid at
``../shared/data/camvid``, F=8 with 64-channel heads: the documented CPU run) and ``tiny`` (the built-in
synthetic data, seconds). :data:`RESUMABLE_KEYS` names what ``--resume`` may change.
"""

from __future__ import annotations

import dataclasses
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
from autodeeplab.nets.network import NetworkConfig
from autodeeplab.space.dints.config import DintsNetworkConfig

RESUMABLE_KEYS = frozenset(
    {
        "iterations",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "device",
        "data.root",
        "data.num_workers",
        "accumulate_steps",
        "sync_bn",
    }
)
"""Settings that ``--resume`` may change: the run's length (``--set iterations=N`` extends it; the poly
schedule then follows the new length from the resumed step on), checkpointing and logging, loader workers
(batches do not depend on them), the device and the data's location, and how the global batch is spread
over processes and micro-batches (``accumulate_steps``, ``sync_bn``: a run may resume on other hardware).
Anything else is refused."""


@dataclass
class TrainDataConfig:
    """Where the training images come from and how they are augmented."""

    dataset: str = "cityscapes"
    """A name from ``autodeeplab.data.DATASET_NAMES``; the paper's recipe is Cityscapes (give its root)."""
    root: str | None = None
    train_split: str = "train"
    eval_split: str | None = "val"
    """Evaluated (single scale) every ``eval_every`` steps and at the end; None skips it."""
    crop_size: int = 769
    """Paper: 769×769 on Cityscapes (513 on PASCAL VOC and ADE20K)."""
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    jitter: float = 0.0
    """Photometric jitter strength (brightness/contrast/saturation); the paper uses none."""
    num_workers: int = 2
    eval_max_images: int | None = None
    """Evaluate on the first N images only (None: the whole split)."""
    synthetic_train_samples: int = 64
    synthetic_eval_samples: int = 16
    synthetic_size: tuple[int, int] = (64, 64)
    split_fractions: tuple[float, float] = (0.15, 0.15)
    """A plain folder without split lists: about these fractions of its samples form val and test (each
    file's split fixed by its name and ``split_seed``; see :func:`autodeeplab.data.folder.seeded_split`)."""
    split_seed: int = 0
    volumes: VolumeDataConfig = field(default_factory=VolumeDataConfig)
    """Volumes (``nifti``, ``msd``): split order, training patch, resampling, sliding window."""

    def __post_init__(self) -> None:
        # Normalise only; the checks are in validate(), called by TrainConfig with the section's name.
        self.scale_range = tuple(self.scale_range)
        self.synthetic_size = tuple(self.synthetic_size)
        self.split_fractions = tuple(self.split_fractions)

    def validate(self, where: str = "data") -> None:
        """Raise :class:`ConfigError` naming ``{where}.{field}`` for the first value that cannot work."""
        at_least(dotted(where, "crop_size"), self.crop_size, 1)
        scale_range(dotted(where, "scale_range"), self.scale_range)
        below_one(dotted(where, "jitter"), self.jitter)
        at_least(dotted(where, "num_workers"), self.num_workers, 0)
        at_least_one_or_null(dotted(where, "eval_max_images"), self.eval_max_images)
        at_least(dotted(where, "synthetic_train_samples"), self.synthetic_train_samples, 1)
        split_fractions(dotted(where, "split_fractions"), self.split_fractions)
        seed_range(dotted(where, "split_seed"), self.split_seed)
        at_least(dotted(where, "synthetic_eval_samples"), self.synthetic_eval_samples, 1)
        self.volumes.validate(dotted(where, "volumes"))


LOSSES = ("auto", "ce", "dice_ce")


def training_network_defaults() -> NetworkConfig:
    """The ``model`` section's defaults: the network's own, except the class count (the data's) and
    Scheduled Drop Path's final keep probability of the deepest cell (0.7).

    The paper does not give that keep probability; 0.7 is our choice, the value of TF-slim's NASNet-A
    Large ImageNet setting (Scheduled Drop Path comes from NASNet). 1.0 switches drop path off.
    """
    return NetworkConfig(num_classes=None, in_channels=None, drop_path_keep_prob=0.7)


@dataclass
class TrainConfig:
    """Everything a training run depends on; written to the run directory as ``config.yaml``.

    Defaults are the paper's Cityscapes recipe (§5.2): 1.5M iterations, poly lr from 0.05 (power 0.9),
    SGD momentum 0.9, crop 769. The paper gives neither batch size nor weight decay. Weight decay 4e-5 is
    the default of DeepLab's ``train.py`` (the protocol the paper follows); batch 8 is our choice (the
    largest power of two that is common for 769 crops), not a value from the paper.

    :meth:`validate` runs when the settings are built, so a bad file, preset, ``--set`` or ``--resume``
    override fails before anything runs, and again in ``run_training``, for settings changed after they were
    built.
    """

    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    model: NetworkConfig = field(default_factory=training_network_defaults)
    """The found network (``model.filter_multiplier`` F = 20 / 32 / 48: Auto-DeepLab-S / M / L); see
    :func:`training_network_defaults`. A DiNTS architecture takes ``model.num_classes``, ``in_channels``
    and ``spatial_dims`` from here, its widths and norm from ``dints``."""
    dints: DintsNetworkConfig = field(default_factory=DintsNetworkConfig)
    """A found DiNTS network's channels and norm (used when the architecture trained is a DiNTS one)."""
    iterations: int = 1_500_000
    batch_size: int = 8
    lr: float = 0.05
    lr_power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 4e-5
    lr_reference_batch: int | None = None
    """The batch ``lr`` was chosen for. Null (the default): ``lr`` is used as given, whatever ``batch_size``.
    Set: the rate is scaled to ``batch_size`` (the global batch, whatever the processes or accumulation) by
    ``lr_scaling``, so a run moved to more devices with a larger batch keeps a tuned rate."""
    lr_scaling: str = "linear"
    """How ``lr_reference_batch`` scales ``lr``: ``linear`` (× batch_size / lr_reference_batch; Goyal et
    al. 2017, the usual rule for SGD with momentum) or ``sqrt`` (× its square root)."""
    accumulate_steps: int = 1
    """Micro-batches per optimiser step: each process runs ``batch_size / (processes · accumulate_steps)``
    samples at a time and adds up the gradients, so one device trains with a global batch that does not
    fit it. Batch-norm statistics are those of each micro-batch (as with several processes without
    ``sync_bn``)."""
    sync_bn: bool = False
    """With several processes (torchrun): batch norm over the global batch of all ranks instead of each
    rank's share (torch's SyncBatchNorm on CUDA; an all-reduce of the sums on CPU). Needed when a process
    holds one sample and the deepest maps are one pixel (batch norm would see one value per channel; the
    ASPP's image pooling has no batch norm). Without it, ``model.pt`` keeps rank 0's running statistics.
    No effect in one process."""
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 1000
    """Write a checkpoint (and ``model.pt``) every N iterations and at the end (0: at the end only); on
    SIGINT/SIGTERM one is written at once. Training counts iterations, not epochs (the paper gives a number
    of iterations), so there are no epoch-end checkpoints."""
    keep_checkpoints: int = 3
    eval_every: int = 0
    """Evaluate every N steps (0: only at the end)."""
    tensorboard: bool = False
    """Also write TensorBoard event files (needs the optional ``tensorboard`` extra)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]``."""
    loss: str = "auto"
    """``ce`` (cross-entropy), ``dice_ce`` (soft Dice over the foreground classes + cross-entropy, as
    nnU-Net) or ``auto``: ``ce`` for images, ``dice_ce`` for volumes."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, where: str = "") -> None:
        """Raise :class:`ConfigError` naming ``{where}.{field}`` (bare at the top level, ``where=""``) for the
        first value that cannot work; the sections are validated under their keys (``model.aspp_channels``).
        """
        for name in ("iterations", "batch_size", "log_every", "keep_checkpoints", "accumulate_steps"):
            at_least(dotted(where, name), getattr(self, name), 1)
        for name in ("checkpoint_every", "eval_every"):
            at_least(dotted(where, name), getattr(self, name), 0)
        positive(dotted(where, "lr"), self.lr)
        for name in ("lr_power", "weight_decay"):
            non_negative(dotted(where, name), getattr(self, name))
        below_one(dotted(where, "momentum"), self.momentum)
        at_least_one_or_null(dotted(where, "lr_reference_batch"), self.lr_reference_batch)
        if self.lr_scaling not in LR_SCALINGS:
            raise ConfigError(
                f"{dotted(where, 'lr_scaling')}: must be one of {', '.join(LR_SCALINGS)}, "
                f"got {self.lr_scaling!r}"
            )
        if self.batch_size % self.accumulate_steps:
            raise ConfigError(
                f"{dotted(where, 'accumulate_steps')}: {self.accumulate_steps} does not divide batch_size "
                f"{self.batch_size}"
            )
        seed_range(dotted(where, "seed"), self.seed)
        self.data.validate(dotted(where, "data"))
        self.model.validate(dotted(where, "model"))
        self.dints.validate(dotted(where, "dints"))
        if self.loss not in LOSSES:
            raise ConfigError(
                f"{dotted(where, 'loss')}: must be one of {', '.join(LOSSES)}, got {self.loss!r}"
            )

    def base_lr(self) -> float:
        """The poly schedule's starting rate: ``lr``, scaled to ``batch_size`` when ``lr_reference_batch``
        is set (``lr_scaling``)."""
        if self.lr_reference_batch is None:
            return self.lr
        ratio = self.batch_size / self.lr_reference_batch
        return self.lr * (ratio if self.lr_scaling == "linear" else ratio**0.5)

    def micro_batch(self, world: int) -> int:
        """Samples per forward pass of each of ``world`` processes; a one-line error when the global batch
        does not split evenly."""
        if self.batch_size % (world * self.accumulate_steps):
            raise ConfigError(
                f"batch_size: {self.batch_size} (the global batch) does not split into {world} processes × "
                f"{self.accumulate_steps} accumulation steps"
            )
        return self.batch_size // (world * self.accumulate_steps)

    def loss_name(self) -> str:
        """The loss actually used: ``auto`` resolved by the model's dimensions."""
        if self.loss != "auto":
            return self.loss
        return "dice_ce" if self.model.spatial_dims == 3 else "ce"

    def network_config(
        self, num_classes: int, source: str = "the data", in_channels: int = 3, spatial_dims: int = 2
    ) -> NetworkConfig:
        """The network's settings for data of ``num_classes`` classes and ``in_channels`` channels with
        ``spatial_dims`` dimensions (``model.num_classes``/``in_channels``/``spatial_dims`` must agree)."""
        kinds = {2: "images", 3: "volumes"}
        if self.model.spatial_dims != spatial_dims:
            raise ConfigError(
                f"model.spatial_dims: {self.model.spatial_dims} ({kinds[self.model.spatial_dims]}) but "
                f"{source} "
                f"holds {kinds[spatial_dims]}; use --set model.spatial_dims={spatial_dims}"
                + (" or --preset hippocampus" if spatial_dims == 3 else "")
            )
        for name, found, unit in (
            ("num_classes", num_classes, "classes"),
            ("in_channels", in_channels, "channels"),
        ):
            given = getattr(self.model, name)
            if given is not None and given != found:
                raise ConfigError(
                    f"model.{name}: {given} does not match the {found} {unit} of {source} "
                    "(null takes the data's count)"
                )
        return dataclasses.replace(self.model, num_classes=num_classes, in_channels=in_channels)


LR_SCALINGS = ("linear", "sqrt")

CAMVID_ROOT = "../shared/data/camvid"
"""Where this project keeps CamVid, relative to the repository root (override with --data-root)."""

_CPU_DATA = {"crop_size": 192, "scale_range": [0.5, 1.5], "num_workers": 0, "eval_max_images": 40}
_CPU_MODEL = {"filter_multiplier": 8, "drop_path_keep_prob": 1.0, "aspp_channels": 64, "decoder_channels": 64}
_TINY_DATA = {"dataset": "synthetic", "crop_size": 64, "scale_range": [0.75, 1.25], "num_workers": 0}
_TINY_MODEL = {
    "filter_multiplier": 4,
    "drop_path_keep_prob": 1.0,
    "aspp_channels": 32,
    "decoder_channels": 32,
}
HIPPOCAMPUS_ROOT = "../shared/data/hippocampus"
"""Where this project keeps MSD Task04 Hippocampus as NIfTI pairs (images/, labels/)."""
# The documented split: sorted ids, the last 52 of 260 for test, the 26 before them for val, 182 for training.
_HIPPOCAMPUS_DATA = {
    "dataset": "nifti",
    "root": HIPPOCAMPUS_ROOT,
    "split_fractions": [0.1, 0.2],
    "volumes": {"split_order": "sorted", "patch_size": [40, 56, 40]},
    "num_workers": 0,
}
# The found network in 3D with a small F and slim stem and heads (about 4.6M parameters), plus decoder
# stages at output stride 2 and at full resolution (not in the paper): at 1 mm, upsampling stride-4 logits
# caps the hippocampus Dice near 0.78, and the full-resolution stage took test Dice 0.8385 -> 0.8517.
_VOLUME_MODEL = {
    "spatial_dims": 3,
    "filter_multiplier": 8,
    "stem_channels": [16, 16, 32],
    "aspp_channels": 32,
    "decoder_channels": 32,
    "low_level_channels": 16,
    "fine_skip_channels": 16,
    "full_skip_channels": 8,
    "drop_path_keep_prob": 1.0,
}
register_presets(
    TrainConfig,
    {
        "paper": {},
        # CamVid (360×480) on a 2-core CPU in about ten minutes (benchmarks/camvid_result.md: 20% test mIoU):
        # F=8 with slim heads, 192 crops, about 9 epochs, drop path off (too few steps for it to help).
        "cpu": {
            "data": {"dataset": "camvid", "root": CAMVID_ROOT, **_CPU_DATA},
            "model": _CPU_MODEL,
            "iterations": 800,
            "batch_size": 4,
            "log_every": 10,
            "checkpoint_every": 100,
            "device": "cpu",
        },
        # Hippocampus (MSD Task04) on 2 CPU cores within an hour: 3500 steps of two 40x56x40 patches (each
        # volume is about 36x50x36 voxels), Dice + cross-entropy: 37 min (benchmarks/hippocampus_result.md).
        "hippocampus": {
            "data": _HIPPOCAMPUS_DATA,
            "model": _VOLUME_MODEL,
            "iterations": 3500,
            "batch_size": 2,
            "lr": 0.02,
            "log_every": 20,
            "checkpoint_every": 250,
            "eval_every": 1000,
            "device": "cpu",
        },
        # The built-in synthetic data, seconds: the quick end-to-end check (too short to learn much).
        "tiny": {
            "data": _TINY_DATA,
            "model": _TINY_MODEL,
            "iterations": 60,
            "batch_size": 4,
            "log_every": 10,
            "checkpoint_every": 30,
            "device": "cpu",
        },
        # `autodeeplab run`'s retraining on the built-in synthetic data, about a minute on 2 CPU cores: the
        # tiny network for 300 steps of 8 crops (about 10 epochs of 256 generated images), enough to
        # segment the default synthetic scenes (88% test mIoU after `autodeeplab run`'s search).
        "synthetic": {
            "data": {**_TINY_DATA, "synthetic_train_samples": 256},
            "model": _TINY_MODEL,
            "iterations": 300,
            "batch_size": 8,
            "log_every": 20,
            "checkpoint_every": 100,
            "device": "cpu",
        },
    },
)
