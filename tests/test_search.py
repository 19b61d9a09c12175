"""The bilevel loop: each step moves only its own parameters; splits are disjoint; runs are reproducible."""

import json

import pytest
import torch
from torch import nn

from autodeeplab.config.settings import load_config
from autodeeplab.runs.sampling import CyclePosition, CyclingLoader, epoch_order, split_halves
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.loop import arch_step, make_optimizers, run_search, weight_step
from autodeeplab.space.autodeeplab.supernet import SearchNetwork, SearchSpaceConfig


def tiny_net():
    torch.manual_seed(0)
    cfg = SearchSpaceConfig(filter_multiplier=2, num_layers=3, num_blocks=2, stem_channels=(4, 4, 8))
    return SearchNetwork(cfg, num_classes=3)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 3, (2, 32, 32), generator=g)


def snapshot(params):
    return [p.detach().clone() for p in params]


def test_weight_step_moves_weights_not_architecture():
    net = tiny_net()
    cfg = SearchConfig()
    w_opt, a_opt, _ = make_optimizers(net, cfg)
    arch, weights = snapshot(net.arch_parameters()), snapshot(net.weight_parameters())
    weight_step(net, *batch(), w_opt, nn.CrossEntropyLoss(), grad_clip=5.0)
    assert all(torch.equal(a, b) for a, b in zip(arch, net.arch_parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(weights, net.weight_parameters(), strict=True))
    assert all(p.grad is None for p in net.arch_parameters())  # not even computed
    assert all(p.requires_grad for p in net.parameters())  # restored afterwards


def test_arch_step_moves_architecture_not_weights():
    net = tiny_net()
    w_opt, a_opt, _ = make_optimizers(net, SearchConfig())
    arch, weights = snapshot(net.arch_parameters()), snapshot(net.weight_parameters())
    arch_step(net, *batch(1), a_opt, nn.CrossEntropyLoss())
    assert all(torch.equal(a, b) for a, b in zip(weights, net.weight_parameters(), strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(arch, net.arch_parameters(), strict=True))
    assert all(p.grad is None for p in net.weight_parameters())


def test_split_is_seeded_disjoint_and_complete():
    a, b = split_halves(11, seed=3)
    assert set(a).isdisjoint(b) and sorted(a + b) == list(range(11)) and len(a) == 6
    assert split_halves(11, seed=3) == (a, b)
    assert split_halves(11, seed=4) != (a, b)


def test_epoch_order_depends_on_seed_stream_epoch_only():
    idx = list(range(20))
    assert epoch_order(idx, 0, 1, 5) == epoch_order(idx, 0, 1, 5)
    assert epoch_order(idx, 0, 1, 5) != epoch_order(idx, 0, 1, 6)
    assert epoch_order(idx, 0, 1, 5) != epoch_order(idx, 0, 2, 5)
    assert sorted(epoch_order(idx, 0, 1, 5)) == idx


def test_cycling_loader_resumes_where_it_stopped():
    data = torch.utils.data.TensorDataset(torch.arange(10).float(), torch.arange(10))
    full = CyclingLoader(data, list(range(10)), 3, seed=0, stream=2)
    seen = [full.next()[1].tolist() for _ in range(7)]  # 3 batches per cycle: crosses two cycles
    resumed = CyclingLoader(data, list(range(10)), 3, seed=0, stream=2, position=CyclePosition(1, 1))
    assert [resumed.next()[1].tolist() for _ in range(3)] == seen[4:7]
    assert full.position == CyclePosition(2, 1)


def tiny_search_config(**overrides):
    cfg = load_config(
        SearchConfig,
        preset="cpu",
        overrides=[
            "space.filter_multiplier=2",
            "space.num_layers=3",
            "space.num_blocks=2",
            "space.stem_channels=[4,4,8]",
            "data.crop_size=32",
            "data.synthetic_size=[32,32]",
            "data.synthetic_train_samples=8",
            "data.synthetic_val_samples=2",
            "batch_size=2",
            "epochs=2",
            "arch_start_epoch=1",
            "steps_per_epoch=2",
            "device=cpu",
            *[f"{k}={v}" for k, v in overrides.items()],
        ],
    )
    return cfg


def test_seeded_search_is_reproducible(tmp_path):
    losses = []
    for name in ("a", "b"):
        run_search(tiny_search_config(), tmp_path / name, quiet=True, echo=lambda s: None)
        losses.append(
            [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        )
    assert [m["train_loss"] for m in losses[0]] == [m["train_loss"] for m in losses[1]]
    a = json.loads((tmp_path / "a" / "arch_params.json").read_text())
    b = json.loads((tmp_path / "b" / "arch_params.json").read_text())
    assert a == b


def test_search_run_directory_contents(tmp_path):
    result = run_search(tiny_search_config(), tmp_path / "run", quiet=True, echo=lambda s: None)
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "split.json",
        "arch_params.json",
        "arch_history.jsonl",
        "genotype.json",
        "metrics.jsonl",
    ):
        assert (run / name).is_file(), name
    split = json.loads((run / "split.json").read_text())
    assert set(split["train_a"]).isdisjoint(split["train_b"]) and len(split["train_a"]) == 4
    history = (run / "arch_history.jsonl").read_text().splitlines()
    assert len(history) == 2
    first, second = (json.loads(line) for line in history)
    assert first["beta"] != second["beta"]  # epoch 2 ran architecture steps
    assert result.genotype.num_layers == 3 and result.genotype.num_blocks == 2


def test_reusing_a_run_directory_is_refused(tmp_path):
    run_search(
        tiny_search_config(epochs=1, arch_start_epoch=0), tmp_path / "run", quiet=True, echo=lambda s: None
    )
    before = (tmp_path / "run" / "genotype.json").read_text()
    with pytest.raises(Exception, match="run"):
        run_search(
            tiny_search_config(epochs=1, arch_start_epoch=0),
            tmp_path / "run",
            quiet=True,
            echo=lambda s: None,
        )
    assert (tmp_path / "run" / "genotype.json").read_text() == before


def test_nan_loss_stops_the_search_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import autodeeplab.search.steps as search_module
    from autodeeplab.runs.state import NonFiniteError

    real_step, calls = search_module.weight_step, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real_step(*args, **kwargs)
        return torch.full_like(loss, float("nan")) if len(calls) == 3 else loss

    monkeypatch.setattr(search_module, "weight_step", poisoned)
    with pytest.raises(NonFiniteError, match="weight-step loss became nan at epoch 2 step 1"):
        run_search(tiny_search_config(), tmp_path / "run", quiet=True, echo=lambda s: None)
    checkpoints = list((tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert len(checkpoints) == 1  # the one written at the end of epoch 1


def test_tensorboard_event_files_when_enabled(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_search(tiny_search_config(tensorboard=True), tmp_path / "run", quiet=True, echo=lambda s: None)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"search/train_loss", "search/val_miou", "search/lr"} <= set(tags["scalars"])
    assert "search/alpha_weights" in tags["histograms"]
    assert {"search/alpha", "search/beta", "search/predictions/0"} <= set(tags["images"])
    assert [e.step for e in events.Scalars("search/val_miou")] == [1, 2]


def test_grad_scaler_state_round_trips_through_a_checkpoint(tmp_path):
    """fp16 runs keep a loss scale per optimizer; a resumed run must continue with the same scale."""
    from autodeeplab.fast.precision import grad_scaler, load_scaler_states, scaler_states

    net = tiny_net()
    w_opt, a_opt, _ = make_optimizers(net, SearchConfig())
    assert scaler_states({"weight": w_opt, "arch": a_opt}) == {}  # fp32/bf16: nothing to save
    scaler = grad_scaler(w_opt, "cpu")
    scaler.scale(torch.ones(()))  # the scale is created lazily by the first scaled loss
    scaler.update(new_scale=1024.0)
    saved = scaler_states({"weight": w_opt, "arch": a_opt})
    assert set(saved) == {"weight"} and saved["weight"]["scale"] == 1024.0
    fresh_w, fresh_a, _ = make_optimizers(tiny_net(), SearchConfig())
    load_scaler_states({"weight": fresh_w, "arch": fresh_a}, saved, "cpu")
    assert grad_scaler(fresh_w, "cpu").get_scale() == 1024.0


def test_metrics_hold_the_epoch_means_of_both_losses(tmp_path, monkeypatch):
    import autodeeplab.search.steps as search_module

    weight_losses, arch_losses = [], []
    real_w, real_a = search_module.weight_step, search_module.arch_step

    def spy_w(*args, **kwargs):
        loss = real_w(*args, **kwargs)
        weight_losses.append(float(loss))
        return loss

    def spy_a(*args, **kwargs):
        loss = real_a(*args, **kwargs)
        arch_losses.append(float(loss))
        return loss

    monkeypatch.setattr(search_module, "weight_step", spy_w)
    monkeypatch.setattr(search_module, "arch_step", spy_a)
    run_search(tiny_search_config(), tmp_path / "run", quiet=True, echo=lambda s: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(weight_losses) == 4 and len(arch_losses) == 2  # 2 steps x 2 epochs, arch steps in epoch 2
    assert records[0]["train_loss"] == pytest.approx(sum(weight_losses[:2]) / 2, rel=1e-12)
    assert "arch_loss" not in records[0]  # the warm-up epoch runs no architecture step
    assert records[1]["train_loss"] == pytest.approx(sum(weight_losses[2:]) / 2, rel=1e-12)
    assert records[1]["arch_loss"] == pytest.approx(sum(arch_losses) / 2, rel=1e-12)


def test_the_loop_reads_losses_back_in_batches_of_sync_every_steps(tmp_path, monkeypatch):
    import autodeeplab.search.loop as search_module

    sizes = []
    real_flush = search_module.PendingLosses.flush

    def spy(self, position, progress):
        sizes.append(len(self.steps))
        real_flush(self, position, progress)

    monkeypatch.setattr(search_module.PendingLosses, "flush", spy)
    config = tiny_search_config()
    config.steps_per_epoch = search_module.SYNC_EVERY + 3
    config.data.synthetic_train_samples = 4 * config.steps_per_epoch * config.batch_size
    config.checkpoint_every = 0  # checkpoints flush too
    run_search(config, tmp_path / "run", quiet=True, echo=lambda s: None)
    reads = [n for n in sizes if n]
    # each epoch: one read after SYNC_EVERY steps, one for the rest at the epoch's end
    assert reads == [search_module.SYNC_EVERY, 3] * config.epochs


def test_captured_steps_give_the_same_search_bit_for_bit(tmp_path):
    """On a CPU, execution.capture_steps runs the static-buffer path of fast.capture without a graph:
    the plumbing (input buffers, loss copies, a recapture per epoch) must change nothing."""
    plain = run_search(tiny_search_config(), tmp_path / "plain", quiet=True, echo=lambda s: None)
    config = tiny_search_config(**{"execution.capture_steps": "true"})
    captured = run_search(config, tmp_path / "captured", quiet=True, echo=lambda s: None)
    for name in ("metrics.jsonl", "arch_params.json", "genotype.json"):
        a = (plain.run_dir / name).read_text().splitlines()
        b = (captured.run_dir / name).read_text().splitlines()
        if name == "metrics.jsonl":  # the epoch's wall time differs
            a = [{k: v for k, v in json.loads(x).items() if "second" not in k} for x in a]
            b = [{k: v for k, v in json.loads(x).items() if "second" not in k} for x in b]
        assert a == b, name


def test_capture_refuses_what_it_cannot_replay():
    from autodeeplab.errors import ConfigError

    with pytest.raises(ConfigError, match="execution.capture_steps: cannot capture fp16"):
        tiny_search_config(**{"execution.capture_steps": "true", "execution.precision": "fp16"}).validate()
    with pytest.raises(ConfigError, match="execution.capture_steps: the multiply-add budget"):
        tiny_search_config(
            **{
                "execution.capture_steps": "true",
                "budget.multiply_adds": "1.0",
                "budget.image_size": "[64,64]",
            }
        ).validate()


def test_an_eager_search_on_a_gpu_is_told_about_captured_steps():
    from autodeeplab.search.loop import capture_hint

    config = tiny_search_config()
    assert "execution.capture_steps=true" in capture_hint(config, "cuda", 1)
    assert capture_hint(config, "cpu", 1) is None  # no graphs on a CPU
    assert capture_hint(config, "cuda", 2) is None  # refused with several processes
    assert capture_hint(tiny_search_config(**{"execution.capture_steps": "true"}), "cuda", 1) is None
    assert capture_hint(tiny_search_config(**{"execution.precision": "fp16"}), "cuda", 1) is None
    budget = {"budget.multiply_adds": "1.0", "budget.image_size": "[64,64]"}
    assert capture_hint(tiny_search_config(**budget), "cuda", 1) is None
    assert capture_hint(tiny_search_config(**{"execution.checkpoint_cells": "true"}), "cuda", 1) is None
    dints = load_config(SearchConfig, "cpu", overrides=["search_space=dints", "device=cpu"])
    assert capture_hint(dints, "cuda", 1) is None  # measured on the Auto-DeepLab supernet only
