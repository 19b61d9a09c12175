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
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autodeeplab.ops.primitives import PRIMITIVES, resize
from autodeeplab.search.config import SearchConfig
from autodeeplab.space.autodeeplab.genotype import Genotype
from autodeeplab.space.autodeeplab.supernet import SearchNetwork
from autodeeplab.space.autodeeplab.topology import edge_offset, node_levels, num_edges


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
    search_dir: Path, genotypes: dict[str, Genotype], config: SearchConfig, device: str = "cpu"
) -> dict[str, float]:
    """Validation mIoU of each architecture of ``genotypes`` with the weights of the supernet of the
    finished search in ``search_dir`` (its newest checkpoint), as :func:`validation_score` scores the
    supernet during the search; architectures whose shape is not the supernet's are left out."""
    from autodeeplab.checkpoint_io import load_checkpoint
    from autodeeplab.runs.sampling import epoch_loader
    from autodeeplab.search.data import build_search_data, validation_score
    from autodeeplab.search.spaces import space_builder

    checkpoints = sorted((search_dir / "checkpoints").glob("*.pt"))
    if not checkpoints:
        return {}
    state = load_checkpoint(checkpoints[-1])
    train_a, _, val = build_search_data(config)
    target = torch.device(device)
    supernet = space_builder(config)(config, state["num_classes"], getattr(train_a, "in_channels", 3))
    supernet.load_state_dict(state["model"])
    supernet.to(target)
    scores = {}
    s = config.space
    for name, genotype in genotypes.items():
        if (genotype.num_layers, len(genotype.cell)) != (s.num_layers, s.num_blocks):
            continue
        supernet.load_state_dict(state["model"])  # the running statistics of the last one recomputed
        sub = Subnetwork(supernet, genotype).to(target)
        loader = epoch_loader(train_a, state["split"]["train_a"], config.batch_size, config.seed, 7, 0)
        batches = [images.to(target) for images, _ in itertools.islice(loader, CALIBRATION_BATCHES)]
        recalibrate_batch_norm(sub, batches)
        scores[name] = validation_score(sub, val, config, target, quiet=True)["val_miou"]
    return scores
