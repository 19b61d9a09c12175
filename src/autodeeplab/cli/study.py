"""``autodeeplab study``: searched against random architectures and the paper's, under one budget."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="searched vs random vs the paper's architecture, each retrained alike; a report",
        description="N searches with different seeds, M architectures drawn uniformly from the same space "
        "and the paper's genotype, each retrained with the same settings and seeds at each budget and "
        "scored on the held-out split; then report.md / report.json / search_curves.png. Resumable.",
    )
    p.add_argument("--dataset", help="dataset of every phase (default: synthetic)")
    p.add_argument("--data-root", help="dataset folder")
    p.add_argument("--seeds", type=int, default=3, help="searches, seeds 0..N-1 (default 3)")
    p.add_argument("--random", type=int, default=3, help="random architectures (default 3)")
    p.add_argument("--no-paper", action="store_true", help="leave the paper's genotype out")
    p.add_argument(
        "--budgets", type=float, nargs="+", default=[1.0, 3.0], help="retraining budgets, × iterations"
    )
    p.add_argument("--retrain-seeds", type=int, nargs="+", default=[0], help="training seeds (default 0)")
    p.add_argument("--random-seed", type=int, default=0, help="seed of the random draws")
    p.add_argument("--eval-split", default="test", help="held-out split (default test)")
    p.add_argument("--search-preset", default="cpu", help="search preset (default cpu)")
    p.add_argument(
        "--train-preset",
        help="training preset (default: cpu with --dataset, for real images; synthetic without, as `run`)",
    )
    p.add_argument("--search-set", action="append", default=[], metavar="KEY=VALUE", help="search setting")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE", help="training setting")
    p.add_argument("--output", "-o", metavar="DIR", help="the study folder (new)")
    p.add_argument("--resume", metavar="DIR", help="continue the study in DIR with its own settings")
    p.add_argument("--report", metavar="DIR", help="only write the report of the study in DIR")
    p.add_argument("--jobs", "-j", type=int, default=1, help="members run at once, in processes (default 1)")
    p.add_argument("--member", help=argparse.SUPPRESS)  # with --resume: run this one member only
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autodeeplab.config.settings import load_config
    from autodeeplab.errors import ConfigError
    from autodeeplab.search.config import SearchConfig
    from autodeeplab.study.members import PLAN_FILE, StudyPlan, read_plan, run_member, run_study
    from autodeeplab.study.report import markdown, write_report
    from autodeeplab.train.config import TrainConfig

    chosen = [a for a in ("output", "resume", "report") if getattr(args, a)]
    if len(chosen) != 1:
        raise ConfigError("study: give exactly one of --output DIR (new), --resume DIR, --report DIR")
    if args.report:
        if not (Path(args.report) / PLAN_FILE).exists():
            raise ConfigError(f"--report: {args.report} is not a study folder (no {PLAN_FILE})")
        print(markdown(write_report(args.report)), end="")
        return 0
    if args.resume:
        out = Path(args.resume)
        if not (out / PLAN_FILE).exists():
            raise ConfigError(f"--resume: {out} is not a study folder (no {PLAN_FILE})")
        plan = read_plan(out)
        search = load_config(SearchConfig, yaml_path=out / "search_settings.yaml")
        train = load_config(TrainConfig, yaml_path=out / "train_settings.yaml")
    else:
        out = Path(args.output)
        shared = [f"data.dataset={args.dataset}"] if args.dataset else []
        shared += [f"data.root={args.data_root}"] if args.data_root else []
        search = load_config(SearchConfig, preset=args.search_preset, overrides=[*shared, *args.search_set])
        preset = args.train_preset or ("cpu" if args.dataset else "synthetic")
        train = load_config(TrainConfig, preset=preset, overrides=[*shared, *args.train_set])
        plan = StudyPlan(
            seeds=args.seeds,
            random=args.random,
            paper=not args.no_paper,
            random_seed=args.random_seed,
            retrain_seeds=list(args.retrain_seeds),
            budgets=list(args.budgets),
            eval_split=args.eval_split,
        )
    if args.member:  # one member, in a process of `--jobs`
        if not args.resume or args.member not in plan.members():
            raise ConfigError(f"--member: {args.member!r} is not a member of the study given with --resume")
        return 0 if run_member(out, args.member, plan, search, train, quiet=True) else 130
    if args.jobs < 1:
        raise ConfigError(f"--jobs: must be at least 1, got {args.jobs}")
    finished = run_study(out, plan, search, train, resume=bool(args.resume), quiet=args.quiet, jobs=args.jobs)
    print(markdown(write_report(out)), end="")
    return 0 if finished else 130
