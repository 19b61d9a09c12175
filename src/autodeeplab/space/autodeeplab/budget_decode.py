"""Decoding an Auto-DeepLab search within its multiply-add budget: the network path by a Viterbi over
``log β - λ · multiply-adds``.

The budget term steers the *expected* multiply-adds under α and β; the decoded network (top-2 inputs per
block, the most probable path) can still cost more. The cell is decoded as always (paper §4.3); given the
cell, the found network's multiply-adds are a sum over the path's layers — cell ``i``'s preprocessing by
the levels ``(path[i-2], path[i-1], path[i])``, its ops by its level and whether it went down, the ASPP by
the last level, the decoder by whether a level-0 cell feeds it (:class:`~.budget.MacTables`) — so a
Viterbi over the states ``(previous level, level, level 0 seen)`` maximises ``Σ log β - λ · MACs``
exactly, and :func:`~autodeeplab.space.lagrangian.fit_by_lagrangian` finds the smallest ``λ`` whose path
fits. When the unconstrained path fits, it is the plain decode (:func:`~.decode.viterbi_path`,
its tie rules included).
"""

from __future__ import annotations

import numpy as np

from autodeeplab.ops.primitives import PRIMITIVES
from autodeeplab.space.autodeeplab.budget import LOW_LEVEL_LAYERS, MacTables, decoded_multiply_adds
from autodeeplab.space.autodeeplab.decode import decode_cell, viterbi_path
from autodeeplab.space.autodeeplab.genotype import Genotype
from autodeeplab.space.lagrangian import fit_by_lagrangian


def cell_costs(cell: tuple, tables: MacTables) -> np.ndarray:
    """``[levels, 2]``: the multiply-adds of ``cell``'s kept ops at each level, in a cell that kept its level
    or went up (0) and in one that went down a level (1: its ops on the two cell inputs are strided)."""
    op = tables.op.double().cpu().numpy()  # [levels, 2, P]
    index = {name: k for k, name in enumerate(PRIMITIVES)}
    costs = np.zeros((op.shape[0], 2))
    for block in cell:
        for name, source in block:
            costs[:, 0] += op[:, 0, index[name]]
            costs[:, 1] += op[:, int(source < 2), index[name]]
    return costs


def path_with_cost(
    beta: np.ndarray, cell: tuple, tables: MacTables, lam: float
) -> tuple[tuple[int, ...], float]:
    """The path maximising ``Σ log β - lam · MACs`` given ``cell`` (``beta [L, levels, 3]``), and its
    multiply-adds. Ties go to the first state in (previous level, level, seen) order."""
    num_layers, levels, _ = beta.shape
    with np.errstate(divide="ignore"):
        log_beta = np.log(np.asarray(beta, dtype=np.float64))
    pre = tables.pre.double().cpu().numpy()  # [L, levels, levels, levels]
    ops = cell_costs(cell, tables)
    aspp, decoder = tables.aspp.double().cpu().numpy(), tables.decoder.double().cpu().numpy()
    # score[a, b, f]: the best of layers 0..i with path[i-1] = a, path[i] = b, f = a level-0 cell among the
    # first LOW_LEVEL_LAYERS; the stem stands for layers -2 and -1 at level 0.
    score = np.full((levels, levels, 2), -np.inf)
    score[0, 0, 0] = 0.0
    back: list[np.ndarray] = []
    for i in range(num_layers):
        new = np.full((levels, levels, 2), -np.inf)
        came = np.zeros((levels, levels, 2, 3), dtype=np.int64)
        for a in range(levels):
            for b in range(levels):
                for f in range(2):
                    if not np.isfinite(score[a, b, f]):
                        continue
                    for c in (b - 1, b, b + 1):
                        if not 0 <= c < levels or not np.isfinite(log_beta[i, b, c - b + 1]):
                            continue
                        macs = pre[i, a, b, c] + ops[c, int(c > b)]
                        g = int(f or (c == 0 and i < LOW_LEVEL_LAYERS))
                        value = score[a, b, f] + log_beta[i, b, c - b + 1] - lam * macs
                        if value > new[b, c, g]:
                            new[b, c, g], came[b, c, g] = value, (a, b, f)
        score = new
        back.append(came)
    ends = score + (-lam * (aspp[None, :, None] + decoder[None, None, :]))
    if not np.isfinite(ends).any():
        raise ValueError("beta: no path with non-zero weight from the stem to the last layer")
    state = tuple(int(v) for v in np.unravel_index(int(np.argmax(ends)), ends.shape))
    path = []
    for i in range(num_layers - 1, -1, -1):
        path.append(state[1])
        state = tuple(int(v) for v in back[i][state])
    path_tuple = tuple(reversed(path))
    return path_tuple, decoded_multiply_adds(Genotype(network_path=path_tuple, cell=cell), tables)


