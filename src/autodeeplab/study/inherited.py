"""Does the supernet rank architectures? Each architecture scored with the weights it inherits from a
finished search's supernet, against its score after retraining (Kendall τ in the study's report).

The subnetwork of a genotype inside the supernet is the supernet's own computation (paper Eq. 6, the
reference :meth:`SearchNetwork._node`) with α and β one-hot on the genotype: each block's two kept edges with
their op, every other edge ``none``; β 1 along the path and 0 elsewhere, so that the nodes off the path are
exactly zero. Two choices, stated because they differ from the supernet's forward: only the head of the
path's last level makes the logits (the other levels' heads would add constant logits computed from zero
maps), and the batch norms' running statistics are recomputed for each subnetwork on a few training batches
(statistics gathered under the mixture do not fit one path; the usual practice of weight-sharing NAS).
h^{l-2} comes from the same level two layers back, as in the supernet; where the path was elsewhere it is
zero, unlike in the retrained network.

A DiNTS topology's subnetwork is the found network of that topology (``DintsNet``, what its retraining
trains) with the supernet's weights: each active edge's resampling and chosen op, the
stems, the head (:func:`dints_subnetwork`). It computes what the supernet does with the active edges at
weight 1, the others at 0 and each edge's op one-hot, except that depths no active edge reaches are left out
of the head instead of contributing zero maps.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autodeeplab.nets.dints import DintsNet
from autodeeplab.ops.primitives import PRIMITIVES, resize
from autodeeplab.search.config import SearchConfig
from autodeeplab.space.autodeeplab.genotype import Genotype
from autodeeplab.space.autodeeplab.supernet import SearchNetwork
from autodeeplab.space.autodeeplab.topology import edge_offset, node_levels, num_edges
from autodeeplab.space.dints.arch import DintsArch
from autodeeplab.space.dints.supernet import DintsSupernet


def genotype_weights(genotype: Genotype, num_levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot α ``[E, P]`` (kept edges: their op; the others: ``none``), β ``[L, levels, 3]`` (the path)."""
    blocks = len(genotype.cell)
    alpha = torch.zeros(num_edges(blocks), len(PRIMITIVES))
    alpha[:, PRIMITIVES.index("none")] = 1.0
    for b, block in enumerate(genotype.cell):
        for op, source in block:
            alpha[edge_offset(b) + source] = 0.0
            alpha[edge_offset(b) + source, PRIMITIVES.index(op)] = 1.0
    beta = torch.zeros(genotype.num_layers, num_levels, 3)
    level = 0
    for layer, target in enumerate(genotype.network_path):
        beta[layer, level, target - level + 1] = 1.0
        level = target
    return alpha, beta


