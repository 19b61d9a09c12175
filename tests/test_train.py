"""The retraining loop, its settings and the trained-model checkpoint (tiny synthetic runs)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from autodeeplab.checkpoint_io import load_checkpoint, save_checkpoint
from autodeeplab.config.settings import load_config
from autodeeplab.errors import CheckpointError, ConfigError
from autodeeplab.infer.evaluate import evaluate
from autodeeplab.nets.model_file import MODEL_FILE, MODEL_FORMAT, load_model
from autodeeplab.nets.network import AutoDeepLabNet
from autodeeplab.runs.rundir import RunDirError
from autodeeplab.space.autodeeplab.genotype import Genotype
from autodeeplab.train import loop as train_module
from autodeeplab.train.config import TrainConfig
from autodeeplab.train.loop import build_model, build_train_data, make_optimizer, poly_lr, run_training

SMALL = Genotype(
    network_path=(0, 0, 1, 1),
    cell=((("sep_conv_3x3", 0), ("atr_conv_3x3", 1)), (("skip_connect", 2), ("max_pool_3x3", 0))),
)
TINY = [
    "data.crop_size=32",
    "data.synthetic_size=[32,32]",
    "data.synthetic_train_samples=8",
    "data.synthetic_eval_samples=2",
    "model.filter_multiplier=4",
    "model.aspp_channels=8",
    "model.decoder_channels=8",
    "iterations=6",
    "batch_size=2",
    "log_every=1",
    "checkpoint_every=3",
]


def tiny_config(*extra: str) -> TrainConfig:
    return load_config(TrainConfig, preset="tiny", overrides=[*TINY, *extra])


def quiet(_: str) -> None:
    pass


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_poly_schedule() -> None:
    assert poly_lr(0.05, 0, 100, 0.9) == 0.05
    assert poly_lr(0.05, 50, 100, 0.9) == pytest.approx(0.05 * 0.5**0.9)
    assert poly_lr(0.05, 100, 100, 0.9) == 0.0


def test_weight_decay_only_on_convolution_kernels() -> None:
    model = build_model(SMALL, tiny_config(), num_classes=3)
    decayed, plain = make_optimizer(model, tiny_config("weight_decay=0.001")).param_groups
    assert decayed["weight_decay"] == 0.001 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 4 for p in decayed["params"])
    bn = [m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.affine]
    assert bn and all(any(p is q for q in plain["params"]) for p in bn)
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_paper_preset_is_the_papers_recipe() -> None:
    config = load_config(TrainConfig, preset="paper")
    assert (config.lr, config.lr_power, config.momentum) == (0.05, 0.9, 0.9)
    assert config.iterations == 1_500_000 and config.data.crop_size == 769
    assert config.data.scale_range == (0.5, 2.0) and config.data.flip
    assert config.model.filter_multiplier == 20 and config.model.drop_path_keep_prob < 1.0
    assert config.data.dataset == "cityscapes"  # the paper's data, not the built-in synthetic set


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch_size=-2", "batch_size: must be at least 1, got -2"),
        ("data.crop_size=0", "data.crop_size: must be at least 1, got 0"),
        ("data.jitter=1.5", "data.jitter: must be in [0, 1), got 1.5"),
        ("checkpoint_every=-1", "checkpoint_every: must be >= 0, got -1"),
        ("lr=0", "lr: must be positive, got 0.0"),
        ("lr=inf", "lr: must be positive, got inf"),
        ("weight_decay=.inf", "weight_decay: must be >= 0 and finite, got inf"),
        ("data.scale_range=[0.5,.inf]", "data.scale_range: must be 0 < low <= high, got [0.5, inf]"),
        ("momentum=1", "momentum: must be in [0, 1), got 1.0"),
        ("model.aspp_channels=0", "model.aspp_channels: must be at least 1, got 0"),
        ("model.aspp_dropout=1", "model.aspp_dropout: must be a number in [0, 1), got 1.0"),
        (
            "model.aspp_rates_os16=[6,0,18]",
            "model.aspp_rates_os16: must be a list of 3 positive integers, got [6, 0, 18]",
        ),
        ("model.num_classes=0", "model.num_classes: must be at least 1, got 0"),
        ("model.in_channels=0", "model.in_channels: must be at least 1, got 0"),
        ("model.spatial_dims=1", "model.spatial_dims: must be 2 (images) or 3 (volumes), got 1"),
        ("loss=dice", "loss: must be one of auto, ce, dice_ce, got 'dice'"),
        (
            "model.stem_channels=[8,8]",
            "override 'model.stem_channels=[8,8]': model.stem_channels: expected a list of 3 values "
            "(int, int, int), got [8, 8] (list)",
        ),
    ],
)
def test_bad_settings_are_config_errors_naming_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        tiny_config(override)
    assert str(info.value) == message


def test_settings_built_in_code_are_checked_too(tmp_path: Path) -> None:
    config = tiny_config()
    config.model.decoder_channels = 0  # changed after the settings were built
    with pytest.raises(ConfigError, match=r"^model.decoder_channels: must be at least 1, got 0$"):
        run_training(config, SMALL, tmp_path / "run", echo=quiet)
    assert not (tmp_path / "run").exists()


def test_training_writes_a_checkpoint_that_evaluates_to_the_recorded_metrics(tmp_path: Path) -> None:
    config = tiny_config()
    result = run_training(config, SMALL, tmp_path / "run", echo=quiet)
    assert result.step == 6 and not result.interrupted
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoints",
        "config.yaml",
        "genotype.json",
        "metrics.jsonl",
        MODEL_FILE,
    ]
    assert Genotype.load(tmp_path / "run" / "genotype.json") == SMALL
    model, info = load_model(tmp_path / "run")  # a run directory works as well as model.pt
    assert not model.training
    assert info.step == 6 and info.dataset == "synthetic" and info.num_classes == model.config.num_classes
    # checkpoint -> eval round trip: the reloaded model reproduces the metrics measured in training
    _, val = build_train_data(config)
    again = evaluate(model, (val[i] for i in range(len(val))), val.num_classes, val.class_names)
    assert again.metrics.to_dict()["confusion"] == info.metrics["confusion"]
    assert again.metrics.miou == pytest.approx(info.metrics["miou"])
    # the training-state checkpoint holds the same model
    newest = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    from_state, _ = load_model(newest)
    x = torch.randn(1, 3, 40, 24)
    with torch.no_grad():
        torch.testing.assert_close(from_state(x), model(x), rtol=0, atol=0)


def test_drop_path_progress_follows_the_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    original = AutoDeepLabNet.set_drop_path_progress

    def spy(self: AutoDeepLabNet, progress: float) -> None:
        seen.append(progress)
        original(self, progress)

    monkeypatch.setattr(AutoDeepLabNet, "set_drop_path_progress", spy)
    run_training(tiny_config("data.eval_split=null"), SMALL, tmp_path / "run", echo=quiet)
    assert seen == [s / 6 for s in range(6)]


def test_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # checkpoint_every=0: the only checkpoint before the end is the one the signal writes; evaluation on
    # (every 2 steps, before and after the stop) must not disturb the resumed run either.
    config = tiny_config("checkpoint_every=0", "eval_every=2", "model.drop_path_keep_prob=0.8")
    straight = run_training(config, SMALL, tmp_path / "straight", echo=quiet)
    assert not straight.interrupted

    def poly_lr_then_sigint_at_step_2(base: float, step: int, iterations: int, power: float) -> float:
        if step == 2:  # GracefulInterrupt: finish this step (the third), checkpoint, stop
            os.kill(os.getpid(), signal.SIGINT)
        return poly_lr(base, step, iterations, power)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "poly_lr", poly_lr_then_sigint_at_step_2)
        stopped = run_training(config, SMALL, tmp_path / "stopped", echo=quiet)
    assert stopped.interrupted and stopped.step == 3
    written = sorted((tmp_path / "stopped" / "checkpoints").glob("*.pt"))
    assert [load_checkpoint(p)["step"] for p in written] == [3]  # written by the signal, mid-run
    resumed = run_training(config, SMALL, tmp_path / "stopped", resume=True, echo=quiet)
    assert resumed.step == 6
    a, info_a = load_model(tmp_path / "straight")
    b, info_b = load_model(tmp_path / "stopped")
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(wa, wb, rtol=0, atol=0, msg=name)
    assert info_a.metrics == info_b.metrics
    records = _jsonl(tmp_path / "stopped" / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]  # nothing logged twice
    assert [r["step"] for r in records if "miou" in r] == [2, 4, 6]


def test_a_stop_on_a_periodic_save_step_writes_that_checkpoint_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config("checkpoint_every=2", "data.eval_split=null")
    written: list[int] = []
    real_save = train_module.save_training_state

    def counting(run, model, optimizer, info, config):
        written.append(info.step)
        real_save(run, model, optimizer, info, config)

    def poly_lr_then_sigint_at_step_1(base: float, step: int, iterations: int, power: float) -> float:
        if step == 1:  # the second step ends on a periodic save, and the stop follows it
            os.kill(os.getpid(), signal.SIGINT)
        return poly_lr(base, step, iterations, power)

    monkeypatch.setattr(train_module, "save_training_state", counting)
    monkeypatch.setattr(train_module, "poly_lr", poly_lr_then_sigint_at_step_1)
    stopped = run_training(config, SMALL, tmp_path / "run", echo=quiet)
    assert stopped.interrupted and stopped.step == 2
    assert written == [2]


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autodeeplab.runs.state import NonFiniteError

    real_forward, calls = AutoDeepLabNet.forward, []

    def poisoned(self: AutoDeepLabNet, x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        out = real_forward(self, x)
        return out * float("nan") if len(calls) == 5 else out  # the fifth step's loss becomes NaN

    monkeypatch.setattr(AutoDeepLabNet, "forward", poisoned)
    run = tmp_path / "run"
    with pytest.raises(
        NonFiniteError, match=r"^training loss became nan at step 5; the last good checkpoint"
    ):
        run_training(tiny_config("data.eval_split=null", "checkpoint_every=2"), SMALL, run, echo=quiet)
    checkpoints = sorted((run / "checkpoints").glob("*.pt"))
    assert [load_checkpoint(p)["step"] for p in checkpoints] == [2, 4]
    model, info = load_model(run / MODEL_FILE)  # model.pt is the step-4 one, not a NaN model
    newest, _ = load_model(checkpoints[-1])
    assert info.step == 4
    for (name, w), w4 in zip(model.state_dict().items(), newest.state_dict().values(), strict=True):
        assert torch.isfinite(w.float()).all() and torch.equal(w, w4), name


def test_a_nan_loss_before_the_first_checkpoint_says_none_was_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autodeeplab.runs.state import NonFiniteError

    real_forward = AutoDeepLabNet.forward
    monkeypatch.setattr(AutoDeepLabNet, "forward", lambda self, x: real_forward(self, x) * float("nan"))
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError) as caught:
        run_training(tiny_config("data.eval_split=null"), SMALL, run, echo=quiet)
    assert str(caught.value) == (
        "training loss became nan at step 1; no checkpoint was written before it; lower the learning rate or "
        "check the data; nothing of this run was kept; run the same command again"
    )
    assert not run.exists()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_new_run_refuses_a_used_directory(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="run directory exists and is not empty"):
        run_training(tiny_config(), SMALL, tmp_path / "run", echo=quiet)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


# -- bad checkpoints ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    run_training(tiny_config("iterations=2", "data.eval_split=null"), SMALL, run, echo=quiet)
    return run / MODEL_FILE


def test_truncated_checkpoint(trained: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cut.pt"
    bad.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"^{bad}: truncated or corrupt checkpoint"):
        load_model(bad)


def test_checkpoint_of_another_format_version(trained: Path, tmp_path: Path) -> None:
    state = load_checkpoint(trained)
    state["model_format"] = 99
    state["autodeeplab_version"] = "9.0.0"
    other = tmp_path / "other.pt"
    save_checkpoint(other, state)
    with pytest.raises(CheckpointError) as info:
        load_model(other)
    assert str(info.value) == (
        f"{other}: trained-model format 99 (written by autodeeplab 9.0.0) is not the format 3 "
        "this version reads"
    )


@pytest.mark.parametrize(
    ("old_format", "why"),
    [
        (2, "the found network's resizes align corners, as in the released model"),
        (
            1,
            "strided atrous ops became resize → undilated conv, as in the released model; the found "
            "network's resizes align corners, as in the released model",
        ),
    ],
)
def test_checkpoint_of_an_older_format_is_refused_with_the_reason(
    trained: Path, tmp_path: Path, old_format: int, why: str
) -> None:
    assert MODEL_FORMAT == 3
    state = load_checkpoint(trained)
    state["model_format"], state["autodeeplab_version"] = old_format, "0.1.0"
    old = tmp_path / "old.pt"
    save_checkpoint(old, state)
    with pytest.raises(CheckpointError) as info:
        load_model(old)
    assert str(info.value) == (
        f"{old}: trained-model format {old_format} (written by autodeeplab 0.1.0) is older than format 3, "
        f"which this version reads ({why}); retrain the model with this version"
    )


def test_resume_from_an_older_format_is_refused(tmp_path: Path) -> None:
    config = tiny_config("iterations=2", "checkpoint_every=1", "data.eval_split=null")
    run_training(config, SMALL, tmp_path / "run", echo=quiet)
    newest = sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))[-1]
    state = load_checkpoint(newest)
    state["trained"]["model_format"] = 2
    save_checkpoint(newest, state)
    longer = tiny_config("iterations=4", "checkpoint_every=1", "data.eval_split=null")
    with pytest.raises(CheckpointError, match=rf"^{newest}: trained-model format 2 .* retrain the model"):
        run_training(longer, SMALL, tmp_path / "run", resume=True, echo=quiet)


def test_weights_that_do_not_fit_the_recorded_genotype(trained: Path, tmp_path: Path) -> None:
    state = load_checkpoint(trained)
    state["model"]["genotype"]["network_path"] = [0, 1, 2, 2]
    other = tmp_path / "mismatch.pt"
    save_checkpoint(other, state)
    with pytest.raises(CheckpointError, match=f"^{other}: weights do not fit the network it describes"):
        load_model(other)


def test_class_count_that_differs_from_the_checkpoint(trained: Path) -> None:
    _, info = load_model(trained)
    with pytest.raises(CheckpointError) as err:
        load_model(trained, num_classes=info.num_classes + 2)
    assert str(err.value) == (
        f"{trained}: the checkpoint predicts {info.num_classes} classes (synthetic) but the data has "
        f"{info.num_classes + 2}"
    )


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"^{tmp_path / 'nope.pt'}: no such checkpoint$"):
        load_model(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match=f"^{foreign}: not an autodeeplab checkpoint$"):
        load_model(foreign)
    search_like = tmp_path / "search.pt"
    save_checkpoint(search_like, {"format": "autodeeplab-search-1"})
    with pytest.raises(CheckpointError, match=r"not a trained-model checkpoint \(kind None\)"):
        load_model(search_like)


def test_tensorboard_scalars_and_prediction_panels(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_training(tiny_config("tensorboard=true"), SMALL, tmp_path / "run", quiet=True, echo=quiet)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {"train/loss", "train/lr", "train/val_miou"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    image = events.Images("train/predictions/0")[0]
    assert (image.width, image.height) == (3 * 32, 32)  # image | truth | prediction


def test_training_reads_losses_back_once_per_sync_every_steps(tmp_path: Path, monkeypatch) -> None:
    import autodeeplab.train.loop as train_module
    from autodeeplab.runs.state import SYNC_EVERY, read_losses

    sizes: list[int] = []

    def spy(pending, what, world=1):
        sizes.append(len(pending))
        return read_losses(pending, what, world)

    monkeypatch.setattr(train_module, "read_losses", spy)
    steps = 2 * SYNC_EVERY + 3
    config = tiny_config(
        f"iterations={steps}", f"log_every={10 * steps}", "checkpoint_every=0", "data.eval_split=null"
    )
    run_training(config, SMALL, tmp_path / "run", echo=quiet)
    assert [n for n in sizes if n] == [SYNC_EVERY, SYNC_EVERY, 3]
    records = _jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [steps]  # the mean of every step's loss, logged at the end
