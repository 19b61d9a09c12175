"""The paper's settings are the defaults, and the structural choices the issue pins down hold.

Each test here checks a value or a structure that a well-meaning refactor could silently change: the
§5.1 optimiser settings, the α/β initialisation, the BN after pools in the mixed op, and the order in
which a retraining cell assigns the genotype's ops to its edges (a pitfall of public re-implementations).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autodeeplab.nets.cell import FixedCell
from autodeeplab.ops.primitives import POOL_PRIMITIVES, PRIMITIVES, build_op
from autodeeplab.runs.rundir import RunDir
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.loop import make_optimizers
from autodeeplab.search.state import load_or_make_split
from autodeeplab.space.autodeeplab.cell import MixedOp
from autodeeplab.space.autodeeplab.genotype import PAPER, Genotype
from autodeeplab.space.autodeeplab.supernet import SearchNetwork, SearchSpaceConfig


def test_search_defaults_are_the_papers():
    c = SearchConfig()
    assert (c.epochs, c.arch_start_epoch, c.batch_size) == (40, 20, 2)
    assert (c.lr, c.lr_min, c.momentum, c.weight_decay) == (0.025, 0.001, 0.9, 3e-4)
    assert (c.arch_lr, c.arch_weight_decay) == (3e-3, 1e-3)
    assert c.data.crop_size == 321 and c.data.dataset == "cityscapes"
    s = c.space
    assert (s.filter_multiplier, s.num_layers, s.num_blocks, s.num_levels) == (8, 12, 5, 4)
    assert (s.aspp_rate_base, s.arch_init_std, s.partial_channels) == (96, 1e-3, 1)


def tiny_space(**kw) -> SearchSpaceConfig:
    base = {"filter_multiplier": 2, "num_layers": 3, "num_blocks": 2, "stem_channels": (4, 4, 8)}
    return SearchSpaceConfig(**{**base, **kw})


def test_optimisers_follow_section_5_1():
    config = SearchConfig(space=tiny_space(), epochs=4, arch_start_epoch=2)
    model = SearchNetwork(config.space, num_classes=3)
    weight_opt, arch_opt, scheduler = make_optimizers(model, config)
    assert isinstance(weight_opt, torch.optim.SGD) and isinstance(arch_opt, torch.optim.Adam)
    w, a = weight_opt.param_groups[0], arch_opt.param_groups[0]
    assert (w["lr"], w["momentum"], w["weight_decay"]) == (0.025, 0.9, 3e-4)
    assert (a["lr"], a["weight_decay"]) == (3e-3, 1e-3)
    # the two optimisers own disjoint parameter sets: α/β and nothing else go to Adam
    arch_ids = {id(p) for p in a["params"]}
    assert arch_ids == {id(model.alpha), id(model.beta)}
    assert not arch_ids & {id(p) for p in w["params"]}
    # cosine annealing per epoch, ending at lr_min after the last epoch
    lrs = []
    for _ in range(config.epochs):
        lrs.append(weight_opt.param_groups[0]["lr"])
        weight_opt.step()
        scheduler.step()
    expected = [0.001 + 0.5 * (0.025 - 0.001) * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert lrs == pytest.approx(expected)
    assert weight_opt.param_groups[0]["lr"] == pytest.approx(0.001)


def test_alpha_and_beta_start_as_small_gaussians():
    torch.manual_seed(0)
    model = SearchNetwork(tiny_space(num_blocks=5, num_layers=12), num_classes=3)
    assert model.alpha.shape == (20, len(PRIMITIVES)) and model.beta.shape == (12, 4, 3)
    values = torch.cat([model.alpha.detach().flatten(), model.beta.detach().flatten()])
    assert 0.8e-3 < float(values.std()) < 1.2e-3  # 1e-3 · N(0, 1), 304 draws
    assert abs(float(values.mean())) < 3e-4


@pytest.mark.parametrize("dims", [2, 3])
def test_pools_in_the_mixed_op_end_in_a_bn_without_affine(dims):
    op = MixedOp(4, affine=True, dims=dims)
    names = [PRIMITIVES[i] for i in op.op_indices]
    assert "none" not in names and len(names) == len(PRIMITIVES) - 1
    for name, module in zip(names, op.ops, strict=True):
        if name in POOL_PRIMITIVES:
            assert isinstance(module, nn.Sequential)
            bn = module[-1]
            assert isinstance(bn, nn.modules.batchnorm._BatchNorm) and not bn.affine
        else:
            assert type(module) is type(build_op(name, 4, 1, True, dims))


def random_genotype(seed: int) -> Genotype:
    g = torch.Generator().manual_seed(seed)
    ops = [p for p in PRIMITIVES if p != "none"]
    cell = []
    for block in range(5):
        inputs = torch.randperm(block + 2, generator=g)[:2].tolist()
        cell.append([[ops[int(torch.randint(len(ops), (1,), generator=g))], i] for i in inputs])
    return Genotype.from_dict(
        {"version": 1, "network_path": list(PAPER.network_path), "cell": cell}, source="test"
    )


@pytest.mark.parametrize(
    "genotype", [PAPER, random_genotype(1), random_genotype(2)], ids=["paper", "r1", "r2"]
)
@pytest.mark.parametrize("reduction", [False, True])
def test_retraining_cell_assigns_ops_to_edges_in_genotype_order(genotype, reduction):
    """The k-th op module is the k-th (op, input) pair of the genotype, read block by block."""
    cell = FixedCell(genotype.cell, c_prev_prev=6, c_prev=8, filters=4, reduction=reduction)
    pairs = [pair for block in genotype.cell for pair in block]
    assert len(cell.ops) == len(pairs)
    for module, (name, source) in zip(cell.ops, pairs, strict=True):
        stride = 2 if reduction and source < 2 else 1
        reference = build_op(name, 4, stride=stride, affine=True, dims=2)
        assert type(module) is type(reference)
        assert [tuple(p.shape) for p in module.parameters()] == [
            tuple(p.shape) for p in reference.parameters()
        ]


def test_retraining_cell_reads_the_inputs_the_genotype_names():
    """Replace every op by a tagged identity: each block must sum exactly the states it names."""
    genotype = random_genotype(3)
    cell = FixedCell(genotype.cell, c_prev_prev=4, c_prev=4, filters=4, reduction=False).eval()
    cell.pre_prev = nn.Identity()
    cell.pre_prev_prev = nn.Identity()
    cell.ops = nn.ModuleList(nn.Identity() for _ in cell.ops)
    h0, h1 = torch.full((1, 4, 3, 3), 1.0), torch.full((1, 4, 3, 3), 10.0)
    out = cell(h0, h1)
    states = [1.0, 10.0]
    for block in genotype.cell:
        states.append(sum(states[source] for _, source in block))
    got = [float(v) for v in out[0, ::4, 0, 0]]
    assert got == states[2:]


def test_the_split_is_reused_on_resume_even_with_another_seed(tmp_path):
    config = SearchConfig()
    run = RunDir(tmp_path / "run")
    first = load_or_make_split(run, 40, config)
    assert sorted(first["train_a"] + first["train_b"]) == list(range(40))
    assert not set(first["train_a"]) & set(first["train_b"])
    before = (tmp_path / "run" / "split.json").read_bytes()
    config.seed = 123  # a resumed run must not draw a new split
    again = load_or_make_split(RunDir(tmp_path / "run", resume=True), 40, config)
    assert again["train_a"] == first["train_a"] and again["train_b"] == first["train_b"]
    assert (tmp_path / "run" / "split.json").read_bytes() == before
