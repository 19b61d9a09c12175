"""Run state (autodeeplab.runs.state): RNG capture, NaN checks, graceful
SIGINT/SIGTERM, and an interrupted loop that resumes exactly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from autodeeplab.checkpoint_io import load_checkpoint, save_checkpoint
from autodeeplab.errors import AutoDeepLabError, CheckpointError
from autodeeplab.runs.rundir import RunDir, read_jsonl
from autodeeplab.runs.state import (
    GracefulInterrupt,
    NonFiniteError,
    capture_rng_state,
    check_finite,
    restore_rng_state,
)


def _draws(g: torch.Generator) -> list:
    return [
        random.random(),
        float(np.random.rand()),
        torch.rand(2).tolist(),
        torch.rand(2, generator=g).tolist(),
    ]


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    with torch.random.fork_rng():
        state = np.random.get_state()
        try:
            g = torch.Generator().manual_seed(5)
            random.gauss(0, 1)  # a cached Gaussian is part of Python's state
            save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state(generators={"loader": g})})
            expected = _draws(g)
            _draws(g)  # move every generator on
            restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"], generators={"loader": g})
            assert _draws(g) == expected
            with pytest.raises(CheckpointError, match="no state for the random generator 'other'"):
                restore_rng_state(capture_rng_state(), generators={"other": g})
        finally:
            np.random.set_state(state)


def test_check_finite():
    check_finite(0.5, "loss")
    check_finite(torch.tensor([1.0, 2.0]), "loss")
    with pytest.raises(
        NonFiniteError, match=r"^loss became nan at epoch 3 step 41; the last good checkpoint"
    ):
        check_finite(float("nan"), "loss", epoch=3, step=41)
    with pytest.raises(NonFiniteError, match=r"^arch loss became inf; "):
        check_finite(torch.tensor([1.0, float("inf")]), "arch loss")
    assert issubclass(NonFiniteError, AutoDeepLabError)


def test_graceful_interrupt_in_process():
    before = signal.getsignal(signal.SIGTERM)
    with GracefulInterrupt(stream=open(os.devnull, "w")) as stop:  # noqa: SIM115
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.requested and stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) is before


LOOP_SCRIPT = """
import sys, time, torch
from autodeeplab.runs.rundir import RunDir
from autodeeplab.runs.state import GracefulInterrupt, resume_hint, capture_rng_state, restore_rng_state
run_path, mode, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
run = RunDir(run_path, resume=mode == "resume")
step, acc = 0, torch.zeros(3)
found = run.checkpoints.load_latest(warn=lambda m: print(m, file=sys.stderr))
if found:
    state, _ = found
    step, acc = state["step"], state["acc"]
    restore_rng_state(state["rng"], generators={"loader": g})
    run.filter_jsonl("metrics.jsonl", lambda r: r["step"] <= step)
with GracefulInterrupt() as stop:
    while step < total:
        acc = acc * 0.5 + torch.rand(3, generator=g) + torch.rand(3)
        step += 1
        run.append_jsonl("metrics.jsonl", {"step": step, "acc": acc.tolist()})
        print(f"step {step}", flush=True)
        time.sleep(0.02)
        if stop.requested:
            state = {"step": step, "acc": acc, "rng": capture_rng_state({"loader": g})}
            run.checkpoints.save(state, f"s{step}")
            print(resume_hint("demo", run.path, stop.signal_name), file=sys.stderr)
            sys.exit(3)
run.write_json("result.json", {"step": step, "acc": acc.tolist()})
"""


def _expected(total: int) -> list[float]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        acc = torch.zeros(3)
        for _ in range(total):
            acc = acc * 0.5 + torch.rand(3, generator=g) + torch.rand(3)
        return acc.tolist()


def test_sigterm_writes_a_checkpoint_and_resume_continues_exactly(tmp_path):
    script, run_dir = tmp_path / "loop.py", tmp_path / "run"
    script.write_text(textwrap.dedent(LOOP_SCRIPT))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run_dir), "new", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.strip() == "step 4":
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "received SIGTERM: finishing the current step and saving a checkpoint" in err
    assert (
        f"stopped (SIGTERM); checkpoint saved in {run_dir}; resume with: autodeeplab demo --resume {run_dir}"
        in err
    )
    state, _ = RunDir(run_dir, resume=True).checkpoints.load_latest()
    stopped_at = state["step"]
    assert stopped_at >= 4

    total = stopped_at + 3
    done = subprocess.run(
        [sys.executable, str(script), str(run_dir), "resume", str(total)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    result = RunDir(run_dir, resume=True).read_json("result.json")
    assert result["step"] == total
    assert result["acc"] == _expected(total)  # bit-identical to an uninterrupted run
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, total + 1))


def test_graceful_interrupt_does_nothing_in_a_forked_child():
    """DataLoader workers are forked inside the block: a Ctrl-C reaches them too, only the parent acts."""
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    read_end, write_end = os.pipe()
    with GracefulInterrupt(stream=os.fdopen(write_end, "w")) as stop:
        pid = os.fork()
        if pid == 0:  # the child: two signals, neither printed nor raised
            code = 0
            try:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
                code = 1 if stop.requested else 0
            except KeyboardInterrupt:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)  # the parent still handles it
        time.sleep(0.01)
        assert stop.requested
    with os.fdopen(read_end) as lines:
        os.set_blocking(read_end, False)
        printed = lines.read()
    assert printed.count("received SIGINT") == 1
