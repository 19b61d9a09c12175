"""dints_arch.json: round trips, decoded chains are valid files, and each malformed file refused by field."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autodeeplab.errors import GenotypeError
from autodeeplab.space.dints.arch import OP_SETS, DintsArch
from autodeeplab.space.dints.decode import best_chain
from autodeeplab.space.dints.topology import Topology, pattern_log_probs

GOOD = {
    "version": 1,
    "kind": "dints",
    "op_set": "dints-3d",
    "depths": 3,
    "blocks": [
        [[0, 0, "conv_3x3x3"], [0, 1, "skip_connect"]],
        [[1, 1, "conv_1x3x3"], [0, 0, "conv_3x3x1"], [1, 2, "conv_3x1x3"]],
        [[2, 1, "skip_connect"], [0, 0, "conv_3x3x3"], [1, 1, "conv_3x3x3"]],
    ],
}


def test_round_trip_and_edge_order(tmp_path):
    arch = DintsArch.from_dict(GOOD)
    assert arch.blocks[1] == ((0, 0, "conv_3x3x1"), (1, 1, "conv_1x3x3"), (1, 2, "conv_3x1x3"))  # edge order
    assert arch.node_sets()[1] == ({0, 1}, {0, 1, 2})
    path = tmp_path / "dints_arch.json"
    arch.save(path)
    assert DintsArch.load(path) == arch
    assert json.loads(path.read_text())["blocks"][0] == [[0, 0, "conv_3x3x3"], [0, 1, "skip_connect"]]
    assert arch.short() == "dints 3x3 | 0>0 0>1 | 0>0 1>1 1>2 | 0>0 1>1 2>1"


@pytest.mark.parametrize(("depths", "op_set"), [(2, "dints-2d"), (3, "dints-3d"), (4, "dints-3d")])
def test_every_decoded_chain_is_a_valid_file(depths, op_set):
    topo = Topology(depths)
    generator = torch.Generator().manual_seed(depths)
    for _ in range(5):
        logits = torch.randn(6, topo.num_edges, generator=generator) * 2
        chain, _ = best_chain(pattern_log_probs(logits, topo).numpy(), topo)
        ops = np.random.default_rng(depths).integers(0, len(OP_SETS[op_set]), (6, topo.num_edges))
        arch = DintsArch.from_chain(chain, ops, topo, op_set)
        assert DintsArch.from_json(arch.to_json()) == arch and arch.num_blocks == 6
        for b, pattern in enumerate(chain):  # the file holds exactly the decoded edges and their ops
            on = [i for i in range(topo.num_edges) if topo.pattern_bits[pattern, i]]
            assert [e[:2] for e in arch.blocks[b]] == [topo.edges[i] for i in on]
            assert [e[2] for e in arch.blocks[b]] == [OP_SETS[op_set][ops[b][i]] for i in on]


def broken(**changes):
    data = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a JSON object"),
        (broken(extra=1), "unknown key 'extra'"),
        (broken(depths=None), "missing key 'depths'"),
        (broken(version=2), "version: expected 1"),
        (broken(kind="autodeeplab"), "kind: expected 'dints'"),
        (broken(op_set="dints-4d"), "op_set: unknown 'dints-4d'"),
        (broken(depths=0), "depths: expected an integer in 1..6"),
        (broken(blocks=[]), "blocks: expected a non-empty list"),
        (broken(blocks=[[]]), r"blocks\[0\]: expected a non-empty list"),
        (broken(blocks=[[[0, 0]]]), r"blocks\[0\]\[0\]: expected \[from depth, to depth, op\]"),
        (broken(blocks=[[[0, 2, "skip_connect"]]]), r"blocks\[0\]\[0\]: no edge from depth 0 to 2"),
        (broken(blocks=[[[0, 0, "conv_5x5x5"]]]), r"blocks\[0\]\[0\]: unknown op 'conv_5x5x5'"),
        (broken(blocks=[[[0, 0, "skip_connect"], [0, 0, "conv_3x3x3"]]]), "appears twice"),
        (
            broken(blocks=[[[0, 0, "skip_connect"]], [[1, 1, "skip_connect"]]]),
            r"blocks\[1\]: reads depths \[1\] that block 0 does not write; leaves depths \[0\]",
        ),
        (
            broken(blocks=[[[0, 0, "skip_connect"], [0, 1, "skip_connect"]], [[0, 0, "skip_connect"]]]),
            r"blocks\[1\]: leaves depths \[1\] of block 0 unused",
        ),
    ],
)
def test_each_malformed_file_is_named(data, message):
    with pytest.raises(GenotypeError, match=message):
        DintsArch.from_dict(data, "arch.json")


def test_unreadable_files(tmp_path):
    with pytest.raises(GenotypeError, match="no such architecture file"):
        DintsArch.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GenotypeError, match="bad.json: not valid JSON"):
        DintsArch.load(tmp_path / "bad.json")
