"""Run directories and checkpoints: atomic writes, rotation, corruption fallback, RNG state, signals, NaN."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from autodeeplab import fileio
from autodeeplab.checkpoint_io import load_checkpoint, save_checkpoint
from autodeeplab.errors import CheckpointError
from autodeeplab.runs.rundir import (
    CheckpointManager,
    Interrupted,
    RunDir,
    RunDirError,
    maybe_tensorboard,
)
from autodeeplab.runs.state import resume_hint


def _state(value: float = 1.0) -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()  # creates momentum buffers: the state dict gets int keys
    return {
        "weights": torch.full((4, 5), value),
        "half": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3),
        "flags": torch.tensor([True, False]),
        "optimizer": opt.state_dict(),
        "position": {"epoch": 3, "step": 41, "lr": 0.025, "done": False, "note": None},
        "split": {"train_a": [0, 2, 4], "train_b": [1, 3]},
        "shape": (2, 3),
        "ordered": OrderedDict(a=torch.zeros(1)),
    }


def _assert_same(a, b) -> None:
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def test_checkpoint_round_trip(tmp_path):
    state = _state()
    save_checkpoint(tmp_path / "c.pt", state)
    _assert_same(load_checkpoint(tmp_path / "c.pt"), state)
    # A plain torch.load (weights_only) still reads it: the format is just a tagged dict.
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert raw["format"] == "autodeeplab-checkpoint" and raw["version"] == 1


def test_save_rejects_what_weights_only_cannot_load(tmp_path):
    with pytest.raises(
        TypeError, match=r"checkpoint state\['rng'\]\[0\]: numpy.ndarray cannot be loaded back"
    ):
        save_checkpoint(tmp_path / "c.pt", {"rng": [np.zeros(3)]})
    assert not (tmp_path / "c.pt").exists()


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state(1.0))
    before = path.read_bytes()

    def crash(fd):  # the process dies after the bytes are written, before the rename
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(fileio.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _state(2.0))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(path)["weights"], torch.full((4, 5), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


KILL_SCRIPT = """
import sys, torch
from autodeeplab.runs.rundir import CheckpointManager
manager = CheckpointManager(sys.argv[1], keep=2)
i = 0
while True:
    i += 1
    manager.save({"i": i, "w": torch.full((500_000,), float(i))}, f"step{i:06d}")
    print(f"saved {i}", flush=True)
