"""``autodeeplab study``: does the search earn its cost? Searched architectures against random ones and the
paper's, each retrained under the same settings and scored on held-out data (issue 19).

A study folder holds its settings and one folder per member, each made of ordinary run directories::

    STUDY/study.yaml                        the plan, the search and the training settings
    STUDY/search-<seed>/search/             a search with that seed (its genotype is the member)
    STUDY/random-<k>/genotype.json          an architecture drawn uniformly from the same space
    STUDY/paper/genotype.json               the paper's genotype (Fig. 3)
    STUDY/<member>/train-x<budget>-s<seed>/ its retraining: iterations × budget, training seed
    STUDY/<member>/train-x<budget>-s<seed>/eval.json   its score on the held-out split

The members run one after the other; running the study again resumes it: a finished part (a search with
its genotype, a training with its ``eval.json``) is never run again, an interrupted one continues from its
checkpoint. The report is :mod:`autodeeplab.study.report`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import yaml

from autodeeplab.config.settings import dump_config_yaml, read_settings_yaml
from autodeeplab.errors import ConfigError
from autodeeplab.fileio import atomic_write_text
from autodeeplab.runs.device import resolve_device
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.loop import run_search
from autodeeplab.space.architectures import AnyArchitecture, load_architecture, run_architecture_file
from autodeeplab.space.autodeeplab.genotype import BUILTIN
from autodeeplab.space.autodeeplab.random_arch import random_genotype
from autodeeplab.study.inherited import inherited_scores
from autodeeplab.train.config import TrainConfig
from autodeeplab.train.loop import run_training

PLAN_FILE = "study.yaml"


@dataclass
class StudyPlan:
    """Who is in the study and how each is retrained."""

    seeds: int = 3
    """Searches, with seeds 0 .. seeds-1."""
    random: int = 3
    """Architectures drawn uniformly from the search space (valid paths, cells without ``none``)."""
    paper: bool = True
    """Include the paper's genotype."""
    random_seed: int = 0
    """Seed of the random draws (member k uses ``random_seed · 1000 + k``)."""
    retrain_seeds: list[int] = field(default_factory=lambda: [0])
    """Training seeds of every retraining (the same for every member)."""
    budgets: list[float] = field(default_factory=lambda: [1.0, 3.0])
    """Retraining budgets as multiples of the training settings' ``iterations``."""
    eval_split: str = "test"

    def validate(self) -> None:
        for name in ("seeds", "random"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"study.{name}: must be a whole number >= 0, got {value!r}")
        if not self.seeds and not self.random and not self.paper:
            raise ConfigError("study: no member (seeds 0, random 0, no paper genotype)")
        if not self.retrain_seeds or not self.budgets:
            raise ConfigError("study.retrain_seeds and study.budgets: each needs at least one value")
        if any(not isinstance(b, (int, float)) or isinstance(b, bool) or b <= 0 for b in self.budgets):
            raise ConfigError(f"study.budgets: must be positive multiples of iterations, got {self.budgets}")

    def members(self) -> list[str]:
        names = [f"search-{s}" for s in range(self.seeds)] + [f"random-{k}" for k in range(self.random)]
        return names + (["paper"] if self.paper else [])


def read_plan(out: Path) -> StudyPlan:
    """The plan of the study folder ``out`` (its ``study.yaml``), checked as a new plan is; any failure
    (missing, unreadable, not YAML, unknown or wrong fields) is a one-line :class:`ConfigError`."""
    path = out / PLAN_FILE
    if not path.is_file():
        raise ConfigError(f"{out} is not a study folder (no {PLAN_FILE})")
    data = read_settings_yaml(path)
    unknown = sorted(set(data) - {f.name for f in fields(StudyPlan)})
    if unknown:
        raise ConfigError(f"{path}: not a study plan (unknown key {unknown[0]!r})")
    plan = StudyPlan(**data)
    try:
        plan.validate()
        seeds, budgets = plan.retrain_seeds, plan.budgets
        checked = isinstance(seeds, list) and all(type(s) is int for s in seeds)
        checked = checked and isinstance(plan.paper, bool) and all(math.isfinite(b) for b in budgets)
    except (TypeError, ValueError):
        checked = False
    if not checked or not isinstance(plan.eval_split, str) or not isinstance(plan.random_seed, int):
        raise ConfigError(f"{path}: not a study plan (a field of the wrong type)")
    return plan


