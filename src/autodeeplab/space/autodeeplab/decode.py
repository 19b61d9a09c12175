"""Decoding (paper §4.3): α → cell, β → network path, and the ``arch_params.json`` file format.

Pure functions on arrays; no torch modules. ``arch_params.json`` (version 1)::

    {"version": 1, "primitives": [8 names in PRIMITIVES order],
     "alpha": [[p_0 .. p_7] x E edges],          # softmax weights per edge
     "beta": [L x [levels x [3 weights]]]}       # beta[l][s]: normalised weights of the edges leaving
                                                 # level s at layer l towards s-1, s, s+1 (0 where absent)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autodeeplab.errors import GenotypeError
from autodeeplab.fileio import loads_json
from autodeeplab.ops.primitives import PRIMITIVES
from autodeeplab.space.autodeeplab.genotype import Genotype
from autodeeplab.space.autodeeplab.topology import beta_mask, edge_offset, num_edges

ARCH_PARAMS_VERSION = 1
ROW_SUM_TOLERANCE = 1e-4


def decode_cell(alpha: np.ndarray, num_blocks: int, primitives: Sequence[str] = PRIMITIVES) -> tuple:
    """α weights ``[E, P]`` → the cell: per block, the two strongest incoming edges.

    The strength of an edge is its largest weight among the non-``none`` primitives, and its op the
    argmax among them (so ``none`` is never chosen). Ties go to the lower input index. Each block's
    pairs are listed strongest first.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.shape != (num_edges(num_blocks), len(primitives)):
        raise GenotypeError(
            f"alpha: expected shape [{num_edges(num_blocks)}, {len(primitives)}], got {list(alpha.shape)}"
        )
    candidates = [i for i, name in enumerate(primitives) if name != "none"]
    cell = []
    for block in range(num_blocks):
        rows = alpha[edge_offset(block) : edge_offset(block) + block + 2][:, candidates]
        strength = rows.max(axis=1)
        order = sorted(range(block + 2), key=lambda j: (-strength[j], j))[:2]
        cell.append(tuple((primitives[candidates[int(rows[j].argmax())]], j) for j in order))
    return tuple(cell)


def viterbi_path(beta: np.ndarray) -> tuple[int, ...]:
    """β weights ``[L, levels, 3]`` → the levels of layers 1..L on the path of largest product.

    The path starts at the stem (layer 0, level 0) and may end at any level; edges with weight 0 do
    not exist. Works in log space. Ties go to the lower level, from the end backwards: the lowest last
    level among the best paths, then the lowest level before it among the best paths ending there, and so on.
    """
    beta = np.asarray(beta, dtype=np.float64)
    num_layers, num_levels, _ = beta.shape
    with np.errstate(divide="ignore"):
        log_beta = np.log(beta)
    score = np.full(num_levels, -np.inf)
    score[0] = 0.0
    back = np.zeros((num_layers, num_levels), dtype=np.int64)
    for layer in range(num_layers):
        new = np.full(num_levels, -np.inf)
        for target in range(num_levels):
            for source in (target - 1, target, target + 1):  # lower source level wins a tie
                if not 0 <= source < num_levels:
                    continue
                cand = score[source] + log_beta[layer, source, target - source + 1]
                if cand > new[target]:
                    new[target], back[layer, target] = cand, source
        score = new
    if not np.isfinite(score).any():
        raise GenotypeError("beta: no path with non-zero weight from the stem to the last layer")
    level = int(np.argmax(score))
    path = [level]
    for layer in range(num_layers - 1, 0, -1):
        level = int(back[layer, level])
        path.append(level)
    return tuple(reversed(path))


def path_score(beta: np.ndarray, path: Sequence[int]) -> float:
    """Product of the β weights along ``path`` (levels of layers 1..L), starting at the stem's level 0."""
    beta = np.asarray(beta, dtype=np.float64)
    score, level = 1.0, 0
    for layer, target in enumerate(path):
        d = target - level + 1
        score *= beta[layer, level, d] if 0 <= d <= 2 else 0.0
        level = target
    return float(score)


def decode(alpha: np.ndarray, beta: np.ndarray, num_blocks: int) -> Genotype:
    """α weights ``[E, P]`` and β weights ``[L, levels, 3]`` → a validated :class:`Genotype`."""
    levels = np.shape(beta)[1]
    genotype = Genotype(viterbi_path(beta), decode_cell(alpha, num_blocks), levels)
    return Genotype.from_dict(genotype.to_dict(), "decoded genotype", num_levels=levels)


