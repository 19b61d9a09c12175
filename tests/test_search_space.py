"""The supernet: topology, β normalisation, gradients, shapes, and Eq. 6 checked by hand."""

import contextlib
import math

import numpy as np
import pytest
import torch
from torch.nn import functional

from autodeeplab.fast.execution import ExecutionConfig, reference_switches
from autodeeplab.fast.supernet import build_supernet
from autodeeplab.ops.primitives import PRIMITIVES
from autodeeplab.space.autodeeplab.supernet import (
    SearchNetwork,
    SearchSpaceConfig,
    normalize_alpha,
    normalize_beta,
)
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


def make_supernet(config, num_classes, execution=None):
    """The one place this file builds a supernet for the Eq. 6 tests. ``execution`` None: the reference
    (:class:`SearchNetwork`'s own forward); otherwise the search's builder with those execution switches
    (``ExecutionConfig()``: the exact fast path)."""
    if execution is None:
        return SearchNetwork(config, num_classes)
    return build_supernet(config, num_classes, execution=execution)


def bilinear(x, size):
    """The search supernet's resize, by hand: bilinear, corners not aligned."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def mixed_op_by_hand(edge, x, weights):
    """Paper Eq. 2: Σ over the primitives other than `none` (whose output is 0) of α_p · op_p(x)."""
    out = 0
    for p, name in enumerate(PRIMITIVES):
        if name != "none":
            out = out + weights[p] * edge.op(name)(x)
    return out


def cell_by_hand(cell, num_blocks, s0, s1, alpha):
    """Paper §3.1: block i sums a mixed op of every earlier state (s0, s1, blocks 0..i-1), edges numbered
    block by block and input by input; the cell output concatenates the blocks."""
    states, edge = [s0, s1], 0
    for _ in range(num_blocks):
        out = 0
        for state in states:
            out = out + mixed_op_by_hand(cell.edges[edge], state, alpha[edge])
            edge += 1
        states.append(out)
    return torch.cat(states[2:], dim=1)


def nearest_level_two_back(nodes, layer, level):
    """h^{l-2} (README): the node at ``level`` two layers back, or where that level does not exist yet, the
    nearest level there (the highest one). Layers -1 and 0 are the stem."""
    top = max(s for (l, s) in nodes if l == layer - 2)
    return nodes[(layer - 2, min(level, top))]


def supernet_by_hand(model, x, h_prev_prev=nearest_level_two_back, resize_prev_prev=bilinear):
    """The whole supernet output of ``model`` for images ``x``, from its modules, node by node (Eq. 6):

        ^sH^l = Σ_{s'} β[l-1, s', s-s'+1] · Cell(resample(^{s'}H^{l-1}), resize(h^{l-2}); α)

    with softmax α and masked-softmax β; resampling down = the resampler's ReLU → 3×3 stride-2 conv → BN,
    up = bilinear to the exact size of the target level, then ReLU → 1×1 → BN; every level's head on the
    last layer, upsampled to the input size and summed. Returns the logits and the resizes made
    (``(from, to)`` spatial sizes). ``h_prev_prev`` and ``resize_prev_prev`` let a test try wrong choices.
    """
    c = model.config
    alpha = normalize_alpha(model.alpha)
    beta = normalize_beta(model.beta, model.beta_mask)
    stem = model.stem(x)
    sizes = [tuple(stem.shape[2:])]
    for _ in range(1, c.num_levels):
        sizes.append(tuple(math.ceil(n / 2) for n in sizes[-1]))
    nodes, resizes = {(-1, 0): stem, (0, 0): stem}, []
    for layer in range(1, c.num_layers + 1):
        for level in range(min(layer, c.num_levels - 1) + 1):
            cell = model.cells[f"{layer}_{level}"]
            h_pp = h_prev_prev(nodes, layer, level)
            resizes.append((tuple(h_pp.shape[2:]), sizes[level]))
            s0 = cell.preprocess0(resize_prev_prev(h_pp, sizes[level]))
            out = 0
            for source in (level - 1, level, level + 1):
                if (layer - 1, source) not in nodes:
                    continue
                h = nodes[(layer - 1, source)]
                resampler = model.resamplers[f"{layer}_{source}_{level}"]
                if source > level:  # a lower resolution: up to the exact size of this level first
                    resizes.append((tuple(h.shape[2:]), sizes[level]))
                    h = bilinear(h, sizes[level])
                h = resampler.conv(h)
                assert tuple(h.shape[2:]) == sizes[level]
                weight = beta[layer - 1, source, level - source + 1]
                out = out + weight * cell_by_hand(cell, c.num_blocks, s0, cell.preprocess1(h), alpha)
            nodes[(layer, level)] = out
    last = [nodes[(c.num_layers, s)] for s in range(min(c.num_layers, c.num_levels - 1) + 1)]
    logits = sum(bilinear(model.heads[s](h), x.shape[2:]) for s, h in enumerate(last))
    return logits, resizes


def randomized_supernet(config, num_classes):
    """A float64 reference supernet with α, β far from uniform, and BN affine parameters and running
    statistics away from their initial values (so that a wrong BN or a wrong statistic shows)."""
    torch.manual_seed(0)
    net = make_supernet(config, num_classes).double()
    with torch.no_grad():
        net.alpha.copy_(torch.randn_like(net.alpha))
        net.beta.copy_(torch.randn_like(net.beta) * 2)
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn_like(module.running_mean) * 0.2)
                module.running_var.uniform_(0.5, 2.0)
                if module.affine:
                    module.weight.copy_(1 + 0.3 * torch.randn_like(module.weight))
                    module.bias.copy_(0.2 * torch.randn_like(module.bias))
    return net


@contextlib.contextmanager
def state_kept(model):
    """Put back every parameter and buffer afterwards: in training mode each BN call of a hand computation
    moves its running statistics (cheaper than a deep copy)."""
    saved = {name: value.clone() for name, value in model.state_dict().items()}
    try:
        yield
    finally:
        model.load_state_dict(saved)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_whole_supernet_follows_equation_6(training):
    """The supernet's output equals Eq. 6 computed by hand from its modules, node by node, for the whole
    network (stem, every node, heads): 2 images of 3×37×41 (odd sizes, so the resizes are not exact ×2),
    F=2, L=4, B=2, float64, in training mode (BN batch statistics) and eval mode (running statistics), for
    the reference forward, the exact fast path, and the fast path's module with every switch off.

    The h^{l-2} rule is checked by values: the hand computation takes the nearest level two layers back
    (layer -1 being the stem) and resizes it bilinearly; plausible wrong choices that fit the channel
    counts give an output that differs by far more than the agreement: h^{l-2} dropped (zeros) where its
    own level is missing, the stem there instead, the right level one layer back instead of two, and a
    nearest-neighbour resize instead of bilinear (tried in training mode).
    """
    config = tiny()
    base = randomized_supernet(config, num_classes=3).train(training)
    x = torch.randn(2, 3, 37, 41, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def by_hand(**choices):
        with torch.no_grad(), state_kept(base):
            return supernet_by_hand(base, x, **choices)

    expected, resizes = by_hand()
    assert expected.shape == (2, 3, 37, 41)
    # the resizes are real: some shrink h^{l-2}, some enlarge h^{l-1}, some are not an exact factor of 2
    assert any(a[0] > b[0] for a, b in resizes) and any(a[0] < b[0] for a, b in resizes)
    assert any(2 * a[0] != b[0] and 2 * b[0] != a[0] and a != b for a, b in resizes)
    executions = {
        "reference": None,
        "fast": ExecutionConfig(),
        "fast module, every switch off": ExecutionConfig(**reference_switches()),
    }
    for name, execution in executions.items():
        model = make_supernet(config, 3, execution).double()
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            got = model.train(training)(x)
        assert got.dtype == torch.float64, name
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}")
    if not training:
        return  # the wrong choices below are tried once, in training mode (they differ by 0.5 to 1.4 there)

    def missing(nodes, layer, level):  # whether h^{l-2}'s own level does not exist two layers back
        return (layer - 2, level) not in nodes

    def dropped(nodes, layer, level):
        h = nearest_level_two_back(nodes, layer, level)
        return torch.zeros_like(h) if missing(nodes, layer, level) else h

    def stem_instead(nodes, layer, level):
        h, stem = nearest_level_two_back(nodes, layer, level), nodes[(-1, 0)]
        return stem if missing(nodes, layer, level) and stem.shape[1] == h.shape[1] else h

    def one_layer_back(nodes, layer, level):
        h = nearest_level_two_back(nodes, layer, level)
        if not missing(nodes, layer, level) or layer < 2:
            return h
        same = [s for (l, s) in nodes if l == layer - 1 and nodes[(l, s)].shape[1] == h.shape[1]]
        return nodes[(layer - 1, same[0])]

    def nearest_neighbour(h, size):
        return functional.interpolate(h, size=tuple(size), mode="nearest")

    for choice in (
        {"h_prev_prev": dropped},
        {"h_prev_prev": stem_instead},
        {"h_prev_prev": one_layer_back},
        {"resize_prev_prev": nearest_neighbour},
    ):
        wrong, _ = by_hand(**choice)
        assert (wrong - expected).abs().max() > 1e-6, choice  # 1000× the tolerance of the agreement


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
