"""The study's report: scores per member and group, the relative improvement of searched over random, the
per-seed pairs, how much the searches agree, and their validation curves (``report.md``, ``report.json``,
``search_curves.png`` in the study folder).

- score of a member at a budget: the mean test mIoU (volumes: mean foreground Dice) over its retraining
  seeds;
- groups: mean ± sample standard deviation (n - 1) over members;
- RI = 100 · (searched − random) / random (Yang et al., ICLR 2020), per budget;
- pairs: search seed i against random member i (Sciuto et al., ICLR 2020), the difference per pair;
- Kendall τ-b between each architecture's validation score with the weights inherited from search-0's
  supernet (:mod:`autodeeplab.study.inherited`) and its score after retraining: does the supernet rank
  architectures at all;
- agreement: at each position (a layer of the path; an input slot of a block: its op and its input), the
  share of the searched architectures that make the most common choice, averaged over positions (1: all the
  same; 1/n at worst).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autodeeplab.errors import ConfigError
from autodeeplab.fileio import atomic_write_text, parse_json_document, read_document
from autodeeplab.runs.rundir import read_jsonl
from autodeeplab.space.architectures import load_architecture, run_architecture_file
from autodeeplab.space.autodeeplab.genotype import Genotype
from autodeeplab.study.inherited import kendall_tau
from autodeeplab.study.members import INHERITED_FILE, StudyPlan, group_of, read_plan, training_name
from autodeeplab.viz.common import new_figure, save_png

GROUPS = ("searched", "random", "paper")


def member_scores(out: Path, plan: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{member: {budget: mean mIoU over the retraining seeds}}`` for every finished budget."""
    scores: dict[str, dict[str, float]] = {}
    for member in StudyPlan(**plan).members():
        for budget in plan["budgets"]:
            values = []
            for seed in plan["retrain_seeds"]:
                path = out / member / training_name(budget, seed) / "eval.json"
                if path.exists():
                    values.append(score_of(_read_json(path), path))
            if values and len(values) == len(plan["retrain_seeds"]):
                scores.setdefault(member, {})[f"{budget:g}"] = sum(values) / len(values)
    return scores


def score_of(result: Any, path: Path | str = "eval.json") -> float:
    """The score of an eval.json: mIoU for images, the mean foreground Dice for volumes (a file without
    either number is a one-line :class:`ConfigError` naming ``path``)."""
    value = result.get("mean_dice", result.get("miou")) if isinstance(result, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}: not an evaluation of the study (no number 'miou' or 'mean_dice')")
    return float(value)


def _read_json(path: Path) -> Any:
    """A JSON file of the study folder; unreadable or not JSON: a one-line :class:`ConfigError`."""
    return parse_json_document(read_document(path, "study JSON", ConfigError), str(path), ConfigError)


def group_stats(values: list[float]) -> dict[str, float | int]:
    """``n``, ``mean`` and the sample standard deviation ``std`` (0 for one value)."""
    if not values:
        return {"n": 0, "mean": math.nan, "std": math.nan}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"n": len(values), "mean": statistics.fmean(values), "std": std}


def agreement(genotypes: list[Genotype]) -> dict[str, float]:
    """The share of architectures making the most common choice, averaged over the path's layers and over
    the cell's input slots (op with its input), and both together."""
    if not genotypes:
        return {"path": math.nan, "cell": math.nan}

    def share(choices: list) -> float:
        return Counter(choices).most_common(1)[0][1] / len(choices)

    layers = len(genotypes[0].network_path)
    path = [share([g.network_path[i] for g in genotypes]) for i in range(layers)]
    slots = [(b, j) for b, block in enumerate(genotypes[0].cell) for j in range(len(block))]
    cell = [share([tuple(g.cell[b][j]) for g in genotypes]) for b, j in slots]
    return {"path": statistics.fmean(path), "cell": statistics.fmean(cell)}


