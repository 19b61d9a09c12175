"""A search killed with SIGKILL at an arbitrary moment and resumed ends exactly like an uninterrupted one."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autodeeplab.checkpoint_io import load_checkpoint

TINY = [
    "--set", "space.filter_multiplier=2",
    "--set", "space.num_layers=3",
    "--set", "space.num_blocks=2",
    "--set", "space.stem_channels=[4,4,8]",
    "--set", "data.crop_size=32",
    "--set", "data.synthetic_size=[32,32]",
    "--set", "data.synthetic_train_samples=8",
    "--set", "data.synthetic_val_samples=2",
    "--set", "batch_size=2",
    "--set", "epochs=5",
    "--set", "arch_start_epoch=1",
    "--set", "checkpoint_every=1",
    "--set", "keep_checkpoints=2",
    "--set", "device=cpu",
]  # fmt: skip


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "autodeeplab", "search", "--quiet", *args]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def final_arch(run: Path) -> tuple[np.ndarray, np.ndarray]:
    data = json.loads((run / "arch_params.json").read_text())
    return np.array(data["alpha"]), np.array(data["beta"])


def last_checkpoint_arch(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    newest = sorted((run / "checkpoints").glob("*.pt"))[-1]
    state = load_checkpoint(newest)
    return state["model"]["alpha"], state["model"]["beta"]


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_checkpoints", [2, 5])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, kill_after_checkpoints):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(cli(*TINY, "-o", str(reference)), check=True, env=env(), capture_output=True)

    proc = subprocess.Popen(cli(*TINY, "-o", str(killed)), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = len(list((killed / "checkpoints").glob("*.pt"))) if (killed / "checkpoints").exists() else 0
        steps = len(list((killed / "checkpoints").glob("*"))) and _global_steps(killed)
        if done and steps >= kill_after_checkpoints:
            time.sleep(0.05 * kill_after_checkpoints)  # land somewhere inside a step, not on a boundary
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the search finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    resumed = subprocess.run(cli("--resume", str(killed)), env=env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout

    assert json.loads((killed / "genotype.json").read_text()) == json.loads(
        (reference / "genotype.json").read_text()
    )
    ra, rb = final_arch(reference)
    ka, kb = final_arch(killed)
    assert np.abs(ra - ka).max() <= 1e-6 and np.abs(rb - kb).max() <= 1e-6
    for a, b in zip(last_checkpoint_arch(reference), last_checkpoint_arch(killed), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    # one metrics line per epoch, none duplicated by the resume
    epochs = [json.loads(line)["epoch"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5]


def _global_steps(run: Path) -> int:
    names = sorted(p.name for p in (run / "checkpoints").glob("*.pt"))
    return int(names[-1].split("step")[-1].split(".")[0]) if names else 0


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_the_beginning(tmp_path):
    """Killed (or the disk full) before the first checkpoint: --resume starts it again, its earlier records
    dropped, and ends where an unbroken run ends; a finished run whose checkpoints were deleted is refused."""
    short = [*TINY, "--set", "epochs=1", "--set", "arch_start_epoch=0"]
    run = tmp_path / "run"
    assert subprocess.run(cli(*short, "-o", str(run)), env=env()).returncode == 0
    reference = final_arch(run)
    shutil.rmtree(run / "checkpoints")
    refused = subprocess.run(cli("--resume", str(run)), env=env(), capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "nothing to resume" in refused.stderr and "genotype.json" in refused.stderr

    (run / "genotype.json").unlink()
    (run / "arch_params.json").unlink()  # now as a run killed in its first epoch, with stale records
    resumed = subprocess.run(cli("--resume", str(run)), env=env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "starting it from the beginning" in resumed.stdout
    for name in ("metrics.jsonl", "arch_history.jsonl"):
        epochs = [json.loads(line)["epoch"] for line in (run / name).read_text().splitlines()]
        assert epochs == [1], name
    for a, b in zip(reference, final_arch(run), strict=True):
        assert np.array_equal(a, b)


def test_sigterm_checkpoints_and_says_how_to_resume(tmp_path):
    run = tmp_path / "run"
    # checkpoint_every=0: epoch ends write the only other checkpoints, at position batch 0; a checkpoint
    # in the middle of an epoch can only be the one the signal wrote.
    args = [
        a.replace("epochs=5", "epochs=50").replace("checkpoint_every=1", "checkpoint_every=0") for a in TINY
    ]
    pipe = subprocess.PIPE
    proc = subprocess.Popen(cli(*args, "-o", str(run)), env=env(), stdout=pipe, stderr=pipe, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"--resume {run}" in stdout + stderr
    assert stderr.count("received SIGTERM") == 1
    newest = sorted((run / "checkpoints").glob("*.pt"))[-1]
    position = load_checkpoint(newest)["position"]
    assert position["batch"] >= 1 and position["epoch"] >= 1, position  # mid-epoch: written by the signal