def group_of(member: str) -> str:
    """``searched``, ``random`` or ``paper``."""
    return {"search": "searched", "random": "random"}.get(member.split("-")[0], "paper")


def training_name(budget: float, seed: int) -> str:
    return f"train-x{budget:g}-s{seed}"


def write_plan(out: Path, plan: StudyPlan, search: SearchConfig, train: TrainConfig) -> None:
    """The study's settings, written before its first member (what a resume reads back)."""
    dump_config_yaml(search, out / "search_settings.yaml")
    dump_config_yaml(train, out / "train_settings.yaml")
    (out / PLAN_FILE).write_text(yaml.safe_dump(asdict(plan), sort_keys=False), encoding="utf-8")


def member_genotype(
    out: Path, member: str, plan: StudyPlan, search: SearchConfig, quiet: bool, echo: Callable[[str], None]
) -> AnyArchitecture | None:
    """The member's architecture: searched (running or resuming its search), drawn, or the paper's. None
    when the search was interrupted."""
    folder = out / member
    folder.mkdir(parents=True, exist_ok=True)
    kind = group_of(member)
    if kind == "paper":
        return BUILTIN["paper"]
    if kind == "random":
        drawn = run_architecture_file(folder)
        if drawn is not None:  # drawn before: the same member on resume
            return load_architecture(drawn)
        k = int(member.split("-")[1])
        generator = torch.Generator().manual_seed(plan.random_seed * 1000 + k)
        architecture = random_architecture(search, generator)
        architecture.save(folder / architecture.FILE_NAME)
        return architecture
    config = replace(search, seed=int(member.split("-")[1]))
    run_dir = folder / "search"
    started = run_dir.is_dir() and any(run_dir.iterdir())
    found = run_search(config, run_dir, resume=started, quiet=quiet, echo=echo)
    return None if found.interrupted else found.genotype


def random_architecture(search: SearchConfig, generator: torch.Generator) -> AnyArchitecture:
    """An architecture drawn uniformly from the search settings' space (the contract's
    ``random_architecture``; Auto-DeepLab's needs no supernet)."""
    if search.search_space == "autodeeplab":
        s = search.space
        return random_genotype(s.num_layers, s.num_blocks, s.num_levels, generator)
    from autodeeplab.search.spaces import space_builder

    space = space_builder(search)(search, 2, 1)  # the topology and op set do not depend on classes
    return space.random_architecture(generator)


def run_member(
    out: Path,
    member: str,
    plan: StudyPlan,
    search: SearchConfig,
    train: TrainConfig,
    quiet: bool = True,
    echo: Callable[[str], None] = print,
) -> bool:
    """Run what ``member`` still lacks; False when interrupted (Ctrl-C: the study resumes there)."""
    genotype = member_genotype(out, member, plan, search, quiet, echo)
    if genotype is None:
        return False
    for budget in plan.budgets:
        for seed in plan.retrain_seeds:
            run_dir = out / member / training_name(budget, seed)
            if (run_dir / "eval.json").exists():
                continue
            config = replace(train, seed=seed, iterations=max(1, round(train.iterations * budget)))
            started = run_dir.is_dir() and any(run_dir.iterdir())
            echo(f"{member}: retraining x{budget:g} ({config.iterations} steps), seed {seed}")
            trained = run_training(config, genotype, run_dir, resume=started, quiet=quiet, echo=echo)
            if trained.interrupted:
                return False
            score_model(trained.model_path, plan.eval_split, run_dir / "eval.json")
    return True


def score_model(model_path: Path, split: str, target: Path) -> None:
    """Evaluate a trained model on ``split`` of its own dataset as ``autodeeplab eval`` does by default
    (images: whole, one scale, mIoU; volumes: sliding window at the training patch with its overlap, Dice)
    and write ``target`` (eval.json)."""
    from autodeeplab.data.registry import build_dataset
    from autodeeplab.data.transforms import EvalTransform
    from autodeeplab.data.volume_checks import is_volume_dataset
    from autodeeplab.fileio import atomic_write_json
    from autodeeplab.infer.evaluate import EVAL_JSON_KIND, EvalConfig, evaluate, write_eval_json
    from autodeeplab.infer.volumes import evaluate_volumes
    from autodeeplab.nets.model_file import load_model

    model, info = load_model(model_path)
    volumes = info.patch_size is not None  # a volume model: the dataset's own whole volumes
    transform = None if volumes else EvalTransform()
    dataset = build_dataset(info.dataset, info.data_root, split, transform, **info.dataset_options)
    if volumes and is_volume_dataset(dataset):
        overlap = info.window_overlap if info.window_overlap is not None else 0.5
        result = evaluate_volumes(model, dataset, tuple(info.patch_size), overlap)
        record = {"kind": EVAL_JSON_KIND, "checkpoint": str(model_path), "dataset": info.dataset}
        atomic_write_json(target, {**record, "split": split, "window_overlap": overlap, **result.to_dict()})
        return
    result = evaluate(model, dataset, dataset.num_classes, dataset.class_names, dataset.ignore_index)
    config = EvalConfig(split=split, dataset=info.dataset, data_root=info.data_root or None)
    write_eval_json(target, result, config)


