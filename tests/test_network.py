"""The found network: shapes for odd/even sizes and any genotype, gradients, batch one, drop path, config
round trip and validation (aligned resizes and volumes: test_network_resizes_volumes.py)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from autodeeplab.errors import AutoDeepLabError, ConfigError, GenotypeError
from autodeeplab.nets import cell as cell_module
from autodeeplab.nets.cell import FixedCell, drop_path, scheduled_keep_prob
from autodeeplab.nets.network import (
    VARIANTS,
    AutoDeepLabNet,
    NetworkConfig,
    build_network,
    low_level_layer_index,
)
from autodeeplab.ops.heads import aspp_rates_for_stride
from autodeeplab.ops.primitives import PRIMITIVES, AtrousConv
from autodeeplab.space.autodeeplab.genotype import PAPER, Genotype

# Tiny widths: shapes do not depend on them, and the forward passes stay cheap.
TINY = {
    "filter_multiplier": 4,
    "stem_channels": (8, 8, 16),
    "aspp_channels": 8,
    "decoder_channels": 8,
    "low_level_channels": 4,
    "num_classes": 5,
}

ALL_OPS_CELL = (
    (("max_pool_3x3", 0), ("skip_connect", 1)),
    (("avg_pool_3x3", 1), ("atr_conv_3x3", 2)),
    (("sep_conv_5x5", 3), ("skip_connect", 0)),
    (("atr_conv_5x5", 1), ("sep_conv_3x3", 4)),
    (("skip_connect", 5), ("avg_pool_3x3", 2)),
)
"""Every primitive but ``none``; skips on cell inputs (strided in reduction cells) and on blocks."""


def random_genotype(seed: int, max_layers: int = 12, levels: int = 4) -> Genotype:
    """A valid random genotype: path steps of -1/0/+1 within the levels, 2–5 blocks of random ops."""
    rng = random.Random(seed)
    path, level = [], 0
    for _ in range(rng.randint(3, max_layers)):
        level = min(levels - 1, max(0, level + rng.choice((-1, 0, 1))))
        path.append(level)
    ops = [p for p in PRIMITIVES if p != "none"]
    cell = [[[rng.choice(ops), rng.randrange(i + 2)] for _ in range(2)] for i in range(rng.randint(2, 5))]
    return Genotype.from_dict({"version": 1, "network_path": path, "cell": cell})


GENOTYPES = [PAPER, *(random_genotype(seed) for seed in (1, 2, 3))]


def tiny_net(genotype: Genotype = PAPER, **overrides) -> AutoDeepLabNet:
    return AutoDeepLabNet(genotype, NetworkConfig(**{**TINY, **overrides}))


@pytest.mark.parametrize("size", [(321, 321), (513, 513), (360, 480)])
@pytest.mark.parametrize("genotype", GENOTYPES, ids=["paper", "rand1", "rand2", "rand3"])
def test_forward_shape_any_size(genotype: Genotype, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = tiny_net(genotype).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, *size))
    assert out.shape == (1, TINY["num_classes"], *size)
    assert torch.isfinite(out).all()


def test_random_genotypes_differ_and_reach_every_level() -> None:
    """The generator is not degenerate: the genotypes above are distinct and go up and down."""
    assert len({g.to_json() for g in GENOTYPES}) == len(GENOTYPES)
    steps = {
        b - a for g in GENOTYPES[1:] for a, b in zip((0, *g.network_path[:-1]), g.network_path, strict=True)
    }
    assert steps == {-1, 0, 1}


def test_cell_outputs_have_blocks_times_filters_channels() -> None:
    net = tiny_net(PAPER)
    x = torch.randn(2, 3, 64, 96)
    seen = []
    for cell, level in zip(net.cells, PAPER.network_path, strict=True):
        cell.register_forward_hook(lambda m, i, o, level=level: seen.append((level, o.shape)))
    net.eval()(x)
    for level, shape in seen:
        stride = 4 * 2**level
        assert shape == (2, 5 * TINY["filter_multiplier"] * 2**level, 64 // stride, 96 // stride)


def test_strides_only_on_cell_inputs_of_reduction_cells() -> None:
    """In a cell that goes down a level, ops reading h^{l-2}, h^{l-1} have stride 2, the others 1."""
    net = tiny_net(PAPER)
    previous = 0
    for cell, level in zip(net.cells, PAPER.network_path, strict=True):
        sources = [source for block in PAPER.cell for _, source in block]
        for op, source in zip(cell.ops, sources, strict=True):
            expected = 2 if level > previous and source < 2 else 1
            if isinstance(op, AtrousConv):
                # The released strided atrous op resizes, then convolves with stride 1 and no dilation.
                assert op.stride == expected and op[1].stride == (1, 1)
                assert op[1].dilation == ((1, 1) if expected == 2 else (2, 2))
                continue
            strides = {m.stride[0] for m in op.modules() if isinstance(m, nn.Conv2d)}
            assert max(strides) == expected
        previous = level


def test_downward_cell_outputs_match_for_odd_sizes() -> None:
    """Every stride-2 op of a downward cell (atrous included) yields ceil(S/2), so blocks can be summed."""
    cell = FixedCell(PAPER.cell, 8, 8, 8, reduction=True).eval()
    for size in ((7, 9), (5, 5), (1, 3)):
        x = torch.randn(1, 8, *size)
        with torch.no_grad():
            out = cell(x, x)
        assert out.shape == (1, 40, *(-(-s // 2) for s in size))


def test_prev_prev_projection_only_when_channels_differ() -> None:
    # Stem's second conv gives 8 channels = F: the first cell reads h^{l-2} as it is.
    net = tiny_net(PAPER, filter_multiplier=8, stem_channels=(8, 8, 16))
    assert isinstance(net.cells[0].pre_prev_prev, nn.Identity)
    assert not isinstance(net.cells[1].pre_prev_prev, nn.Identity)  # 16 stem channels != 8
    convs = [m for m in net.cells[1].pre_prev_prev.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.bias) for c in convs] == [(16, 8, None)]


def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    genotype = Genotype(network_path=(1, 2, 3, 2, 1, 0), cell=ALL_OPS_CELL)
    for g in (PAPER, genotype):
        net = tiny_net(g).train()
        logits = net(torch.randn(2, 3, 65, 97))
        target = torch.randint(0, TINY["num_classes"], (2, 65, 97))
        nn.functional.cross_entropy(logits, target).backward()
        for name, p in net.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_batch_of_one_trains() -> None:
    """One image per batch trains: every BN normalises over that image's positions (at least 4×4 at output
    stride 32 here), and the image-pooling branch, whose map is 1×1, has no BN (BN over one value per
    channel is refused in training mode)."""
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm2d(4).train()(torch.randn(1, 4, 1, 1))  # why the pooled branch must not have one
    torch.manual_seed(0)
    net = tiny_net(PAPER, aspp_dropout=0.0).train()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.aspp.branches[-1].modules())
    x, target = torch.randn(1, 3, 97, 97), torch.full((1, 97, 97), 3)
    target[:, :, :48] = 1  # a left and a right class: something to learn
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(net(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses  # it learns the one image
    for name, p in net.named_parameters():
        assert torch.isfinite(p).all() and not torch.equal(p, before[name]), name


def test_low_level_features_come_from_layer_3_or_the_stem() -> None:
    assert low_level_layer_index(PAPER.network_path) == 2
    assert low_level_layer_index((0, 1, 0, 1)) == 2
    assert low_level_layer_index((0, 1, 1, 0)) == 0
    assert low_level_layer_index((1, 1, 2, 1)) == -1
    net = tiny_net(Genotype(network_path=(1, 1, 2), cell=PAPER.cell))
    assert net.decoder.reduce[0].in_channels == TINY["stem_channels"][2]


def test_aspp_rates_follow_the_output_stride() -> None:
    assert aspp_rates_for_stride((6, 12, 18), 16) == (6, 12, 18)
    assert aspp_rates_for_stride((6, 12, 18), 8) == (12, 24, 36)
    assert aspp_rates_for_stride((6, 12, 18), 32) == (3, 6, 9)
    assert tiny_net(PAPER).aspp.rates == (12, 24, 36)  # the paper's path ends at output stride 8
    assert tiny_net(Genotype(network_path=(1, 2, 3), cell=PAPER.cell)).aspp.rates == (3, 6, 9)


# --- scheduled drop path --------------------------------------------------------------------------


def test_scheduled_keep_prob_formula() -> None:
    # Last of 12 cells at the end of training: the configured keep probability.
    assert scheduled_keep_prob(0.7, 11, 12, 1.0) == pytest.approx(0.7)
    # First cell: 1 - 1/12 * 0.3 at the end, half the drop rate at mid-training.
    assert scheduled_keep_prob(0.7, 0, 12, 1.0) == pytest.approx(1 - 0.3 / 12)
    assert scheduled_keep_prob(0.7, 5, 12, 0.5) == pytest.approx(1 - 0.5 * (6 / 12) * 0.3)
    assert scheduled_keep_prob(0.7, 11, 12, 0.0) == 1.0


def test_drop_path_zeroes_whole_samples_and_rescales() -> None:
    torch.manual_seed(0)
    x = torch.ones(4000, 2, 3, 3)
    y = drop_path(x, 0.75)
    per_sample = y.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()
    assert (per_sample[:, 0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert drop_path(x, 1.0) is x


def test_drop_path_active_in_training_only(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    # No ASPP dropout: any randomness in training mode must come from drop path.
    net = tiny_net(PAPER, drop_path_keep_prob=0.5, aspp_dropout=0.0)
    reference = tiny_net(PAPER, drop_path_keep_prob=1.0, aspp_dropout=0.0)
    x = torch.randn(1, 3, 65, 65).expand(4, -1, -1, -1).contiguous()  # four copies of one image
    net.set_drop_path_progress(1.0)

    # Record, for every op output that drop path sees, which of the four samples it kept.
    kept: list[list[bool]] = []

    def recording_drop_path(out: torch.Tensor, keep_prob: float) -> torch.Tensor:
        dropped = drop_path(out, keep_prob)
        if keep_prob < 1.0:
            flags = []
            for sample, result in zip(out, dropped, strict=True):
                whole = torch.equal(result, sample / keep_prob) or not result.any()  # whole samples only
                assert whole
                flags.append(bool(result.any()))
            kept.append(flags)
        return dropped

    net.train()
    assert min(net.cell_keep_probs()) == pytest.approx(0.5)
    with torch.no_grad():
        a, b = net(x), net(x)
        assert not torch.equal(a, b)  # a new draw per call
        with monkeypatch.context() as patch:
            patch.setattr(cell_module, "drop_path", recording_drop_path)
            c = net(x)
    # One draw per sample: the four copies got different paths, and exactly the copies that took the same
    # path through every op give the same logits (BN in training mode treats every sample alike).
    paths = [tuple(flags[i] for flags in kept) for i in range(4)]
    assert len(kept) > 0 and len(set(paths)) > 1
    for i in range(4):
        for j in range(i + 1, 4):
            assert torch.allclose(c[i], c[j], atol=1e-5) == (paths[i] == paths[j]), (i, j)
    reference.train()
    with torch.no_grad():
        assert torch.equal(reference(x), reference(x))  # without drop path, training is deterministic

    net.eval()
    reference.load_state_dict(net.state_dict())  # same weights and BN statistics, never drops
    reference.eval()
    with torch.no_grad():
        c, d, e = net(x), net(x), reference(x)
    assert torch.equal(c, d)
    assert torch.allclose(c, e, atol=1e-6)


def test_drop_path_off_at_the_start_of_training() -> None:
    """Progress 0 (the released schedule's first step) keeps every path, in training mode too."""
    net = tiny_net(PAPER, drop_path_keep_prob=0.5, aspp_dropout=0.0).train()
    reference = tiny_net(PAPER, drop_path_keep_prob=1.0, aspp_dropout=0.0).train()
    reference.load_state_dict(net.state_dict())
    net.set_drop_path_progress(0.0)
    x = torch.randn(2, 3, 65, 65)
    with torch.no_grad():
        assert torch.allclose(net(x), reference(x), atol=1e-6)
    with pytest.raises(ValueError, match="progress"):
        net.set_drop_path_progress(1.5)


# --- config dict ------------------------------------------------------------------------------------


def test_config_dict_round_trip() -> None:
    torch.manual_seed(0)
    genotype = random_genotype(7)
    net = tiny_net(genotype, drop_path_keep_prob=0.8).eval()
    data = json.loads(json.dumps(net.config_dict()))  # JSON-able
    assert data["genotype"] == genotype.to_dict()
    rebuilt = AutoDeepLabNet.from_config_dict(data).eval()
    assert rebuilt.config_dict() == data
    rebuilt.load_state_dict(net.state_dict())  # same architecture: strict load succeeds
    x = torch.randn(1, 3, 40, 52)
    with torch.no_grad():
        assert torch.equal(net(x), rebuilt(x))


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda d: d.pop("network"), ConfigError, "ckpt: missing key 'network'"),
        (lambda d: d.update(extra=1), ConfigError, "ckpt: unknown key 'extra'"),
        (
            lambda d: d["network"].update(filter_multiplier=-1),
            ConfigError,
            "ckpt.network.filter_multiplier: must be at least 1, got -1",
        ),
        (
            lambda d: d["network"].update(aspp_channels="8"),
            ConfigError,
            "ckpt.network.aspp_channels: must be an integer, got '8'",
        ),
        (
            lambda d: d["network"].update(stem_channels=[64, 64]),
            ConfigError,
            "ckpt.network.stem_channels: must be a list of 3 positive integers, got [64, 64]",
        ),
        (
            lambda d: d["network"].update(drop_path_keep_prob=0),
            ConfigError,
            "ckpt.network.drop_path_keep_prob: must be a number in (0, 1], got 0.0",
        ),
        (
            lambda d: d["network"].update(spatial_dims=1),
            ConfigError,
            "ckpt.network.spatial_dims: must be 2 (images) or 3 (volumes), got 1",
        ),
        (
            lambda d: d["network"].update(num_classes=None),
            ConfigError,
            "network.num_classes: must be a number to build a network",
        ),
        (lambda d: d["network"].update(width=3), ConfigError, "ckpt.network.width: unknown network setting"),
        (
            lambda d: d["genotype"]["network_path"].__setitem__(0, 2),
            GenotypeError,
            "ckpt.genotype: network_path[0]: level 2 jumps more than one level",
        ),
    ],
)
def test_from_config_dict_names_the_bad_field(mutate, error: type[Exception], message: str) -> None:
    data = tiny_net(PAPER).config_dict()
    mutate(data)
    with pytest.raises(error) as info:
        AutoDeepLabNet.from_config_dict(data, source="ckpt")
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_build_network_variants_and_errors() -> None:
    with torch.device("meta"):
        assert build_network("paper", variant="M").config.filter_multiplier == VARIANTS["M"]
        assert build_network(PAPER, filter_multiplier=8).config.filter_multiplier == 8
    with pytest.raises(ConfigError, match="variant: unknown variant 'XL'"):
        build_network("paper", variant="XL")
    with pytest.raises(ConfigError, match="filter_multiplier: 8 contradicts variant S"):
        build_network("paper", variant="S", filter_multiplier=8)
    with pytest.raises(ConfigError, match="network.num_classes: must be at least 1, got 0"):
        build_network("paper", num_classes=0)
    with pytest.raises(AutoDeepLabError, match="not a built-in genotype"):
        build_network("no-such-genotype")