def decode_within_budget(
    alpha: np.ndarray, beta: np.ndarray, num_blocks: int, tables: MacTables, target: float
) -> Genotype:
    """The genotype of α ``[E, P]`` and β ``[L, levels, 3]`` whose found network costs at most ``target``
    multiply-adds, when some path does (else the cheapest path): cell as always, path by the Lagrangian
    Viterbi (module docstring)."""
    cell = decode_cell(alpha, num_blocks)
    beta = np.asarray(beta, dtype=np.float64)

    def solve(lam: float) -> tuple[tuple[int, ...], float]:
        if lam == 0.0:  # the plain decode and its tie rules
            path = viterbi_path(beta)
            return path, decoded_multiply_adds(Genotype(network_path=path, cell=cell), tables)
        return path_with_cost(beta, cell, tables, lam)

    # The first λ weighs the target like the log β of a whole path.
    path, _ = fit_by_lagrangian(solve, target, beta.shape[0] / target)
    genotype = Genotype(network_path=path, cell=cell, num_levels=beta.shape[1])
    return Genotype.from_dict(genotype.to_dict(), "decoded genotype", num_levels=beta.shape[1])


RECORD_KEY = "multiply_add_budget"
"""The key of ``arch_params.json`` that holds the budget a search decoded within (target and tables)."""


def budget_record(tables: MacTables, target: float) -> dict:
    """The ``arch_params.json`` entry that lets ``autodeeplab decode`` decode within the same budget."""
    return {
        "target": float(target),
        "stem": float(tables.stem),
        "op": tables.op.tolist(),
        "pre": tables.pre.tolist(),
        "aspp": tables.aspp.tolist(),
        "decoder": tables.decoder.tolist(),
    }


def budget_from_record(
    record: dict, beta_shape: tuple[int, ...], source: str
) -> tuple[MacTables, float] | None:
    """``(tables, target)`` of a record's :data:`RECORD_KEY` (None without one), checked against β's
    ``[L, levels, 3]``; a malformed entry is a :class:`GenotypeError` naming the field."""
    import torch

    from autodeeplab.errors import GenotypeError

    entry = record.get(RECORD_KEY)
    if entry is None:
        return None
    layers, levels = beta_shape[0], beta_shape[1]
    shapes = {"op": (levels, 2, len(PRIMITIVES)), "pre": (layers, levels, levels, levels), "aspp": (levels,)}
    shapes["decoder"] = (2,)
    where = f"{source}: {RECORD_KEY}"
    if not isinstance(entry, dict):
        raise GenotypeError(f"{where}: expected an object with target, stem, op, pre, aspp, decoder")
    arrays = {}
    for key, shape in shapes.items():
        try:
            arrays[key] = torch.tensor(entry[key], dtype=torch.float64)
        except (KeyError, TypeError, ValueError, OverflowError, RuntimeError):  # Overflow: int beyond float64
            raise GenotypeError(f"{where}.{key}: expected an array of numbers {list(shape)}") from None
        if tuple(arrays[key].shape) != shape or not torch.isfinite(arrays[key]).all():
            raise GenotypeError(f"{where}.{key}: expected finite numbers of shape {list(shape)}")
    for key in ("target", "stem"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise GenotypeError(f"{where}.{key}: expected a positive number, got {value!r}")
    tables = MacTables(float(entry["stem"]), arrays["op"], arrays["pre"], arrays["aspp"], arrays["decoder"])
    return tables, float(entry["target"])
