"""genotype.json: round trip, the built-in paper genotype, and every rejection names its field."""

import json

import pytest

from autodeeplab.errors import GenotypeError
from autodeeplab.space.autodeeplab.genotype import PAPER, Genotype, resolve_genotype

PAPER_JSON = {
    "version": 1,
    "network_path": [0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1],
    "cell": [
        [["atr_conv_5x5", 0], ["sep_conv_3x3", 1]],
        [["sep_conv_3x3", 0], ["atr_conv_3x3", 1]],
        [["sep_conv_3x3", 3], ["sep_conv_3x3", 0]],
        [["sep_conv_5x5", 4], ["sep_conv_5x5", 2]],
        [["sep_conv_5x5", 3], ["atr_conv_5x5", 5]],
    ],
}


def test_paper_genotype_matches_the_issue_text():
    assert PAPER.to_dict() == PAPER_JSON
    assert resolve_genotype("paper") is PAPER


def test_round_trip_through_file(tmp_path):
    path = tmp_path / "genotype.json"
    PAPER.save(path)
    assert Genotype.load(path) == PAPER
    assert json.loads(path.read_text()) == PAPER_JSON
    assert resolve_genotype(tmp_path) == PAPER  # a run directory holding genotype.json


def _with(**changes):
    data = json.loads(json.dumps(PAPER_JSON))
    data.update(changes)
    return data


def _cell_with(block, pair, value):
    data = json.loads(json.dumps(PAPER_JSON))
    data["cell"][block][pair] = value
    return data


@pytest.mark.parametrize(
    "data,message",
    [
        (_with(extra=1), "unknown key 'extra'"),
        (_with(version=2), "version: expected 1"),
        (_with(version=True), "version: expected 1, got True"),
        (_with(version="1"), "version: expected 1, got '1'"),
        (_with(network_path=[0, 2, 2]), r"network_path\[1\]: level 2 jumps more than one level"),
        (_with(network_path=[2, 2]), r"network_path\[0\]: level 2 jumps more than one level from the stem"),
        (_with(network_path=[0, 1, 2, 3, 4]), r"network_path\[4\]: level must be an integer in 0..3"),
        (_with(network_path=[]), "network_path: expected a non-empty list"),
        (_cell_with(0, 0, ["conv_7x7", 0]), r"cell\[0\]\[0\]: unknown primitive 'conv_7x7'"),
        (_cell_with(1, 1, ["none", 0]), r"cell\[1\]\[1\]: primitive 'none' cannot be part of a found cell"),
        (_cell_with(0, 1, ["sep_conv_3x3", 2]), r"cell\[0\]\[1\]: input 2 is not visible to block 0"),
        (_cell_with(2, 0, ["sep_conv_3x3", -1]), r"cell\[2\]\[0\]: input -1 is not visible"),
        (_cell_with(2, 0, ["sep_conv_3x3"]), r"cell\[2\]\[0\]: expected a \[primitive, input\] pair"),
    ],
)
def test_rejections_name_the_field(data, message):
    with pytest.raises(GenotypeError, match=message):
        Genotype.from_dict(data, "g.json")


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(GenotypeError, match="no such genotype file"):
        Genotype.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GenotypeError, match="bad.json: not valid JSON"):
        Genotype.load(bad)
    with pytest.raises(GenotypeError, match="not a built-in genotype"):
        resolve_genotype(str(tmp_path / "missing"))


def test_short_form():
    assert PAPER.short().startswith("path 0-0-0-1-2-1-2-2-3-3-2-1 | cell atr5(0)+sep3(1)")


def test_a_genotype_of_a_space_with_other_than_four_levels_keeps_its_levels_through_its_file(tmp_path):
    import torch

    from autodeeplab.cli.main import main
    from autodeeplab.space.autodeeplab.decode import decode
    from autodeeplab.space.autodeeplab.random_arch import random_genotype

    deep = random_genotype(12, 5, 5, torch.Generator().manual_seed(3))
    assert deep.num_levels == 5
    path = tmp_path / "g5.json"
    deep.save(path)
    assert json.loads(path.read_text())["num_levels"] == 5
    assert Genotype.load(path) == deep
    # the paper's 4 levels: files as they always were, without the key
    assert "num_levels" not in PAPER.to_dict() and Genotype.from_json(PAPER.to_json()) == PAPER
    assert main(["info", "--genotype", str(path)]) == 0
    # a path that reaches level 4 is a 5-level genotype: refused as a 4-level one, or against a 4-level space
    five = {**deep.to_dict(), "network_path": [0, 1, 2, 3, 4, 4, 3, 2, 1, 0, 0, 0]}
    assert Genotype.from_dict(five).network_path[4] == 4
    with pytest.raises(GenotypeError, match=r"in 0..3, got 4; a genotype of a space of more levels says so"):
        Genotype.from_dict({k: v for k, v in five.items() if k != "num_levels"})
    with pytest.raises(GenotypeError, match="num_levels: 5, but the search space has 4"):
        Genotype.from_dict(five, num_levels=4)
    with pytest.raises(GenotypeError, match="num_levels: expected an integer in 1..8, got 9"):
        Genotype.from_dict({**five, "num_levels": 9})
    # decoding a 5-level β gives a 5-level genotype
    generator = torch.Generator().manual_seed(0)
    beta, alpha = torch.rand(12, 5, 3, generator=generator), torch.rand(20, 8, generator=generator)  # weights
    found = decode(alpha, beta, num_blocks=5)
    assert found.num_levels == 5 and Genotype.from_json(found.to_json()) == found
