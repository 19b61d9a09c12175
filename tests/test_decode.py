"""Decoding: Viterbi equals brute force; the cell keeps the top-2 inputs and never picks `none`."""

import itertools
import json

import numpy as np
import pytest

from autodeeplab.errors import GenotypeError
from autodeeplab.ops.primitives import PRIMITIVES
from autodeeplab.space.autodeeplab.decode import (
    decode,
    decode_cell,
    load_arch_params,
    path_score,
    save_arch_params,
    viterbi_path,
)
from autodeeplab.space.autodeeplab.topology import beta_mask, edge_offset, num_edges


def random_beta(rng, layers, levels=4):
    """Normalised β with zeros on non-edges, like SearchNetwork.beta_weights()."""
    mask = beta_mask(layers, levels)
    logits = rng.normal(size=mask.shape) * 2
    w = np.where(mask, np.exp(logits), 0.0)
    sums = w.sum(axis=2, keepdims=True)
    return np.divide(w, sums, out=np.zeros_like(w), where=sums > 0)


def brute_force(beta):
    """Score every one of the 3^L step sequences from the stem (vectorised enumeration)."""
    layers, levels, _ = beta.shape
    steps = np.array(list(itertools.product((-1, 0, 1), repeat=layers)), dtype=np.int64)
    paths = np.cumsum(steps, axis=1)
    paths = paths[(paths.min(axis=1) >= 0) & (paths.max(axis=1) < levels)]
    previous = np.concatenate([np.zeros((len(paths), 1), dtype=np.int64), paths[:, :-1]], axis=1)
    weights = beta[np.arange(layers)[None, :], previous, paths - previous + 1]
    scores = weights.prod(axis=1)
    best = int(
        np.argmax(scores)
    )  # first maximum = lexicographically smallest path, like a tie to lower levels
    # a spot check that the vectorised scores agree with the plain definition
    assert scores[best] == pytest.approx(path_score(beta, paths[best]))
    return tuple(int(p) for p in paths[best]), float(scores[best])


@pytest.mark.parametrize("layers", [1, 2, 3, 5, 8])
def test_viterbi_equals_brute_force_small(layers):
    rng = np.random.default_rng(layers)
    for _ in range(20):
        beta = random_beta(rng, layers)
        path, best = brute_force(beta)
        assert viterbi_path(beta) == path
        assert path_score(beta, viterbi_path(beta)) == pytest.approx(best)


def test_viterbi_equals_brute_force_paper_depth():
    rng = np.random.default_rng(12)
    for _ in range(5):
        beta = random_beta(rng, 12)
        path, best = brute_force(beta)
        assert viterbi_path(beta) == path
        assert path_score(beta, path) == pytest.approx(best)


def test_viterbi_respects_structure():
    beta = random_beta(np.random.default_rng(0), 12)
    path = viterbi_path(beta)
    assert path[0] in (0, 1)
    assert all(abs(a - b) <= 1 for a, b in zip(path, path[1:], strict=False))


def test_cell_keeps_top2_and_never_none():
    rng = np.random.default_rng(0)
    blocks = 5
    for _ in range(50):
        logits = rng.normal(size=(num_edges(blocks), len(PRIMITIVES))) * 3
        logits[:, 0] += 5  # make `none` the strongest primitive everywhere
        alpha = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        cell = decode_cell(alpha, blocks)
        for block, pairs in enumerate(cell):
            rows = alpha[edge_offset(block) : edge_offset(block) + block + 2, 1:]
            strength = rows.max(axis=1)
            expected_inputs = sorted(np.argsort(-strength, kind="stable")[:2].tolist())
            assert sorted(i for _, i in pairs) == expected_inputs
            for op, i in pairs:
                assert op != "none"
                assert op == PRIMITIVES[1 + int(rows[i].argmax())]


def test_decode_hand_made_example():
    blocks = 2  # edges: block 0 <- {0, 1}; block 1 <- {0, 1, 2}
    alpha = np.full((num_edges(blocks), 8), 0.01)
    alpha[0, PRIMITIVES.index("sep_conv_3x3")] = 0.9
    alpha[1, PRIMITIVES.index("atr_conv_5x5")] = 0.5
    alpha[2, 0] = 0.99  # `none` strongest on edge 0->block1: must not count
    alpha[2, PRIMITIVES.index("skip_connect")] = 0.05
    alpha[3, PRIMITIVES.index("max_pool_3x3")] = 0.7
    alpha[4, PRIMITIVES.index("avg_pool_3x3")] = 0.6
    alpha /= alpha.sum(axis=1, keepdims=True)
    cell = decode_cell(alpha, blocks)
    assert cell == (
        (("sep_conv_3x3", 0), ("atr_conv_5x5", 1)),
        (("max_pool_3x3", 1), ("avg_pool_3x3", 2)),
    )


def test_arch_params_round_trip_and_decode(tmp_path):
    rng = np.random.default_rng(3)
    beta = random_beta(rng, 12)
    logits = rng.normal(size=(20, 8))
    alpha = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    path = tmp_path / "arch_params.json"
    save_arch_params(path, alpha, beta)
    data = json.loads(path.read_text())
    assert data["primitives"] == list(PRIMITIVES) and len(data["alpha"]) == 20
    assert np.array(data["beta"]).shape == (12, 4, 3)
    a2, b2, blocks = load_arch_params(path)
    assert blocks == 5 and np.allclose(a2, alpha, atol=1e-7) and np.allclose(b2, beta, atol=1e-7)
    g = decode(a2, b2, blocks)
    assert g.network_path == viterbi_path(beta)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d.update(version=3), "version: expected 1"),
        (lambda d: d.update(version=True), "version: expected 1, got True"),
        (lambda d: d.update(gamma=1), "unknown key 'gamma'"),
        (lambda d: d["alpha"].pop(), "19 edges is not B"),
        (lambda d: d["alpha"][0].__setitem__(0, 5.0), r"alpha\[0\]: weights do not sum to 1"),
        (lambda d: d["beta"][0][1].__setitem__(0, 0.5), r"beta\[0\]\[1\]\[0\]: non-zero weight on an edge"),
        (lambda d: d["beta"][3][2].__setitem__(1, 0.0), r"beta\[3\]\[2\]: outgoing weights do not sum to 1"),
    ],
)
def test_arch_params_rejections(tmp_path, mutate, message):
    rng = np.random.default_rng(0)
    beta = random_beta(rng, 12)
    alpha = np.full((20, 8), 1 / 8)
    path = tmp_path / "a.json"
    save_arch_params(path, alpha, beta)
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(GenotypeError, match=message):
        load_arch_params(path)
