"""Scores with weights inherited from the supernet (issue 19's τ): the subnetwork is the supernet's own
computation with one-hot α/β, BN statistics recomputed per subnetwork, Kendall τ-b by hand."""

from __future__ import annotations

import pytest
import torch

from autodeeplab.ops.primitives import resize
from autodeeplab.space.autodeeplab.genotype import Genotype
from autodeeplab.space.autodeeplab.random_arch import random_genotype
from autodeeplab.space.autodeeplab.supernet import SearchNetwork, SearchSpaceConfig
from autodeeplab.study.inherited import Subnetwork, genotype_weights, kendall_tau, recalibrate_batch_norm

SPACE = SearchSpaceConfig(filter_multiplier=2, num_layers=4, num_blocks=2, stem_channels=(4, 4, 8))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_subnetwork_is_the_supernets_path_with_one_hot_weights(seed, monkeypatch):
    torch.manual_seed(seed)
    supernet = SearchNetwork(SPACE, 3).double().eval()
    genotype = random_genotype(4, 2, SPACE.num_levels, torch.Generator().manual_seed(seed))
    alpha, beta = genotype_weights(genotype, SPACE.num_levels)
    assert alpha.sum() == alpha.shape[0] and (beta.sum(dim=2) <= 1).all()
    monkeypatch.setattr(supernet, "alpha_weights", lambda: alpha.double())
    monkeypatch.setattr(supernet, "beta_weights", lambda: beta.double())
    captured = {}
    real_heads = supernet.head_logits

    def capture(last, size):
        captured.update(last)
        return real_heads(last, size)

    monkeypatch.setattr(supernet, "head_logits", capture)
    x = torch.randn(2, 3, 33, 33, dtype=torch.float64)
    supernet(x)  # the whole supernet: every node, the off-path ones zero
    end = genotype.network_path[-1]
    for level, node in captured.items():
        assert bool((node == 0).all()) == (level != end)
    expected = resize(supernet.heads[end](captured[end]), x.shape[2:])
    assert torch.allclose(Subnetwork(supernet, genotype)(x), expected, atol=1e-12)


def test_batch_norm_statistics_are_recomputed_for_the_subnetwork():
    torch.manual_seed(0)
    supernet = SearchNetwork(SPACE, 3)
    genotype = random_genotype(4, 2, SPACE.num_levels, torch.Generator().manual_seed(5))
    sub = Subnetwork(supernet, genotype)
    recalibrate_batch_norm(sub, [torch.randn(2, 3, 33, 33) for _ in range(3)])
    assert not sub.training
    stem_bn = next(m for m in supernet.stem.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(stem_bn.num_batches_tracked) == 3 and stem_bn.momentum == 0.1  # restored
    assert isinstance(genotype, Genotype)


def test_kendall_tau_by_hand():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # pairs: (1,2) concordant, (1,3) concordant, (2,3) discordant → (2 - 1) / 3
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    # a tie in x: τ-b = (C - D) / sqrt((C + D + Tx)(C + D + Ty)) = (2 - 0) / sqrt(3 · 2)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 6**0.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_dints_subnetwork_is_the_supernet_with_one_hot_edges_and_ops(seed):
    """Every edge active (so no depth is left out of the head): the found network holding the supernet's
    weights computes the supernet's body with edge weights 1 and each edge's op one-hot."""
    from autodeeplab.nets.dints import dints_shape
    from autodeeplab.space.dints.arch import DintsArch
    from autodeeplab.space.dints.supernet import DintsSupernet
    from autodeeplab.space.dints.topology import Topology
    from autodeeplab.study.inherited import dints_subnetwork

    torch.manual_seed(seed)
    edges, names = Topology(3).edges, ["skip_connect", "conv_3x3"]  # the 2D op set
    rng = torch.Generator().manual_seed(seed)
    blocks = [[[a, z, names[int(torch.randint(2, (1,), generator=rng))]] for a, z in edges] for _ in range(2)]
    arch = DintsArch.from_dict(
        {"version": 1, "kind": "dints", "op_set": "dints-2d", "depths": 3, "blocks": blocks}
    )
    supernet = DintsSupernet(dints_shape(arch, 4, "batch", 2, 3, 5)).double()
    for module in supernet.modules():  # running statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    supernet.eval()
    sub = dints_subnetwork(supernet, arch).double().eval()
    one_hot = torch.zeros(2, len(edges), len(supernet.op_names), dtype=torch.float64)
    for b, block in enumerate(arch.blocks):
        for a, z, op in block:
            one_hot[b, edges.index((a, z)), supernet.op_names.index(op)] = 1.0
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ones = torch.ones(2, len(edges), dtype=torch.float64)
    with torch.no_grad():
        expected = supernet.body.forward_with(x, ones, one_hot)
        error = float((sub(x) - expected).abs().max() / expected.abs().max())
    assert error < 1e-12  # float64 rounding (the supernet folds the edge weight into the norms)
