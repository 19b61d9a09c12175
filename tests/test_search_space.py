"""The supernet: topology, β normalisation, gradients, shapes, and Eq. 6 checked by hand."""

import numpy as np
import pytest
import torch

from autodeeplab.space.autodeeplab.supernet import SearchNetwork, SearchSpaceConfig, normalize_beta
from autodeeplab.space.autodeeplab.topology import (
    beta_mask,
    incoming_edges,
    nearest_level,
    node_levels,
    num_edges,
)


def tiny(layers=4, levels=4, blocks=2, F=2):
    return SearchSpaceConfig(
        filter_multiplier=F, num_layers=layers, num_blocks=blocks, num_levels=levels, stem_channels=(4, 4, 8)
    )


def test_topology_by_hand():
    assert num_edges(5) == 20
    assert list(node_levels(0, 4)) == [0]
    assert list(node_levels(1, 4)) == [0, 1]
    assert list(node_levels(2, 4)) == [0, 1, 2]
    assert list(node_levels(7, 4)) == [0, 1, 2, 3]
    mask = beta_mask(12, 4)
    assert mask.shape == (12, 4, 3)
    # stem (layer 0): only level 0, which can stay or go down
    assert mask[0].tolist() == [[False, True, True], [False] * 3, [False] * 3, [False] * 3]
    # layer 1: level 0 stays/down, level 1 up/stay/down
    assert mask[1, 1].tolist() == [True, True, True] and not mask[1, 2].any()
    # from layer 3 on: level 3 cannot go further down, level 0 cannot go up
    assert mask[5, 3].tolist() == [True, True, False] and mask[5, 0].tolist() == [False, True, True]
    assert incoming_edges(1, 1, 4) == [(0, 2)]  # from the stem, going down
    assert incoming_edges(3, 1, 4) == [(2, 0), (1, 1), (0, 2)]
    assert nearest_level(-1, 2, 4) == 0 and nearest_level(1, 3, 4) == 1 and nearest_level(5, 3, 4) == 3


def test_beta_rows_sum_to_one_over_valid_edges():
    mask = torch.from_numpy(beta_mask(12, 4))
    w = normalize_beta(torch.randn(12, 4, 3) * 3, mask)
    assert torch.all(w[~mask] == 0)
    rows = mask.any(dim=2)
    assert torch.allclose(w.sum(dim=2)[rows], torch.ones(int(rows.sum())))
    assert torch.all(w.sum(dim=2)[~rows] == 0)


def test_forward_shape_odd_sizes_and_batch_one():
    torch.manual_seed(0)
    net = SearchNetwork(tiny(), num_classes=3)
    net.train()
    for shape in [(1, 3, 33, 47), (2, 3, 40, 40)]:
        assert net(torch.randn(*shape)).shape == (shape[0], 3, *shape[2:])


def test_every_parameter_and_both_arch_tensors_get_gradients():
    torch.manual_seed(0)
    net = SearchNetwork(tiny(), num_classes=3)
    out = net(torch.randn(2, 3, 32, 32))
    torch.nn.functional.cross_entropy(out, torch.randint(0, 3, (2, 32, 32))).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
    assert net.alpha.grad.abs().sum() > 0
    # every real β edge gets a gradient, edges that do not exist get exactly none
    mask = net.beta_mask
    assert torch.all(net.beta.grad[mask] != 0)
    assert torch.all(net.beta.grad[~mask] == 0)
    # `none` (column 0) still receives gradient through the softmax
    assert torch.all(net.alpha.grad[:, 0] != 0)


def test_arch_and_weight_parameter_groups_partition_the_parameters():
    net = SearchNetwork(tiny(), num_classes=3)
    arch = {id(p) for p in net.arch_parameters()}
    weights = {id(p) for p in net.weight_parameters()}
    assert arch.isdisjoint(weights)
    assert arch | weights == {id(p) for p in net.parameters()}
    assert net.alpha.shape == (num_edges(2), 8) and net.beta.shape == (4, 4, 3)


def test_node_follows_equation_6():
    """Recompute node (3, 1) from its inputs by hand: Σ_s' β · Cell(resample(H), H^{l-2})."""
    torch.manual_seed(0)
    net = SearchNetwork(tiny(layers=3), num_classes=3).eval()
    with torch.no_grad():
        net.beta.copy_(torch.randn_like(net.beta))
        x = torch.randn(1, 3, 48, 48)
        stem = net.stem(x)
        sizes = net.level_sizes(stem.shape[2:])
        alpha, beta = net.alpha_weights(), net.beta_weights()
        layers = [{0: stem}, {0: stem}]  # layer -1 and layer 0
        for layer in (1, 2):
            layers.append(
                {
                    s: net._node(layer, s, layers[-2], layers[-1], sizes, alpha, beta)
                    for s in node_levels(layer, 4)
                }
            )
        h1, h2 = layers[-1], layers[-2]  # layer 2 and layer 1
        cell = net.cells["3_1"]
        expected = 0
        for source in (0, 1, 2):  # layer 2 has levels 0..2, all adjacent to 1
            resampled = net.resamplers[f"3_{source}_1"](h1[source], sizes[1])
            weight = beta[2, source, 1 - source + 1]
            expected = expected + weight * cell(
                torch.nn.functional.interpolate(h2[1], sizes[1]), resampled, alpha
            )
        got = net._node(3, 1, h2, h1, sizes, alpha, beta)
        assert torch.allclose(got, expected, atol=1e-5)


def test_h_prev_prev_falls_back_to_nearest_level_resampled():
    """Layer 2, level 2 has no level-2 node two layers back: it uses layer 0's level 0 (the stem)."""
    net = SearchNetwork(tiny(), num_classes=3)
    assert net.cells["2_2"].preprocess0[1].in_channels == 8  # the stem's channels
    assert net.cells["3_3"].preprocess0[1].in_channels == net.out_channels(1)  # layer 1's top level
    assert net.cells["4_3"].preprocess0[1].in_channels == net.out_channels(2)


def test_aspp_rates_follow_96_over_output_stride():
    net = SearchNetwork(SearchSpaceConfig(filter_multiplier=1, num_layers=1), num_classes=2)
    assert [h.branch3[0].dilation[0] for h in net.heads] == [24, 12, 6, 3]


def test_paper_setting_builds():
    net = SearchNetwork(SearchSpaceConfig(), num_classes=19)
    assert len(net.cells) == 1 * 2 + 1 * 3 + 10 * 4  # layer 1: 2 nodes, layer 2: 3, layers 3..12: 4
    assert net.alpha.shape == (20, 8) and net.beta.shape == (12, 4, 3)
    assert net.beta_mask.sum().item() == int(np.sum(beta_mask(12, 4)))


def test_3d_supernet_runs():
    cfg = tiny(layers=2, levels=3)
    cfg.spatial_dims = 3
    net = SearchNetwork(cfg, num_classes=2, in_channels=1)
    assert net(torch.randn(1, 1, 24, 20, 28)).shape == (1, 2, 24, 20, 28)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_fewer_levels(levels):
    net = SearchNetwork(tiny(layers=3, levels=levels), num_classes=2)
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)
