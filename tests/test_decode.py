"""Decoding against brute force: Viterbi's path (continuous β, exact ties, zero-weight edges) and the cell
(top-2 inputs, never `none`, strongest first, ties to the lower index); the arch_params.json format."""

import itertools
import json

import numpy as np
import pytest

from autodeeplab.errors import GenotypeError
from autodeeplab.ops.primitives import PRIMITIVES
from autodeeplab.space.autodeeplab.decode import (
    arch_params_to_dict,
    decode,
    decode_cell,
    load_arch_params,
    path_score,
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


def discrete_beta(rng, layers, levels=4, zero_fraction=0.0):
    """β with every edge weight in {1, e^-1, e^-2} (0 with probability ``zero_fraction``): many paths tie
    exactly, because the logs are small integers, whose sums are exact in any order."""
    mask = beta_mask(layers, levels)
    w = np.exp(-rng.integers(0, 3, size=mask.shape).astype(np.float64))
    w[rng.random(mask.shape) < zero_fraction] = 0.0
    logs = np.log(w[w > 0])
    assert np.array_equal(logs, np.round(logs))  # integer logs, so that ties are exact
    return np.where(mask, w, 0.0)


def every_path(layers, levels):
    """``[P, L]``: every path of the trellis (levels of layers 1..L) from the stem's level 0, one level per
    step at most, in lexicographic order."""
    paths = np.zeros((1, 0), dtype=np.int64)
    for _ in range(layers):
        last = paths[:, -1:] if paths.shape[1] else np.zeros((1, 1), dtype=np.int64)
        grown = [np.concatenate([paths, last + step], axis=1) for step in (-1, 0, 1)]
        paths = np.concatenate(grown)
        paths = paths[(paths[:, -1] >= 0) & (paths[:, -1] < levels)]
    return paths[np.lexsort(paths.T[::-1])]


def path_log_scores(beta, paths):
    """Σ log β along each path from the stem, added layer by layer as Viterbi adds them (-inf through a
    zero weight)."""
    layers = beta.shape[0]
    previous = np.concatenate([np.zeros((len(paths), 1), dtype=np.int64), paths[:, :-1]], axis=1)
    weights = beta[np.arange(layers)[None, :], previous, paths - previous + 1]
    with np.errstate(divide="ignore"):
        return np.cumsum(np.log(weights), axis=1)[:, -1]


def brute_force(beta):
    """The path Viterbi must return, by scoring every path → ``(path or None, log score, paths tied)``.

    The objective of ``viterbi_path``: the largest product of β (sum of logs). Among exact ties, the
    documented rule: the lowest level at the last layer, then at the layer before, and so on. ``None``
    when every path has a zero weight.
    """
    layers, levels, _ = beta.shape
    paths = every_path(layers, levels)
    scores = path_log_scores(beta, paths)
    best = scores.max()
    if best == -np.inf:
        return None, float(best), len(paths)
    tied = paths[scores == best]
    path = tied[np.lexsort(tied.T)[0]]  # lexsort's primary key is the last row of tied.T: the last layer
    # the plain definition of the product agrees with the vectorised scores
    assert path_score(beta, path) == pytest.approx(np.exp(best), rel=1e-9)
    return tuple(int(p) for p in path), float(best), len(tied)


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 5, 6, 8])
def test_viterbi_equals_brute_force_small(layers):
    """Continuous random β: Viterbi's path is the best of all paths, and its product the best product."""
    rng = np.random.default_rng(layers)
    for _ in range(20):
        beta = random_beta(rng, layers)
        path, best, _ = brute_force(beta)
        assert viterbi_path(beta) == path
        assert path_score(beta, viterbi_path(beta)) == pytest.approx(np.exp(best))


def test_viterbi_equals_brute_force_paper_depth():
    """The same at the paper's depth (L = 12, 4 levels)."""
    rng = np.random.default_rng(12)
    for _ in range(3):
        beta = random_beta(rng, 12)
        path, best, _ = brute_force(beta)
        assert viterbi_path(beta) == path
        assert path_score(beta, path) == pytest.approx(np.exp(best))


