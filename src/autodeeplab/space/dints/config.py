"""Settings of the DiNTS search space (the ``dints`` section of the search settings) and of a found DiNTS
network (the ``dints`` section of the training settings), with DiNTS's values as defaults.

The dimensions (2D images or 3D volumes) are not here: the search takes ``space.spatial_dims`` and
training ``model.spatial_dims``, the one setting each phase already checks against its data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autodeeplab.config.checks import at_least, dotted, non_negative
from autodeeplab.errors import ConfigError
from autodeeplab.space.dints.arch import OP_SET_KINDS

NORMS = ("instance", "batch")


@dataclass
class DintsSpaceConfig:
    """The DiNTS supernet: ``depths`` × ``blocks`` of edge cells and the architecture step's terms."""

    depths: int = 4
    """Depth ``d`` works at 1/2^(d+1) of the input (4: strides 2 to 16)."""
    blocks: int = 12
    channels: int = 32
    """Channels at depth 0; depth ``d`` has ``channels · 2^d``. 32 is DiNTS's search width (its
    ``channel_mul`` 0.5); its retraining doubles it."""
    norm: str = "instance"
    """``instance`` (DiNTS's) or ``batch``."""
    memory_budget: float = 0.8
    """Target expected activation memory of the decoded network as a fraction of every edge on (σ; DiNTS's
    search script uses 0.8, its paper also 0.2 and 0.5)."""
    topology_weight: float = 1e-3
    """Weight of the topology loss within the ramped terms (DiNTS: 0.001)."""
    op_set: str = "dints"
    """``dints`` (DiNTS's cells: skip and 3×3(×3), plus the pseudo-3D pairs in 3D) or ``autodeeplab``
    (Auto-DeepLab's primitives but ``none``, each with its own batch norm)."""
    decode_within_budget: bool = True
    """Decode the most probable topology whose memory fits ``memory_budget`` (a Lagrangian search over the
    same dynamic programme, :func:`~autodeeplab.space.dints.decode.budgeted_chain`); False: the most
    probable topology whatever its memory (DiNTS's decoding)."""
    recompute: bool = True
    """Recompute the pseudo-3D pairs' middle maps in the backward instead of keeping them (the same numbers;
    at 96³ 3.7 instead of 5.0 GiB of saved activations, about 15-30% more time on a CPU)."""

    def validate(self, where: str = "dints") -> None:
        """Raise :class:`ConfigError` naming ``{where}.{field}`` for the first value that cannot work."""
        for name in ("depths", "blocks", "channels"):
            at_least(dotted(where, name), getattr(self, name), 1)
        if self.depths > 6:
            raise ConfigError(f"{dotted(where, 'depths')}: must be at most 6, got {self.depths}")
        if self.norm not in NORMS:
            raise ConfigError(
                f"{dotted(where, 'norm')}: must be one of {', '.join(NORMS)}, got {self.norm!r}"
            )
        if not 0.0 <= self.memory_budget <= 1.0:
            raise ConfigError(
                f"{dotted(where, 'memory_budget')}: must be a fraction in [0, 1] of the full supernet's "
                f"memory, got {self.memory_budget}"
            )
        non_negative(dotted(where, "topology_weight"), self.topology_weight)
        if self.op_set not in OP_SET_KINDS:
            raise ConfigError(
                f"{dotted(where, 'op_set')}: must be one of {', '.join(OP_SET_KINDS)}, got {self.op_set!r}"
            )


@dataclass
class DintsNetworkConfig:
    """A found DiNTS network's own settings (depths and blocks come from its ``dints_arch.json``)."""

    channels: int = 64
    """Channels at depth 0 (DiNTS retrains at twice its search width: ``channel_mul`` 1.0)."""
    norm: str = "instance"

    def validate(self, where: str = "dints") -> None:
        at_least(dotted(where, "channels"), self.channels, 1)
        if self.norm not in NORMS:
            raise ConfigError(
                f"{dotted(where, 'norm')}: must be one of {', '.join(NORMS)}, got {self.norm!r}"
            )


def check_sample_size(depths: int, spatial_dims: int, data: Any, where: str = "data") -> None:
    """Refuse a training crop (``data.crop_size``, images) or patch (``data.volumes.patch_size``, volumes)
    whose deepest depth (``1/2^depths`` of it) has a single voxel: the norms there would have nothing to
    normalise. ``data``: a search's or a training's data settings, read under ``where``."""
    volumes = spatial_dims == 3
    sample = tuple(data.volumes.patch_size) if volumes else (data.crop_size,) * 2
    key = dotted(where, "volumes.patch_size" if volumes else "crop_size")
    if all(-(-n // 2**depths) == 1 for n in sample):
        raise ConfigError(
            f"{key}: {list(sample)} is too small for {depths} depths (the deepest, at 1/{2**depths}, would "
            f"be one voxel); use at least {2**depths + 1} along an axis, or fewer depths (dints.depths)"
        )
