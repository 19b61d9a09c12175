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