@pytest.mark.parametrize("layers", [4, 5, 6])
def test_viterbi_exact_ties_equal_brute_force(layers):
    """β with many exact ties: Viterbi returns the brute-force path under the documented tie rule (lowest
    level at the last layer, then backwards), the same on every call and memory layout. The cases include
    ties the rule decides, and ties where "first from the stem" would pick another path."""
    rng = np.random.default_rng(100 + layers)
    paths = every_path(layers, 4)
    decided_by_rule = other_rule_differs = 0
    for _ in range(60):
        beta = discrete_beta(rng, layers)
        path, best, tied = brute_force(beta)
        got = viterbi_path(beta)
        assert got == path and viterbi_path(beta) == got and viterbi_path(np.asfortranarray(beta)) == got
        assert path_score(beta, got) == pytest.approx(np.exp(best), rel=1e-12)
        if tied > 1:
            decided_by_rule += 1
            first_from_stem = paths[path_log_scores(beta, paths) == best][0]
            other_rule_differs += tuple(int(p) for p in first_from_stem) != path
    assert decided_by_rule >= 20 and other_rule_differs >= 5


def test_viterbi_tie_rule_by_hand():
    """Two layers where (0, 1) and (1, 0) tie for the best product: the lower level at the last layer wins,
    (1, 0). With every weight equal all paths tie, and the path stays at level 0."""
    beta = np.zeros((2, 4, 3))
    beta[0, 0] = [0, 1, 1]  # stem → level 0 or 1
    beta[1, 0] = [0, np.exp(-1), 1]  # level 0 → 0 (weak) or 1
    beta[1, 1] = [1, np.exp(-1), np.exp(-1)]  # level 1 → 0, or (weak) 1 or 2
    assert path_score(beta, (0, 1)) == path_score(beta, (1, 0)) == 1.0
    assert viterbi_path(beta) == (1, 0) == brute_force(beta)[0]
    uniform = beta_mask(5, 4).astype(np.float64)
    assert viterbi_path(uniform) == (0, 0, 0, 0, 0) == brute_force(uniform)[0]


def test_viterbi_avoids_zero_weight_edges():
    """An edge of weight exactly 0 does not exist: a path through it is never returned while one of
    positive weight exists, even when the rest of the zero path is far stronger; none at all is an error."""
    beta = random_beta(np.random.default_rng(5), 5)
    beta[0, 0] = [0, 0.001, 0.999]  # the stem strongly prefers level 1 ...
    beta[1, 1] = [0, 0, 0]  # ... from which nothing leaves
    path = viterbi_path(beta)
    assert path[0] == 0 and path_score(beta, path) > 0
    assert path == brute_force(beta)[0]
    beta[4] = 0  # no edge into the last layer
    with pytest.raises(GenotypeError, match="no path with non-zero weight"):
        viterbi_path(beta)


@pytest.mark.parametrize("layers", [4, 5, 6])
def test_viterbi_with_zero_edges_equals_brute_force(layers):
    """Random zero-weight edges (and exact ties): the brute-force path, of positive weight; an error exactly
    when brute force finds no path of positive weight. Both cases occur."""
    rng = np.random.default_rng(200 + layers)
    positive = impossible = 0
    for _ in range(60):
        beta = discrete_beta(rng, layers, zero_fraction=0.45)
        path, _, _ = brute_force(beta)
        if path is None:
            impossible += 1
            with pytest.raises(GenotypeError, match="no path with non-zero weight"):
                viterbi_path(beta)
        else:
            positive += 1
            assert viterbi_path(beta) == path and path_score(beta, path) > 0
    assert positive >= 10 and impossible >= 3


def test_viterbi_respects_structure():
    """A returned path starts at level 0 or 1 (the stem is level 0) and moves one level at most."""
    beta = random_beta(np.random.default_rng(0), 12)
    path = viterbi_path(beta)
    assert path[0] in (0, 1)
    assert all(abs(a - b) <= 1 for a, b in zip(path, path[1:], strict=False))


