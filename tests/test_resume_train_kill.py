"""A training killed with SIGKILL at an arbitrary moment and resumed ends with exactly the same weights."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from tiny import SMALL_HEADS

from autodeeplab.checkpoint_io import load_checkpoint
from autodeeplab.cli.main import main
from autodeeplab.config.settings import load_config
from autodeeplab.nets.model_file import load_model
from autodeeplab.space.autodeeplab.genotype import Genotype
from autodeeplab.train.config import TrainConfig
from autodeeplab.train.loop import run_training

SMALL = Genotype(
    network_path=(0, 0, 1, 1),
    cell=((("sep_conv_3x3", 0), ("atr_conv_3x3", 1)), (("skip_connect", 2), ("max_pool_3x3", 0))),
)
SETTINGS = [
    "data.crop_size=32",
    "data.synthetic_size=[32,32]",
    "data.synthetic_train_samples=6",
    "data.synthetic_eval_samples=2",
    *SMALL_HEADS,
    "model.drop_path_keep_prob=0.8",  # drop path draws random numbers: the RNG state must resume too
    "iterations=40",
    "batch_size=2",
    "log_every=1",
    "checkpoint_every=4",
    "keep_checkpoints=2",
]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def newest_step(run: Path) -> int:
    names = sorted((run / "checkpoints").glob("*.pt")) if (run / "checkpoints").is_dir() else []
    return int(names[-1].name.split("step")[-1].split(".")[0]) if names else 0


def losses(run: Path) -> list[tuple[int, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


def test_sigkill_during_training_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    genotype = tmp_path / "genotype.json"
    SMALL.save(genotype)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    config = load_config(TrainConfig, preset="tiny", overrides=SETTINGS)
    run_training(config, SMALL, reference, quiet=True, echo=lambda line: None)

    command = [
        sys.executable,
        "-m",
        "autodeeplab",
        "train",
        "-q",
        "--preset",
        "tiny",
        "--genotype",
        str(genotype),
    ]
    command += [part for item in SETTINGS for part in ("--set", item)]
    proc = subprocess.Popen([*command, "-o", str(killed)], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and newest_step(killed) < 8:
        time.sleep(0.01)
    time.sleep(random.Random().uniform(0.0, 0.2))  # anywhere: inside a step, a log line or a save
    assert proc.poll() is None, "the training finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = newest_step(killed)
    assert 8 <= stopped_at < 40

    assert main(["train", "--resume", str(killed), "-q"]) == 0
    a, info_a = load_model(reference / "model.pt")
    b, info_b = load_model(killed / "model.pt")
    assert info_b.step == 40
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(wa, wb, rtol=0, atol=0, msg=name)
    assert info_a.metrics == info_b.metrics
    assert losses(killed) == losses(reference)  # every step logged once, with the same loss
    newest = sorted((killed / "checkpoints").glob("*.pt"))[-1]
    assert load_checkpoint(newest)["step"] == 40
