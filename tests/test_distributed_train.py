"""Distributed training (issue 15): synchronised batch norm, DDP training against one process, gradient
accumulation, and evaluation sharded over ranks. Two gloo processes on the CPU, tiny shapes."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import SMALL
from torch import distributed as dist
from torch import multiprocessing as mp

from autodeeplab.config.settings import load_config
from autodeeplab.errors import ConfigError
from autodeeplab.runs.sync_bn import AllReduceBatchNorm, convert_sync_batch_norm
from autodeeplab.space.architectures import resolve_architecture
from autodeeplab.space.autodeeplab.genotype import Genotype
from autodeeplab.train.config import TrainConfig

DEEP = Genotype(network_path=(0, 1, 2, 3), cell=SMALL.cell)  # output stride 32: 1×1 maps of 32² crops
TINY = [
    "data.crop_size=32",
    "data.synthetic_size=[32,32]",
    "data.synthetic_train_samples=8",
    "data.synthetic_eval_samples=3",  # odd: the ranks' evaluation shares differ (2 and 1)
    "model.filter_multiplier=4",
    "model.aspp_channels=8",
    "model.decoder_channels=8",
    "iterations=4",
    "log_every=1",
    "checkpoint_every=2",
    "eval_every=4",
]


def tiny_config(*extra: str) -> TrainConfig:
    return load_config(TrainConfig, preset="tiny", overrides=[*TINY, *extra])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, *args) -> dict:
    """Run ``fn(rank, world, port, results, *args)`` in 2 forked gloo processes; their results."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(fn, args=(2, _free_port(), results, *args), nprocs=2, start_method="fork")
        return dict(results)


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)


# -- synchronised batch norm -------------------------------------------------------------------------
def _bn_worker(rank: int, world: int, port: int, results, dims: int) -> None:
    _join(rank, world, port)
    dist.init_process_group("gloo")
    try:
        torch.manual_seed(0)
        shape = (4, 3) + (5,) * dims
        x = torch.randn(shape) * 3 + 1
        up = torch.randn(shape)  # the gradient flowing back
        plain = torch.nn.BatchNorm3d(3) if dims == 3 else torch.nn.BatchNorm2d(3)
        with torch.no_grad():
            plain.weight.uniform_(0.5, 1.5)
            plain.bias.uniform_(-0.5, 0.5)
        synced = convert_sync_batch_norm(torch.nn.Sequential(plain), "cpu")[0]
        assert isinstance(synced, AllReduceBatchNorm)
        mine = x[2 * rank : 2 * rank + 2].clone().requires_grad_(True)
        out = synced(mine)
        (out * up[2 * rank : 2 * rank + 2]).sum().backward()
        # one process, the whole batch: a fresh BN with the same weights
        ref = torch.nn.BatchNorm3d(3) if dims == 3 else torch.nn.BatchNorm2d(3)
        ref.load_state_dict({k: v for k, v in synced.state_dict().items()}, strict=False)
        with torch.no_grad():
            ref.weight.copy_(synced.weight)
            ref.bias.copy_(synced.bias)
            ref.running_mean.zero_()
            ref.running_var.fill_(1)
        whole = x.clone().requires_grad_(True)
        ref_out = ref(whole)
        (ref_out * up).sum().backward()
        # the weight gradient is summed over ranks by the training's all-reduce: compare the sum here
        wgrad = synced.weight.grad.clone()
        dist.all_reduce(wgrad)
        results[rank] = max(
            float((out - ref_out[2 * rank : 2 * rank + 2]).abs().max()),
            float((mine.grad - whole.grad[2 * rank : 2 * rank + 2]).abs().max()),
            float((wgrad - ref.weight.grad).abs().max()),
            float((synced.running_mean - ref.running_mean).abs().max()),
            float((synced.running_var - ref.running_var).abs().max()),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("dims", [2, 3])
def test_synchronised_batch_norm_equals_one_batch_norm_over_the_global_batch(dims: int) -> None:
    """Outputs, input and weight gradients and running statistics of each rank's half equal torch's
    BatchNorm over the whole batch in one process (float rounding only)."""
    results = _spawn(_bn_worker, dims)
    assert results[0] < 1e-5 and results[1] < 1e-5


# -- training ------------------------------------------------------------------------------------------
def _train_worker(rank: int, world: int, port: int, results, out: str, extra: list[str]) -> None:
    from autodeeplab.train.loop import run_training

    _join(rank, world, port)
    genotype = DEEP if "genotype=deep" in extra else SMALL
    for item in extra:
        if item.startswith("arch="):
            genotype = resolve_architecture(item.removeprefix("arch="))
    extra = [e for e in extra if e != "genotype=deep" and not e.startswith("arch=")]
    try:
        result = run_training(tiny_config(*extra), genotype, out, quiet=True, echo=lambda s: None)
        results[rank] = {"step": result.step, "metrics": result.metrics}
    except ConfigError as exc:
        results[rank] = str(exc)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from autodeeplab.nets.model_file import load_model

    model, _ = load_model(run / "model.pt")
    return {k: v.float() for k, v in model.state_dict().items()}


def _single(out: Path, *extra: str, genotype=SMALL) -> None:
    from autodeeplab.train.loop import run_training

    torch.set_num_threads(1)
    run_training(tiny_config(*extra), genotype, out, quiet=True, echo=lambda s: None)


def test_two_processes_with_sync_bn_train_as_one_process_with_the_global_batch(tmp_path: Path) -> None:
    """Two ranks × 2 samples with synchronised BN against one process with batches of 4: the same samples
    per step, the same statistics and the averaged gradient, so the same training up to float rounding
    (1e-4 relative on the losses, 1e-3 on any weight after 4 steps), without dropout, whose masks are
    drawn per rank. The evaluation during training,
    sharded 2 + 1 over the ranks, equals one process's evaluation of the saved model exactly."""
    from autodeeplab.infer.evaluate import evaluate
    from autodeeplab.nets.model_file import load_model
    from autodeeplab.train.loop import build_train_data

    no_dropout = ["batch_size=4", "model.aspp_dropout=0"]  # masks are drawn per rank (seed, step, rank)
    results = _spawn(_train_worker, str(tmp_path / "two"), [*no_dropout, "sync_bn=true"])
    assert results[0]["step"] == results[1]["step"] == 4
    assert results[0]["metrics"] == results[1]["metrics"]  # every rank has the whole evaluation
    _single(tmp_path / "one", *no_dropout)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-4)
    two, one = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    assert max(float((two[k] - one[k]).abs().max()) for k in one) < 1e-3
    # the metrics written by the two ranks are those of the saved model scored by one process
    model, _ = load_model(tmp_path / "two" / "model.pt")
    _, val = build_train_data(tiny_config("batch_size=4"))
    again = evaluate(model, (val[i] for i in range(len(val))), val.num_classes, val.class_names)
    assert results[0]["metrics"]["confusion"] == again.metrics.to_dict()["confusion"]
    assert results[0]["metrics"]["images"] == 3