# -- arch_params.json ---------------------------------------------------------------------------------
def arch_params_to_dict(alpha: np.ndarray, beta: np.ndarray) -> dict[str, Any]:
    """Softmax α ``[E, P]`` and normalised β ``[L, levels, 3]`` → the ``arch_params.json`` object."""
    return {
        "version": ARCH_PARAMS_VERSION,
        "primitives": list(PRIMITIVES),
        "alpha": np.asarray(alpha, dtype=np.float64).round(8).tolist(),
        "beta": np.asarray(beta, dtype=np.float64).round(8).tolist(),
    }


def load_arch_params(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Read and validate ``arch_params.json`` → ``(alpha [E, P], beta [L, levels, 3], num_blocks)``."""
    path = Path(path)
    try:
        data = loads_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GenotypeError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GenotypeError(f"{path}: not a readable JSON file ({exc})") from None
    return validate_arch_params(data, str(path))


def validate_arch_params(data: Any, source: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Check an ``arch_params.json`` object; errors name ``source`` and the field."""
    if not isinstance(data, dict):
        raise GenotypeError(f"{source}: expected a JSON object")
    unknown = sorted(set(data) - {"version", "primitives", "alpha", "beta", "multiply_add_budget"})
    if unknown:
        raise GenotypeError(
            f"{source}: unknown key {unknown[0]!r} (allowed: version, primitives, alpha, beta, "
            "multiply_add_budget)"
        )
    for key in ("version", "primitives", "alpha", "beta"):
        if key not in data:
            raise GenotypeError(f"{source}: missing key {key!r}")
    if type(data["version"]) is not int or data["version"] != ARCH_PARAMS_VERSION:  # true == 1 in Python
        raise GenotypeError(f"{source}: version: expected {ARCH_PARAMS_VERSION}, got {data['version']!r}")
    if not isinstance(data["primitives"], list) or data["primitives"] != list(PRIMITIVES):
        raise GenotypeError(f"{source}: primitives: expected {list(PRIMITIVES)}")
    try:
        alpha = np.asarray(data["alpha"], dtype=np.float64)
        beta = np.asarray(data["beta"], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond any float
        raise GenotypeError(f"{source}: alpha/beta must be rectangular arrays of numbers") from None
    if alpha.ndim != 2 or alpha.shape[1] != len(PRIMITIVES):
        raise GenotypeError(f"{source}: alpha: expected [edges x {len(PRIMITIVES)}], got {list(alpha.shape)}")
    num_blocks = _blocks_from_edges(alpha.shape[0])
    if num_blocks is None:
        raise GenotypeError(f"{source}: alpha: {alpha.shape[0]} edges is not B(B+3)/2 for any block count B")
    if beta.ndim != 3 or beta.shape[2] != 3:
        raise GenotypeError(f"{source}: beta: expected [layers x levels x 3], got {list(beta.shape)}")
    if not (np.isfinite(alpha).all() and np.isfinite(beta).all()) or (alpha < 0).any() or (beta < 0).any():
        raise GenotypeError(f"{source}: alpha/beta must hold finite non-negative weights")
    bad_alpha = np.abs(alpha.sum(axis=1) - 1) > ROW_SUM_TOLERANCE
    if bad_alpha.any():
        raise GenotypeError(f"{source}: alpha[{int(np.argmax(bad_alpha))}]: weights do not sum to 1")
    mask = beta_mask(beta.shape[0], beta.shape[1])
    if (beta[~mask] != 0).any():
        layer, level, d = (int(i) for i in np.argwhere((beta != 0) & ~mask)[0])
        raise GenotypeError(
            f"{source}: beta[{layer}][{level}][{d}]: non-zero weight on an edge that does not exist"
        )
    rows = mask.any(axis=2)
    bad_beta = rows & (np.abs(beta.sum(axis=2) - 1) > ROW_SUM_TOLERANCE)
    if bad_beta.any():
        layer, level = (int(i) for i in np.argwhere(bad_beta)[0])
        raise GenotypeError(f"{source}: beta[{layer}][{level}]: outgoing weights do not sum to 1")
    return alpha, beta, num_blocks


def _blocks_from_edges(edges: int) -> int | None:
    for blocks in range(1, 64):
        if num_edges(blocks) == edges:
            return blocks
    return None
