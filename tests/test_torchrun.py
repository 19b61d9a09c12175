"""Training under torchrun itself (issue 15): two CPU processes (gloo) launched by ``torchrun --standalone``.
A rank killed with SIGKILL under ``--max-restarts`` restarts the group from the last checkpoint, and a job
stopped with SIGTERM writes one checkpoint and resumes; both end with the weights of an unbroken run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import SMALL

from autodeeplab.nets.model_file import load_model

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds ranks through /proc")

SETTINGS = [
    "data.crop_size=32",
    "data.synthetic_size=[32,32]",
    "data.synthetic_train_samples=8",
    "data.eval_split=null",
    "model.filter_multiplier=4",
    "model.aspp_channels=8",
    "model.decoder_channels=8",
    "model.drop_path_keep_prob=0.8",  # random masks: the per-rank streams must resume too
    "iterations=240",
    "batch_size=4",
    "log_every=5",
    "checkpoint_every=20",
]


def launch(out: Path, arch: Path, restarts: int = 0) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["--max-restarts", str(restarts), "-m", "autodeeplab", "train", "--preset", "tiny"]
    command += ["--arch", str(arch), "-o", str(out), "-q"]
    for setting in SETTINGS:
        command += ["--set", setting]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(job: subprocess.Popen, timeout: float = 240) -> str:
    try:
        output, _ = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.kill()
        raise
    assert job.returncode == 0, output[-3000:]
    return output


def wait_for_checkpoint(out: Path, step: int, job: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not list(out.glob(f"checkpoints/*step{step:08d}.pt")):
        assert job.poll() is None, f"the job ended before the checkpoint of step {step} appeared"
        assert time.monotonic() < end, f"no checkpoint of step {step} after {timeout} s"
        time.sleep(0.02)


def rank_pid(out: Path, rank: int) -> int:
    """The worker process of ``rank`` in the first attempt of the job writing ``out``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        first = b"TORCHELASTIC_RESTART_COUNT=0" in environ
        if first and str(out).encode() in cmdline and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank} for {out}")


def weights(run: Path) -> dict[str, torch.Tensor]:
    model, _ = load_model(run / "model.pt")
    return model.state_dict()


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory) -> tuple[Path, Path]:
    """An unbroken two-process run and the architecture file it trained."""
    root = tmp_path_factory.mktemp("torchrun")
    arch = root / "genotype.json"
    SMALL.save(arch)
    finish(launch(root / "unbroken", arch))
    return root / "unbroken", arch


def same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_a_rank_killed_under_max_restarts_restarts_the_group_and_ends_identical(unbroken, tmp_path):
    reference, arch = unbroken
    out = tmp_path / "killed"
    job = launch(out, arch, restarts=1)
    wait_for_checkpoint(out, 40, job)
    os.kill(rank_pid(out, 1), signal.SIGKILL)
    output = finish(job)
    assert "torchrun restart 1: resuming" in output  # the group was restarted and resumed the run
    same_weights(out, reference)


def test_sigterm_stops_every_rank_at_one_step_with_one_checkpoint(unbroken, tmp_path):
    reference, arch = unbroken
    out = tmp_path / "stopped"
    job = launch(out, arch)
    wait_for_checkpoint(out, 40, job)
    job.send_signal(signal.SIGTERM)  # to torchrun, which passes it to the ranks
    output, _ = job.communicate(timeout=120)
    assert "interrupted: checkpoint saved" in output, output[-3000:]
    saved = sorted(p.name for p in (out / "checkpoints").glob("*step*.pt"))
    stop_step = int(saved[-1].split("step")[-1].removesuffix(".pt"))
    assert 40 <= stop_step < 240  # stopped early, at the step every rank agreed on
    # the same job resumed (by hand here) ends as the unbroken run did
    resume = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    resume += ["-m", "autodeeplab", "train", "--resume", str(out), "-q"]
    done = subprocess.run(resume, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    same_weights(out, reference)


WORKER = """
import os, signal, sys, time
from torch import distributed as dist
from autodeeplab.runs.distributed import setup
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
if attempt == 1 and os.environ["RANK"] == "1":
    time.sleep(3)  # rank 0 of the new attempt looks for rank 1's address first: the old one is stale
info = setup("cpu")
dist.barrier()
if attempt == 0:
    if info.rank == 1:
        time.sleep(0.5)  # the other rank is now waiting in the next collective
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # torchrun stops this rank and restarts both
dist.barrier()
with open(sys.argv[1] + f"/joined-{attempt}-{info.rank}", "w"):
    pass
dist.destroy_process_group()
"""


def test_a_restarted_group_does_not_read_the_dead_attempts_rendezvous(tmp_path):
    """Without a per-attempt prefix, a restarted rank 0 that looks for rank 1 before rank 1 has written its
    new address finds the killed rank's and hangs in gloo's connect (issue 15)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["--max-restarts", "1", str(script), str(tmp_path)]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finish(job, timeout=60)
    assert sorted(p.name for p in tmp_path.glob("joined-*")) == ["joined-1-0", "joined-1-1"]