def test_a_dints_network_trains_in_two_processes_as_in_one(tmp_path: Path) -> None:
    """A found DiNTS network (its batch norms are modules, so sync_bn reaches them) under DDP with
    synchronised BN: the losses and weights of one process with the global batch, up to float rounding."""
    from autodeeplab.cli.main import main

    search = ["search", "--space", "dints", "-o", str(tmp_path / "search"), "-q"]
    for item in ["dints.depths=2", "dints.blocks=2", "dints.channels=4", "epochs=2", "arch_start_epoch=1"]:
        search += ["--set", item]
    for item in ["data.synthetic_train_samples=8", "data.synthetic_size=[32,32]", "data.crop_size=32"]:
        search += ["--set", item]
    assert main([*search, "--set", "steps_per_epoch=2", "--set", "batch_size=2"]) == 0
    arch = str(tmp_path / "search" / "dints_arch.json")
    settings = ["batch_size=4", "data.eval_split=null", "dints.channels=4"]
    results = _spawn(_train_worker, str(tmp_path / "two"), [*settings, "sync_bn=true", f"arch={arch}"])
    assert results[0]["step"] == 4
    _single(tmp_path / "one", *settings, genotype=resolve_architecture(arch))
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-4)
    two, one = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    assert max(float((two[k] - one[k]).abs().max()) for k in one) < 1e-3


def test_accumulation_in_one_process_equals_two_processes_without_sync_bn(tmp_path: Path) -> None:
    """Two micro-batches of 2 in one process and two ranks of 2 without synchronised BN normalise the same
    sub-batches and add the same two half-gradients: equal losses and weights up to float rounding (without
    dropout, whose masks are drawn per rank)."""
    settings = ["batch_size=4", "data.eval_split=null", "model.aspp_dropout=0"]
    results = _spawn(_train_worker, str(tmp_path / "two"), settings)
    assert results[0]["step"] == 4
    _single(tmp_path / "acc", *settings, "accumulate_steps=2")
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "acc"), rel=1e-5)
    two, acc = _weights(tmp_path / "two"), _weights(tmp_path / "acc")
    learned = [k for k in acc if "running" not in k and "num_batches" not in k]
    assert max(float((two[k] - acc[k]).abs().max()) for k in learned) < 1e-5