def run_study(
    out: str | Path,
    plan: StudyPlan,
    search: SearchConfig,
    train: TrainConfig,
    resume: bool = False,
    quiet: bool = True,
    echo: Callable[[str], None] = print,
    jobs: int = 1,
) -> bool:
    """Every member (see the module docstring); True when all have finished. ``jobs`` > 1: that many members
    at once, each in its own process (``autodeeplab study --resume OUT --member NAME``) with its share of
    the CPU threads; the members write separate folders, so they never meet."""
    plan.validate()
    if plan.paper and search.search_space != "autodeeplab":
        raise ConfigError("study: the paper genotype is an Auto-DeepLab architecture; add --no-paper")
    out = Path(out)
    if not resume:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"study folder {out} is not empty; give a new folder, or --resume it")
        out.mkdir(parents=True, exist_ok=True)
        write_plan(out, plan, search, train)
    if jobs > 1 and not run_in_processes(out, plan.members(), jobs, echo):
        echo(f"not every member finished; resume with `autodeeplab study --resume {out}`")
        return False
    for i, member in enumerate(plan.members(), start=1):  # (all done already after processes: quick)
        echo(f"== member {i}/{len(plan.members())}: {member} ==")
        if not run_member(out, member, plan, search, train, quiet, echo):
            echo(f"interrupted; resume with `autodeeplab study --resume {out}`")
            return False
    if plan.seeds and not (out / INHERITED_FILE).exists():
        echo("scoring every architecture with the weights of the first search's supernet ...")
        scores = inherited_scores(
            out / "search-0" / "search",
            member_genotypes(out, plan),
            replace(search, seed=0),
            str(resolve_device(search.device)),
        )
        atomic_write_text(out / INHERITED_FILE, json.dumps(scores, indent=1) + "\n")
    return True


INHERITED_FILE = "inherited.json"
"""Validation mIoU of each member with weights inherited from search-0's supernet (:mod:`.inherited`)."""


def member_genotypes(out: Path, plan: StudyPlan) -> dict[str, AnyArchitecture]:
    """The architecture of every member that has one so far."""
    found: dict[str, AnyArchitecture] = {}
    for member in plan.members():
        kind = group_of(member)
        if kind == "paper":
            found[member] = BUILTIN["paper"]
            continue
        path = run_architecture_file(out / member / "search" if kind == "searched" else out / member)
        if path is not None:
            found[member] = load_architecture(path)
    return found


def run_in_processes(out: Path, members: list[str], jobs: int, echo: Callable[[str], None]) -> bool:
    """Run ``members`` in at most ``jobs`` child processes at a time; True when every one exited with 0.
    Each child gets ``max(1, cpus // jobs)`` threads and writes its messages to ``<member>/study.log``."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    waiting, running, ok = list(members), [], True
    while waiting or running:
        while waiting and len(running) < jobs:
            member = waiting.pop(0)
            (out / member).mkdir(parents=True, exist_ok=True)
            log = open(out / member / "study.log", "a", encoding="utf-8")  # noqa: SIM115 (closed below)
            command = [sys.executable, "-m", "autodeeplab", "study", "--resume", str(out), "--member", member]
            running.append(
                (member, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log)
            )
            echo(f"started {member} ({threads} threads; log {out / member / 'study.log'})")
        for item in list(running):
            member, process, log = item
            if process.poll() is not None:
                log.close()
                running.remove(item)
                ok &= process.returncode == 0
                echo(f"{member}: {'done' if process.returncode == 0 else f'exit {process.returncode}'}")
        if running:
            time.sleep(0.5)
    return ok
