"""How much the architectures found by several search runs agree (e.g. PC-DARTS K=1, 2, 4 at one seed).

    python benchmarks/compare_genotypes.py /tmp/h5/pc1 /tmp/h5/pc2 /tmp/h5/pc4

Reads each run directory's ``genotype.json`` and ``arch_params.json`` and prints, against the first run:
the cell's (primitive, input) pairs in common (of 2·B), the blocks whose two inputs are the same, the
layers whose path level is the same (of L), and the Pearson correlation of the softmax α (all E×P
entries); plus each run's smallest margin, over the edges, between the softmax weights of its strongest
and second-strongest primitive other than ``none``: how firmly the ops are determined.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def load(run: Path) -> tuple[dict, np.ndarray]:
    """The genotype and the softmax α ``[E, P-1]`` without the ``none`` column (never decoded)."""
    genotype = json.loads((run / "genotype.json").read_text(encoding="utf-8"))
    params = json.loads((run / "arch_params.json").read_text(encoding="utf-8"))
    alpha = np.asarray(params["alpha"])
    return genotype, np.delete(alpha, params["primitives"].index("none"), axis=1)


def agreement(a: dict, b: dict) -> dict:
    """Counts of what two genotypes share (cells: per block, order-free)."""
    pairs = sum(
        len({tuple(p) for p in x} & {tuple(p) for p in y}) for x, y in zip(a["cell"], b["cell"], strict=True)
    )
    inputs = sum(
        sorted(p[1] for p in x) == sorted(p[1] for p in y) for x, y in zip(a["cell"], b["cell"], strict=True)
    )
    path = sum(int(x == y) for x, y in zip(a["network_path"], b["network_path"], strict=True))
    return {
        "pairs": f"{pairs}/{2 * len(a['cell'])}",
        "inputs": f"{inputs}/{len(a['cell'])}",
        "path": f"{path}/{len(a['network_path'])}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", type=Path, nargs="+", help="search run directories (the first is the baseline)"
    )
    args = parser.parse_args(argv)
    loaded = [load(run) for run in args.runs]
    base_genotype, base_alpha = loaded[0]
    for run, (genotype, alpha) in zip(args.runs, loaded, strict=True):
        shared = agreement(base_genotype, genotype)
        corr = float(np.corrcoef(base_alpha.ravel(), alpha.ravel())[0, 1])
        top = np.sort(alpha, axis=1)
        margin = float((top[:, -1] - top[:, -2]).min())
        print(
            f"{run}: path {'-'.join(map(str, genotype['network_path']))}; cell "
            + " ".join("+".join(f"{op}({i})" for op, i in block) for block in genotype["cell"])
        )
        print(
            f"    vs {args.runs[0]}: cell pairs {shared['pairs']}, block inputs {shared['inputs']}, "
            f"path levels {shared['path']}, alpha correlation {corr:.2f}; "
            f"smallest top-2 op margin {margin:.1e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