def build_report(out: Path) -> dict[str, Any]:
    """Collect the figures of a study folder (any part may still be missing)."""
    plan = asdict(read_plan(out))
    scores = member_scores(out, plan)
    path = out / INHERITED_FILE
    inherited = _read_json(path) if path.exists() else {}
    if not isinstance(inherited, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    budgets: dict[str, Any] = {}
    for budget in (f"{b:g}" for b in plan["budgets"]):
        groups = {
            g: group_stats([s[budget] for m, s in scores.items() if group_of(m) == g and budget in s])
            for g in GROUPS
        }
        searched, random = groups["searched"]["mean"], groups["random"]["mean"]
        ri = 100 * (searched - random) / random if groups["random"]["n"] and random else math.nan
        pairs = []
        for i in range(min(plan["seeds"], plan["random"])):
            a, b = scores.get(f"search-{i}", {}).get(budget), scores.get(f"random-{i}", {}).get(budget)
            if a is not None and b is not None:
                pairs.append({"seed": i, "searched": a, "random": b, "difference": a - b})
        both = [m for m in inherited if budget in scores.get(m, {})]
        tau = kendall_tau([inherited[m] for m in both], [scores[m][budget] for m in both])
        budgets[budget] = {
            "groups": groups,
            "relative_improvement": ri,
            "pairs": pairs,
            "kendall_tau": {"tau": tau, "architectures": len(both)},
        }
    found = [
        load_architecture(path)
        for s in range(plan["seeds"])
        if (path := run_architecture_file(out / f"search-{s}" / "search")) is not None
    ]
    found = [g for g in found if isinstance(g, Genotype)]  # agreement per position: Auto-DeepLab's
    return {
        "plan": plan,
        "scores": scores,
        "inherited": inherited,
        "budgets": budgets,
        "agreement": agreement(found),
    }


def _pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown page."""
    plan = report["plan"]
    lines = [
        "# Study: searched against random architectures",
        "",
        f"{plan['seeds']} searches, {plan['random']} random architectures"
        + (", the paper's genotype" if plan["paper"] else "")
        + f"; retraining seeds {plan['retrain_seeds']}; budgets ×{plan['budgets']} of the training "
        f"iterations; scores: {plan['eval_split']} mIoU (%; volumes: mean foreground Dice), the mean over "
        "the retraining seeds.",
        "",
        "| member | " + " | ".join(f"×{b:g}" for b in plan["budgets"]) + " |",
        "|---|" + "---|" * len(plan["budgets"]),
    ]
    for member, by_budget in report["scores"].items():
        lines.append(
            f"| {member} | " + " | ".join(_pct(by_budget.get(f"{b:g}")) for b in plan["budgets"]) + " |"
        )
    for budget, figures in report["budgets"].items():
        lines += ["", f"## Budget ×{budget}", "", "| group | n | mean | std |", "|---|---|---|---|"]
        for g, st in figures["groups"].items():
            lines.append(f"| {g} | {st['n']} | {_pct(st['mean'])} | {_pct(st['std'])} |")
        ri = figures["relative_improvement"]
        lines += [
            "",
            f"Relative improvement of searched over random: {'-' if math.isnan(ri) else f'{ri:+.1f}%'}",
        ]
        tau = figures["kendall_tau"]
        if tau["architectures"] >= 2:
            lines.append(
                f"Kendall τ between the scores with supernet weights (search-0's, val) and after "
                f"retraining: {tau['tau']:+.2f} over {tau['architectures']} architectures"
            )
        for p in figures["pairs"]:
            lines.append(
                f"- seed {p['seed']}: searched {_pct(p['searched'])} vs random {_pct(p['random'])} "
                f"({100 * p['difference']:+.2f} points)"
            )
    a = report["agreement"]
    lines += [
        "",
        f"Agreement of the searched architectures: path {_pct(a['path'])}%, cell {_pct(a['cell'])}%",
    ]
    return "\n".join(lines) + "\n"


def curves_picture(out: Path, plan: dict[str, Any], target: Path) -> Path | None:
    """Validation mIoU of every search over its epochs in one plot (the paper's Fig. 4)."""
    fig = new_figure((6, 4))  # its own canvas: the caller's matplotlib backend is left alone
    ax = fig.add_subplot()
    drawn = 0
    for s in range(plan["seeds"]):
        path = out / f"search-{s}" / "search" / "metrics.jsonl"
        rows = read_jsonl(path)  # a torn last line (a search killed mid-write) is left out
        key = "val_dice" if any("val_dice" in r for r in rows) else "val_miou"
        rows = [r for r in rows if isinstance(r.get(key), (int, float)) and "epoch" in r]
        if not rows:
            continue
        ax.plot([r["epoch"] for r in rows], [100 * r[key] for r in rows], marker="o", label=f"seed {s}")
        drawn += 1
    if not drawn:
        return None
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation score (%): mIoU, or Dice for volumes")
    ax.set_title("searches of the study")
    ax.legend()
    return save_png(fig, target)


def write_report(out: str | Path) -> dict[str, Any]:
    """``report.json``, ``report.md`` and ``search_curves.png`` in the study folder; returns the report."""
    out = Path(out)
    report = build_report(out)
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, default=float) + "\n")
    atomic_write_text(out / "report.md", markdown(report))
    curves_picture(out, report["plan"], out / "search_curves.png")
    return report
