"""A found DiNTS network: the edges and ops of a :class:`~autodeeplab.space.dints.arch.DintsArch` only, on the
search supernet's body (per-depth stems, the blocks, the head that fuses every depth), trained from scratch.

Its ``model.pt`` record (:meth:`DintsNet.config_dict`) is ``{"kind": "dints", "arch": dints_arch.json's
object, "network": {channels, norm, spatial_dims, in_channels, num_classes}}``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autodeeplab.errors import ConfigError
from autodeeplab.space.dints.arch import DintsArch, op_set_dims
from autodeeplab.space.dints.cells import EdgeCell
from autodeeplab.space.dints.config import NORMS
from autodeeplab.space.dints.network import DintsBody, DintsShape
from autodeeplab.space.dints.topology import Topology

KIND = "dints"
NETWORK_KEYS = ("channels", "norm", "spatial_dims", "in_channels", "num_classes")


class DintsNet(nn.Module):
    """The network of ``arch`` with ``shape``'s widths, norm, dimensions and classes.

    ``config`` is ``shape`` (``in_channels``, ``num_classes``, ``spatial_dims``: what evaluation, prediction
    and export read from any trained network).
    """

    def __init__(self, arch: DintsArch, shape: DintsShape) -> None:
        super().__init__()
        if (arch.depths, arch.num_blocks) != (shape.depths, shape.blocks):
            raise ValueError(
                f"the architecture has {arch.depths} depths x {arch.num_blocks} blocks, the settings "
                f"{shape.depths} x {shape.blocks}"
            )
        if op_set_dims(arch.op_set) != shape.spatial_dims:
            raise ConfigError(
                f"the architecture's op set {arch.op_set} does not fit a {shape.spatial_dims}D network "
                f"(model.spatial_dims)"
            )
        index = {edge: i for i, edge in enumerate(Topology(shape.depths).edges)}
        cells = [
            {
                index[(a, z)]: EdgeCell(a, z, shape.width, (op,), shape.spatial_dims, shape.norm)
                for a, z, op in block
            }
            for block in arch.blocks
        ]
        self.arch, self.config, self.body = arch, shape, DintsBody(shape, cells)

    @property
    def genotype(self) -> DintsArch:
        """The architecture (the name every trained network answers to)."""
        return self.arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in_channels, *S]`` → ``[N, num_classes, *S]``."""
        return self.body.forward_with(x, None, None)

    def set_drop_path_progress(self, progress: float) -> None:
        """No drop path in DiNTS; the training loop calls this on every network."""

    def config_dict(self) -> dict[str, Any]:
        """JSON-able description from which :meth:`from_config_dict` rebuilds the same network."""
        s = self.config
        return {
            "kind": KIND,
            "arch": self.arch.to_dict(),
            "network": {
                "channels": s.channels,
                "norm": s.norm,
                "spatial_dims": s.spatial_dims,
                "in_channels": s.in_channels,
                "num_classes": s.num_classes,
            },
        }

    @classmethod
    def from_config_dict(cls, data: Any, source: str = "config") -> DintsNet:
        """Rebuild from :meth:`config_dict`'s output; a malformed dict raises an error naming the field."""
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise ConfigError(f"{source}: not a DiNTS network record (kind {KIND!r})")
        unknown = sorted(set(data) - {"kind", "arch", "network"})
        if unknown:
            raise ConfigError(f"{source}: unknown key {unknown[0]!r} (allowed: kind, arch, network)")
        arch = DintsArch.from_dict(data.get("arch"), source=f"{source}.arch")
        net = data.get("network")
        if not isinstance(net, dict) or sorted(net) != sorted(NETWORK_KEYS):
            raise ConfigError(f"{source}.network: expected exactly the keys {', '.join(NETWORK_KEYS)}")
        for key in ("channels", "spatial_dims", "in_channels", "num_classes"):
            if type(net[key]) is not int or net[key] < 1:
                raise ConfigError(f"{source}.network.{key}: expected a positive integer, got {net[key]!r}")
        if net["norm"] not in NORMS:
            raise ConfigError(
                f"{source}.network.norm: expected one of {', '.join(NORMS)}, got {net['norm']!r}"
            )
        return cls(arch, dints_shape(arch, **net))


def dints_shape(
    arch: DintsArch, channels: int, norm: str, spatial_dims: int, in_channels: int, num_classes: int
) -> DintsShape:
    """The body settings of ``arch`` (its depths and blocks) with the given widths, norm and data."""
    return DintsShape(
        depths=arch.depths,
        blocks=arch.num_blocks,
        channels=channels,
        spatial_dims=spatial_dims,
        norm=norm,
        in_channels=in_channels,
        num_classes=num_classes,
    )