def test_build_network_from_a_config() -> None:
    config = NetworkConfig(**TINY)
    with torch.device("meta"):
        net = build_network(PAPER, config, aspp_channels=16)
    assert net.config == NetworkConfig(**{**TINY, "aspp_channels": 16})
    assert config.aspp_channels == TINY["aspp_channels"]  # the given config is left as it was


def test_validate_names_the_field_under_the_name_it_is_read_as() -> None:
    config = NetworkConfig(low_level_channels=0)  # building the settings does not check them ...
    with pytest.raises(ConfigError, match=r"^model.low_level_channels: must be at least 1, got 0$"):
        config.validate("model")
    with pytest.raises(ConfigError, match=r"^network.low_level_channels: must be at least 1, got 0$"):
        AutoDeepLabNet(PAPER, config)  # ... building a network from them does
    with pytest.raises(ConfigError, match=r"^network.aspp_rates_os16: must be a list of 3 positive integers"):
        NetworkConfig(aspp_rates_os16=(6, 0, 18)).validate()
    with pytest.raises(ConfigError, match=r"^network.aspp_dropout: must be a number in \[0, 1\), got 1.0$"):
        NetworkConfig(aspp_dropout=1).validate()
    NetworkConfig(num_classes=None).validate()  # null = the dataset's count, for training settings