def test_one_image_per_process(tmp_path: Path) -> None:
    """Two ranks × 1 image: the image pooling has no batch norm, so a network whose deepest maps hold
    several pixels trains as it is; one that reaches a 1×1 map at output stride 32 leaves its batch norms
    one value per rank, refused with the setting that fixes it, with which it trains."""
    one = ["batch_size=2", "data.eval_split=null"]
    assert _spawn(_train_worker, str(tmp_path / "os8"), one)[0]["step"] == 4
    deep = [*one, "genotype=deep"]
    refused = _spawn(_train_worker, str(tmp_path / "os32"), deep)
    assert "sync_bn=true" in refused[0] and "single value per channel" in refused[0]
    synced = _spawn(_train_worker, str(tmp_path / "os32-synced"), [*deep, "sync_bn=true"])
    assert synced[0]["step"] == synced[1]["step"] == 4


# -- settings ------------------------------------------------------------------------------------------
def test_learning_rate_rule_and_batch_splits() -> None:
    assert tiny_config("batch_size=8", "lr=0.01").base_lr() == 0.01  # no reference batch: as given
    linear = tiny_config("batch_size=8", "lr=0.01", "lr_reference_batch=2")
    assert linear.base_lr() == pytest.approx(0.04)
    root = tiny_config("batch_size=8", "lr=0.01", "lr_reference_batch=2", "lr_scaling=sqrt")
    assert root.base_lr() == pytest.approx(0.02)
    assert tiny_config("batch_size=8", "accumulate_steps=2").micro_batch(2) == 2
    with pytest.raises(ConfigError, match="does not split into 3 processes × 2 accumulation steps"):
        tiny_config("batch_size=8", "accumulate_steps=2").micro_batch(3)
    with pytest.raises(ConfigError, match="accumulate_steps: 3 does not divide batch_size 8"):
        tiny_config("batch_size=8", "accumulate_steps=3")
    with pytest.raises(ConfigError, match="lr_scaling: must be one of linear, sqrt"):
        tiny_config("lr_scaling=cubic")


# -- a batch split into pieces is scored as one ----------------------------------------------------------
@pytest.mark.parametrize("name", ["ce", "dice_ce"])
def test_split_losses_add_up_to_the_whole_batch(name: str) -> None:
    """Pieces of unequal numbers of ignored pixels: their split_loss parts (with the whole batch's counts)
    add up to the loss of the whole batch, and so do their gradients."""
    from autodeeplab.ops.losses import make_loss, split_loss

    torch.manual_seed(0)
    loss = make_loss(name, 255)
    logits = torch.randn(4, 3, 6, 5, requires_grad=True)
    target = torch.randint(0, 3, (4, 6, 5))
    target[0, :4] = 255  # the first piece has many ignored pixels, the second none
    whole = loss(logits, target)
    (g_whole,) = torch.autograd.grad(whole, logits)
    counts = loss.counts(target[:2]) + loss.counts(target[2:])
    parts = [split_loss(loss, logits[i : i + 2], target[i : i + 2], counts) for i in (0, 2)]
    (g_parts,) = torch.autograd.grad(sum(parts), logits)
    assert float(sum(parts).detach()) == pytest.approx(float(whole.detach()), rel=1e-6)
    assert torch.allclose(g_parts, g_whole, atol=1e-7)
    plain = (loss(logits[:2], target[:2]) + loss(logits[2:], target[2:])).detach() / 2
    assert abs(float(plain) - float(whole.detach())) > 1e-3  # the mean of the pieces' means is not the loss


# -- distributed evaluation of volumes -------------------------------------------------------------------
def _volume_eval_worker(rank: int, world: int, port: int, results) -> None:
    pytest.importorskip("monai")
    from autodeeplab.infer.volumes import evaluate_volumes

    _join(rank, world, port)
    dist.init_process_group("gloo")
    try:
        torch.manual_seed(0)
        model = torch.nn.Conv3d(3, 3, 3, padding=1)  # the same random model on every rank
        result = evaluate_volumes(model, _Volumes(), (4, 4, 4), world=world, rank=rank)
        results[rank] = result.to_dict()
    finally:
        dist.destroy_process_group()


class _Volumes:
    """Three random volumes of different shapes (the ranks' shares are 2 and 1)."""

    num_classes, class_names, ignore_index = 3, ["background", "a", "b"], 255

    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        self.masks = [rng.integers(0, 3, s) for s in ((6, 7, 5), (5, 5, 8), (7, 4, 6))]

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.from_numpy(self.masks[i])
        return torch.nn.functional.one_hot(mask, 3).permute(3, 0, 1, 2).float() + 0.3, mask

    def volume_id(self, i: int) -> str:
        return f"v{i}"

    def spacing(self, i: int) -> tuple[float, float, float]:
        return (1.0, 1.0, 1.0)