class Subnetwork(nn.Module):
    """``genotype``'s path through ``supernet`` with inherited weights: image ``[N, C, *S]`` → logits
    ``[N, classes, *S]`` (module docstring)."""

    def __init__(self, supernet: SearchNetwork, genotype: Genotype) -> None:
        super().__init__()
        self.supernet, self.genotype = supernet, genotype
        alpha, beta = genotype_weights(genotype, supernet.config.num_levels)
        self.register_buffer("alpha", alpha, persistent=False)
        self.register_buffer("beta", beta, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net, c = self.supernet, self.supernet.config
        stem = net.stem(x)
        sizes = net.level_sizes(stem.shape[2:])
        alpha, beta = self.alpha.to(stem.dtype), self.beta.to(stem.dtype)
        path = (0, *self.genotype.network_path)

        def layer_nodes(layer: int, value: torch.Tensor | None) -> dict[int, torch.Tensor]:
            """Every node of ``layer``: the path's value, zeros elsewhere (β = 0 there)."""
            nodes = {}
            for level in node_levels(layer, c.num_levels):
                width = c.num_blocks * c.filter_multiplier * 2**level if layer else stem.shape[1]
                nodes[level] = (
                    value
                    if level == path[max(layer, 0)] and value is not None
                    else stem.new_zeros(stem.shape[0], width, *sizes[level])
                )
            return nodes

        prev_prev = prev = layer_nodes(0, stem)
        for layer in range(1, c.num_layers + 1):
            level = path[layer]
            node = net._node(layer, level, prev_prev, prev, sizes, alpha, beta)
            prev_prev, prev = prev, layer_nodes(layer, node)
        return resize(net.heads[path[-1]](prev[path[-1]]), x.shape[2:])


def dints_subnetwork(supernet: DintsSupernet, arch: DintsArch) -> DintsNet:
    """The found network of ``arch`` (same depths, blocks and op set as ``supernet``) holding the
    supernet's weights: ``body.cells.<b>.<edge>.ops.0`` takes the supernet's op of that edge's name, every
    other tensor (resampling, stems, head) its namesake."""
    source = supernet.state_dict()
    like = next(iter(supernet.body.parameters()))
    net = DintsNet(arch, supernet.shape).to(like.device, like.dtype)  # the supernet's dtype: no rounding
    index = {edge: i for i, edge in enumerate(supernet.topology.edges)}
    ops = {
        (b, index[(a, z)]): supernet.op_names.index(op)
        for b, block in enumerate(arch.blocks)
        for a, z, op in block
    }
    weights = {}
    for key in net.state_dict():
        parts = key.split(".")
        if parts[:2] == ["body", "cells"] and parts[4:6] == ["ops", "0"]:
            parts[5] = str(ops[(int(parts[2]), int(parts[3]))])
        weights[key] = source[".".join(parts)]
    net.load_state_dict(weights)
    return net


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Replace every batch norm's running statistics by their plain average over ``batches`` (train-mode
    forwards of ``model``, no gradient), then leave the model in evaluation mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for images in batches:
        model(images)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    model.eval()


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's τ-b of two score lists (ties counted as neither concordant nor discordant); nan for fewer
    than two pairs or when one list is constant."""
    n = len(x)
    if n != len(y):
        raise ValueError("kendall_tau: lists of different lengths")
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    denominator = np.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return float((concordant - discordant) / denominator) if denominator else float("nan")


CALIBRATION_BATCHES = 8
"""Training batches (trainA) that recompute each subnetwork's batch-norm statistics."""


def inherited_scores(
    search_dir: Path, genotypes: dict[str, Genotype | DintsArch], config: SearchConfig, device: str = "cpu"
) -> dict[str, float]:
    """Validation score of each architecture of ``genotypes`` (mIoU; mean foreground Dice for volumes) with
    the weights of the supernet of the finished search in ``search_dir`` (its newest checkpoint), as
    :func:`validation_score` scores the supernet during the search; architectures whose shape is not the
    supernet's are left out."""
    from autodeeplab.checkpoint_io import load_checkpoint
    from autodeeplab.runs.sampling import epoch_loader
    from autodeeplab.search.data import build_search_data, validation_score
    from autodeeplab.search.spaces import space_builder

    checkpoints = sorted((search_dir / "checkpoints").glob("*.pt"))
    if not checkpoints:
        return {}
    state = load_checkpoint(checkpoints[-1])
    train_a, _, val = build_search_data(config, quiet=True)  # its members' runs read them before
    target = torch.device(device)
    supernet = space_builder(config)(config, state["num_classes"], getattr(train_a, "in_channels", 3))
    supernet.load_state_dict(state["model"])
    supernet.to(target)
    scores = {}
    for name, arch in genotypes.items():
        if not _fits(arch, config):
            continue
        supernet.load_state_dict(state["model"])  # the running statistics of the last one recomputed
        if isinstance(arch, DintsArch):
            sub: nn.Module = dints_subnetwork(supernet, arch).to(target)
        else:
            sub = Subnetwork(supernet, arch).to(target)
        loader = epoch_loader(train_a, state["split"]["train_a"], config.batch_size, config.seed, 7, 0)
        batches = [images.to(target) for images, _ in itertools.islice(loader, CALIBRATION_BATCHES)]
        recalibrate_batch_norm(sub, batches)
        score = validation_score(sub, val, config, target, quiet=True)
        scores[name] = score.get("val_miou", score.get("val_dice"))
    return scores


def _fits(arch: Genotype | DintsArch, config: SearchConfig) -> bool:
    """Whether ``arch`` has the shape of ``config``'s search space (a member of another space or size is
    left out)."""
    if isinstance(arch, DintsArch):
        d = config.dints
        return config.search_space == "dints" and (arch.depths, arch.num_blocks) == (d.depths, d.blocks)
    s = config.space
    return config.search_space == "autodeeplab" and (arch.num_layers, len(arch.cell)) == (
        s.num_layers,
        s.num_blocks,
    )