"""


def test_sigkill_during_saves_leaves_a_loadable_newest_checkpoint(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "ck")], stdout=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stdout:
            if line.strip() == "saved 3":
                break
        time.sleep(random.uniform(0.0, 0.05))  # anywhere inside a later write
    finally:
        proc.kill()
        proc.wait()
    warnings: list[str] = []
    state, path = CheckpointManager(tmp_path / "ck", keep=2).load_latest(warn=warnings.append)
    assert warnings == []
    assert state["i"] >= 3 and torch.equal(state["w"], torch.full((500_000,), float(state["i"])))
    assert path.name == f"{state['i']:06d}-step{state['i']:06d}.pt"


def test_rotation_keeps_newest_and_ignores_temporaries(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3)
    assert manager.latest() is None and manager.load_latest() is None
    for step in range(5):
        manager.save({"step": step}, f"epoch0000-step{step:06d}")
    names = [p.name for p in manager.paths()]
    assert names == [f"{n:06d}-epoch0000-step{n - 1:06d}.pt" for n in (3, 4, 5)]
    # A SIGKILL mid-write leaves a temporary file: never taken for a checkpoint, removed by the next save.
    leftover = tmp_path / ".000006-epoch0000-step000005.pt.x1y2.tmp"
    leftover.write_bytes(b"PK\x03\x04 half a zip")
    assert manager.latest().name == "000005-epoch0000-step000004.pt"
    manager.save({"step": 5}, "epoch0000-step000005")
    assert not leftover.exists()
    assert manager.load_latest()[0] == {"step": 5}
    with pytest.raises(ValueError, match="checkpoint tag 'a/b'"):
        manager.save({}, "a/b")


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_corrupt_newest_falls_back_to_previous(tmp_path, damage):
    manager = CheckpointManager(tmp_path, keep=3)
    manager.save(_state(1.0), "a")
    newest = manager.save(_state(2.0), "b")
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        # Inside the stored weights: torch's own reader does not notice this one; the digest does.
        offset = bytes(data).find(torch.full((4, 5), 2.0).numpy().tobytes())
        assert offset > 0
        data[offset + 3] ^= 0x01
    else:
        data = bytearray()
    newest.write_bytes(bytes(data))
    warnings: list[str] = []
    state, path = manager.load_latest(warn=warnings.append)
    assert path.name == "000001-a.pt" and torch.equal(state["weights"], torch.full((4, 5), 1.0))
    assert len(warnings) == 2
    assert (
        warnings[0].startswith(f"warning: {newest}: ")
        and "moved it aside to 000002-b.pt.corrupt" in warnings[0]
    )
    assert warnings[1] == f"warning: falling back to the previous good checkpoint {path}"
    assert (tmp_path / "000002-b.pt.corrupt").exists() and manager.latest() == path
    # The next save continues the sequence after the good one.
    assert manager.save({"x": 1}, "c").name == "000002-c.pt"


def test_corrupt_messages_name_the_file(tmp_path):
    path = tmp_path / "c.pt"
    with pytest.raises(CheckpointError, match=rf"^{path}: no such checkpoint$"):
        load_checkpoint(path)
    path.write_text("hello")
    with pytest.raises(CheckpointError, match=rf"^{path}: not a checkpoint \(not in the format torch.save"):
        load_checkpoint(path)
    torch.save({"model": torch.zeros(2)}, path)  # a torch file, but not ours
    with pytest.raises(CheckpointError, match=rf"^{path}: not an autodeeplab checkpoint$"):
        load_checkpoint(path)
    torch.save({"obj": Path("x")}, path)  # needs code execution to load
    with pytest.raises(CheckpointError, match=rf"^{path}: refused to load: it holds objects that need code"):
        load_checkpoint(path)
    torch.save({"format": "autodeeplab-checkpoint", "version": 99, "state": {}}, path)
    with pytest.raises(CheckpointError, match="format version 99 is newer"):
        load_checkpoint(path)


def test_bytes_that_are_no_checkpoint_are_not_called_unsafe(tmp_path):
    """Random bytes or a JSON file, which torch reads as a legacy pickle and its weights-only unpickler
    refuses, are "not a checkpoint"; a real pickle that needs code execution, zip or legacy, is still
    refused as unsafe."""
    path = tmp_path / "c.pt"
    for content in (bytes(range(7, 256)) * 50, b'{"version": 1, "cells": []}\n', b"epochs: 3\n", b"(lp0\n."):
        path.write_bytes(content)
        with pytest.raises(
            CheckpointError, match=rf"^{path}: not a checkpoint \(not in the format torch.save writes\)$"
        ):
            load_checkpoint(path)
    torch.save({"obj": Path("x")}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=rf"^{path}: refused to load: it holds objects that need code"):
        load_checkpoint(path)


def test_long_reader_errors_end_at_a_sentence():
    from autodeeplab.checkpoint_io import _first_line

    head = "PytorchStreamReader failed reading zip archive: failed finding central directory."
    miniz = RuntimeError(
        f"{head} This is an internal miniz error. If you are seeing this error, there is a high ..."
    )
    assert _first_line(miniz) == f"{head} This is an internal miniz error"
    assert _first_line(RuntimeError("word " * 60)).endswith("word…")
    assert len(_first_line(RuntimeError("x" * 300))) == 160
    assert _first_line(RuntimeError("short\nsecond")) == "short"


def test_all_corrupt_is_an_error(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save({"a": 1}, "a").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=rf"^{tmp_path}: no loadable checkpoint \(all 1 are corrupt\)$"):
        manager.load_latest(warn=lambda message: None)


def test_run_dir(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_json("split.json", {"seed": 0, "train_a": [1, 2]})
    assert run.read_json("split.json") == {"seed": 0, "train_a": [1, 2]}
    assert run.checkpoints.directory == tmp_path / "run" / "checkpoints"
    with pytest.raises(RunDirError, match=r"run directory exists and is not empty; resume it with --resume"):
        RunDir(tmp_path / "run")
    with pytest.raises(RunDirError, match=r"no such run directory to resume$"):
        RunDir(tmp_path / "other", resume=True)
    with pytest.raises(RunDirError, match=r"missing.json: missing from the run directory$"):
        run.read_json("missing.json")
    for step in range(4):
        run.append_jsonl("metrics.jsonl", {"step": step, "loss": 1.0 / (step + 1)})
    with open(run.file("metrics.jsonl"), "a") as f:
        f.write('{"step": 4, "lo')  # a line torn by a kill
    assert [r["step"] for r in run.read_jsonl("metrics.jsonl")] == [0, 1, 2, 3]
    assert run.filter_jsonl("metrics.jsonl", lambda r: r["step"] < 2) == 2
    assert run.read_jsonl("metrics.jsonl") == [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]
    run.file("bad.jsonl").write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(RunDirError, match=r"bad.jsonl: line 2 is not valid JSON$"):
        run.read_jsonl("bad.jsonl")
    assert RunDir(tmp_path / "run", resume=True).read_json("split.json")["seed"] == 0


def test_resume_hint_and_tensorboard_fallback(tmp_path):
    assert (
        resume_hint("train", "runs/a")
        == "stopped; checkpoint saved in runs/a; resume with: autodeeplab train --resume runs/a"
    )
    assert maybe_tensorboard(tmp_path, enabled=False) is None
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        notices: list[str] = []
        assert maybe_tensorboard(tmp_path, enabled=True, warn=notices.append) is None
        assert len(notices) == 1 and "tensorboard is not installed" in notices[0]


def test_checkpoint_cut_anywhere_is_truncated_or_corrupt_and_falls_back(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3)
    manager.save({"weights": torch.full((64, 64), 1.0)}, "a")
    newest = manager.save({"weights": torch.full((64, 64), 2.0)}, "b")  # 16 KB of tensor data
    data = newest.read_bytes()
    cuts = [*range(1, 8), *range(64, len(data), 211)]
    raised_oserror = False  # torch reports some cuts (a few KB in) as OSError(EINVAL): not a disk problem
    for cut in cuts:
        newest.write_bytes(data[:cut])
        try:
            torch.load(newest, weights_only=True)
        except OSError:
            raised_oserror = True
        except Exception:  # noqa: S110 -- the other ways torch fails on bad bytes
            pass
        with pytest.raises(CheckpointError, match=rf"^{newest}: truncated or corrupt checkpoint \("):
            load_checkpoint(newest)
    assert raised_oserror, "no cut hit torch's OSError path; the test no longer covers it"
    warnings: list[str] = []
    state, path = manager.load_latest(warn=warnings.append)
    assert path.name == "000001-a.pt" and torch.equal(state["weights"], torch.full((64, 64), 1.0))
    assert "truncated or corrupt checkpoint" in warnings[0]


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path):
    from autodeeplab.errors import DataError

    def fail_in(run: RunDir, error: BaseException, expected: type[BaseException] | None = None) -> None:
        with pytest.raises(expected or type(error)), run.kept_resumable("search"):
            run.write_json("split.json", {"train_a": [0]})
            (run.path / "plots").mkdir()
            (run.path / "plots" / "x.png").write_bytes(b"png")
            raise error

    fail_in(RunDir(tmp_path / "new" / "run"), DataError("bad image"))
    assert not (tmp_path / "new" / "run").exists() and (tmp_path / "new").is_dir()
    (tmp_path / "empty").mkdir()
    fail_in(RunDir(tmp_path / "empty"), DataError("bad image"))
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())  # it existed: kept
    # the system refusing a write (disk full) and Ctrl-C during start-up: removed too, and said so
    full = OSError(errno.ENOSPC, "No space left on device", "x")
    with pytest.raises(RunDirError, match=r"^x: No space left on device; once that is fixed, nothing of"):
        fail_in(RunDir(tmp_path / "full"), full, OSError)
    fail_in(RunDir(tmp_path / "ctrl-c"), KeyboardInterrupt())
    assert not (tmp_path / "full").exists() and not (tmp_path / "ctrl-c").exists()
    # kept: a programming error, a run with a checkpoint, a resumed run
    fail_in(RunDir(tmp_path / "bug"), RuntimeError("bug"))
    assert (tmp_path / "bug" / "split.json").exists()
    started = RunDir(tmp_path / "started")
    started.checkpoints.save({"step": 1}, "s1")
    fail_in(started, DataError("bad image"))
    assert (tmp_path / "started" / "split.json").exists() and started.checkpoints.latest() is not None
    resume = f"resume with: autodeeplab search --resume {started.path}"
    with pytest.raises(RunDirError) as refused, started.kept_resumable("search"):
        raise full
    assert str(refused.value) == f"x: No space left on device; once that is fixed, {resume}"
    with pytest.raises(Interrupted) as stopped, started.kept_resumable("search"):
        raise KeyboardInterrupt
    assert str(stopped.value) == f"interrupted; {resume}" and started.checkpoints.latest() is not None
    (tmp_path / "resumed").mkdir()
    (tmp_path / "resumed" / "config.yaml").write_text("mine")
    resumed = RunDir(tmp_path / "resumed", resume=True)
    with pytest.raises(DataError), resumed.kept_resumable("search"):
        raise DataError("bad image")
    assert (tmp_path / "resumed" / "config.yaml").read_text() == "mine"


def test_setting_aside_never_replaces_an_earlier_set_aside_file(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3)
    manager.save(_state(1.0), "a")
    for round_ in range(2):  # the same checkpoint name goes bad twice (a resume redoes the same step)
        bad = manager.save(_state(2.0), "b")
        bad.write_bytes(f"broken {round_}".encode())
        assert manager.load_latest(warn=lambda s: None)[1].name == "000001-a.pt"
    assert (tmp_path / "000002-b.pt.corrupt").read_bytes() == b"broken 0"
    assert (tmp_path / "000002-b.pt.corrupt.1").read_bytes() == b"broken 1"


def test_a_run_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path):
    import socket

    from autodeeplab.runs.rundir import LOCK_FILE, RunDir, RunDirError

    run = RunDir(tmp_path / "run")
    lock = run.file(LOCK_FILE)
    with run.locked():
        assert lock.read_text() == f"{socket.gethostname()} {os.getpid()}\n"
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            lock.write_text(f"{socket.gethostname()} {other.pid}\n")  # a second, live process holds it
            with (
                pytest.raises(RunDirError, match=rf"in use by process {other.pid} "),
                RunDir(run.path, resume=True).locked(),
            ):
                pass
        finally:
            other.kill()
            other.wait()
        # the holder is gone: its lock is stale and taken over
        with RunDir(run.path, resume=True).locked():
            assert lock.read_text().endswith(f" {os.getpid()}\n")
    assert not lock.exists()
    lock.write_text("elsewhere 123\n")
    with pytest.raises(RunDirError, match="process 123 on elsewhere .delete the lock file"), run.locked():
        pass
    assert lock.read_text() == "elsewhere 123\n"  # another host's lock is left alone