def brute_force_cell(alpha, blocks):
    """The cell ``decode_cell`` must return, by enumeration. Each input's op maximises (weight, earlier
    primitive) over the primitives other than ``none``; a block's ordered pair of inputs (a, b), a ≠ b,
    maximises (strength of a, lower a, strength of b, lower b) over every ordered pair."""
    cell = []
    for block in range(blocks):
        rows = alpha[edge_offset(block) : edge_offset(block) + block + 2]
        ops, strength = [], []
        for row in rows:
            weight, minus_p = max((row[p], -p) for p, name in enumerate(PRIMITIVES) if name != "none")
            ops.append(PRIMITIVES[-minus_p])
            strength.append(weight)
        pairs = itertools.permutations(range(block + 2), 2)
        a, b = max(pairs, key=lambda ab: (strength[ab[0]], -ab[0], strength[ab[1]], -ab[1]))
        cell.append(((ops[a], a), (ops[b], b)))
    return tuple(cell)


def test_cell_equals_brute_force_with_dominant_none():
    """Continuous α where `none` has the largest weight on every edge: it is never chosen, the next op
    counts, and the cell equals the brute-force one."""
    rng = np.random.default_rng(0)
    blocks = 5
    for _ in range(50):
        logits = rng.normal(size=(num_edges(blocks), len(PRIMITIVES))) * 3
        logits[:, 0] = logits[:, 1:].max(axis=1) + rng.exponential(size=len(logits))  # `none` strongest
        alpha = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        assert (alpha.argmax(axis=1) == 0).all()
        cell = decode_cell(alpha, blocks)
        assert cell == brute_force_cell(alpha, blocks)
        assert all(op != "none" for pairs in cell for op, _ in pairs)


@pytest.mark.parametrize("blocks", [1, 2, 3, 5])
def test_cell_exact_ties_equal_brute_force(blocks):
    """α rows that are permutations of one weight vector with repeated values: exact ties between the ops of
    an edge and between the strengths of inputs, and `none` often the largest. The cell equals the
    brute-force one, and the cases include ties that decide which input is taken."""
    rng = np.random.default_rng(blocks)
    weights = np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05, 0.0])
    ties_deciding_inputs = 0
    for _ in range(100):
        alpha = np.stack([rng.permutation(weights) for _ in range(num_edges(blocks))])
        assert decode_cell(alpha, blocks) == brute_force_cell(alpha, blocks)
        for block in range(1, blocks):  # block 0 has two inputs: both are always taken
            strength = np.sort(alpha[edge_offset(block) : edge_offset(block) + block + 2, 1:].max(axis=1))
            ties_deciding_inputs += bool(strength[-2] == strength[-3])
    assert blocks == 1 or ties_deciding_inputs >= 10


def test_cell_ties_by_hand():
    """Hand-made ties: equal inputs are listed in index order; equal ops on an edge give the earlier
    primitive; an edge with weight on `none` only has strength 0 and loses to any positive edge."""
    blocks = 2  # edges: block 0 <- {0, 1}; block 1 <- {0, 1, 2}
    alpha = np.full((num_edges(blocks), 8), 0.125)  # block 0: every op of both inputs tied
    alpha[2:] = 0.0
    alpha[2, 0] = 1.0  # block 1, input 0: only `none`
    alpha[3, [PRIMITIVES.index("atr_conv_3x3"), PRIMITIVES.index("sep_conv_5x5")]] = 0.5  # two ops tie
    alpha[4, PRIMITIVES.index("skip_connect")] = 0.5  # input 2 ties with input 1
    alpha[4, 0] = 0.5
    cell = decode_cell(alpha, blocks)
    assert cell == (
        (("max_pool_3x3", 0), ("max_pool_3x3", 1)),
        (("sep_conv_5x5", 1), ("skip_connect", 2)),
    )
    assert cell == brute_force_cell(alpha, blocks)


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
    path.write_text(json.dumps(arch_params_to_dict(alpha, beta)) + "\n")
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
    path.write_text(json.dumps(arch_params_to_dict(alpha, beta)) + "\n")
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(GenotypeError, match=message):
        load_arch_params(path)