def test_distributed_volume_evaluation_equals_one_process() -> None:
    pytest.importorskip("monai")
    from autodeeplab.infer.volumes import evaluate_volumes

    results = _spawn(_volume_eval_worker)
    torch.manual_seed(0)
    single = evaluate_volumes(torch.nn.Conv3d(3, 3, 3, padding=1), _Volumes(), (4, 4, 4)).to_dict()
    for r in (0, 1):
        got = {k: v for k, v in results[r].items() if k != "seconds"}
        assert got == {k: v for k, v in single.items() if k != "seconds"}
    assert [v["id"] for v in single["volumes"]] == ["v0", "v1", "v2"]


def test_conversion_keeps_the_parameter_and_buffer_tensors() -> None:
    """An optimiser or a cached parameter list made before the conversion still holds what the new batch
    norms use."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4, affine=False)
    )
    before = [*model.parameters(), *model.buffers()]
    convert_sync_batch_norm(model, "cpu")
    assert isinstance(model[1], AllReduceBatchNorm) and isinstance(model[2], AllReduceBatchNorm)
    after = [*model.parameters(), *model.buffers()]
    assert len(before) == len(after) and all(a is b for a, b in zip(before, after, strict=True))
    assert model[2].weight is None and model[1].training


def _resume_worker(rank: int, world: int, port: int, results, out: str) -> None:
    from autodeeplab.train.loop import run_training

    _join(rank, world, port)
    try:
        config = tiny_config(*EXACT, "iterations=6", "sync_bn=true")
        result = run_training(config, SMALL, out, resume=True, quiet=True, echo=lambda s: None)
        results[rank] = result.step
    finally:
        dist.destroy_process_group()


EXACT = ["batch_size=4", "data.eval_split=null", "model.aspp_dropout=0"]  # drop path is off in TINY


def test_a_training_begun_in_one_process_resumes_in_two(tmp_path: Path) -> None:
    """The checkpoint holds the global step and batch position, not a world size: 4 steps in one process,
    2 more in two with synchronised BN end where the same 2 more steps in one process end (up to float
    rounding)."""
    import shutil

    from autodeeplab.train.loop import run_training

    _single(tmp_path / "run", *EXACT)  # 4 steps, one process
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    assert _spawn(_resume_worker, str(tmp_path / "run")) == {0: 6, 1: 6}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    config = tiny_config(*EXACT, "iterations=6")
    run_training(config, SMALL, tmp_path / "copy", resume=True, quiet=True, echo=lambda s: None)
    two, one = _weights(tmp_path / "run"), _weights(tmp_path / "copy")
    assert max(float((two[k] - one[k]).abs().max()) for k in one) < 1e-3


# -- a torchrun restart resumes only this job's run ----------------------------------------------------
def _restart_args(out: Path):
    import argparse

    return argparse.Namespace(
        output=str(out), resume=None, preset="tiny", config=None, genotype="paper", overrides=[]
    )


def test_a_restart_resumes_only_a_folder_this_job_made(tmp_path: Path, monkeypatch) -> None:
    from autodeeplab.cli.common import resume_after_restart
    from autodeeplab.runs.follower import RESTART_MARKER, restart_marker

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    monkeypatch.setenv("RANK", "0")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / RESTART_MARKER).write_text(json.dumps(restart_marker()))
    (mine / "config.yaml").write_text("iterations: 4\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / RESTART_MARKER).write_text(json.dumps({**restart_marker(), "run_id": "job-6"}))
    (other / "config.yaml").write_text("iterations: 4\n")

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # the first attempt: nothing changes
    args = _restart_args(mine)
    resume_after_restart(args, ("genotype",))
    assert args.resume is None and args.output == str(mine)

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    resume_after_restart(args, ("genotype",))  # this job's run: resumed with its own settings
    assert (args.resume, args.output, args.preset, args.genotype) == (str(mine), None, None, None)
    args = _restart_args(other)
    resume_after_restart(args, ("genotype",))  # another job's folder: left to be refused as usual
    assert args.resume is None and other.exists()
    (mine / "config.yaml").unlink()  # this job's folder from a start that failed before its settings
    args = _restart_args(mine)
    resume_after_restart(args, ("genotype",))
    assert args.resume is None and not mine.exists()  # cleared; the run starts again
