"""DiNTS through the command line: ``search --space dints`` in 2D and 3D, ``decode``, ``show``,
``train --arch dints_arch.json`` (and its resume), ``eval`` and ``predict`` of the trained model; the
model file's record and the settings' refusals."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from autodeeplab.checkpoint_io import load_checkpoint
from autodeeplab.cli.main import main
from autodeeplab.config.settings import load_config
from autodeeplab.errors import ConfigError, GenotypeError
from autodeeplab.nets.dints import DintsNet
from autodeeplab.nets.model_file import load_model
from autodeeplab.search.config import SearchConfig
from autodeeplab.space.architectures import resolve_architecture
from autodeeplab.space.dints.arch import DintsArch
from autodeeplab.space.dints.decode import decode_record

TINY_DINTS = ["dints.depths=2", "dints.blocks=2", "dints.channels=4"]
TINY_2D = ["epochs=2", "arch_start_epoch=1", "data.synthetic_train_samples=8", "data.synthetic_val_samples=2"]
TINY_2D += ["data.synthetic_size=[32,32]", "data.crop_size=32", "batch_size=2", "steps_per_epoch=2"]


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dints") / "search"
    assert main(["search", "--space", "dints", "-o", str(out), "-q", *sets(TINY_DINTS + TINY_2D)]) == 0
    return out


def test_a_2d_search_writes_a_valid_architecture_that_decode_reproduces(searched: Path, tmp_path, capsys):
    arch = DintsArch.load(searched / "dints_arch.json")
    assert (arch.depths, arch.num_blocks, arch.op_set) == (2, 2, "dints-2d")
    assert not (searched / "genotype.json").exists()
    record = json.loads((searched / "arch_params.json").read_text())
    assert decode_record(record) == arch  # the file's logits decode to what the search wrote
    assert main(["decode", str(searched / "arch_params.json"), "-o", str(tmp_path / "a.json")]) == 0
    assert (tmp_path / "a.json").read_text() == (searched / "dints_arch.json").read_text()
    history = [json.loads(line) for line in (searched / "arch_history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and all(h["kind"] == "dints" for h in history)
    for name in ("topology.png", "arch_history.png", "curves.png"):
        assert (searched / "plots" / name).stat().st_size > 1000
    config = load_config(SearchConfig, yaml_path=searched / "config.yaml")
    assert config.search_space == "dints" and config.dints.blocks == 2


def test_show_draws_a_dints_file_and_a_dints_run(searched: Path, tmp_path, capsys):
    assert main(["show", str(searched / "dints_arch.json"), "-o", str(tmp_path / "pics")]) == 0
    assert (tmp_path / "pics" / "topology.png").exists()
    assert main(["show", str(searched / "arch_params.json"), "-o", str(tmp_path / "pics2")]) == 0
    out = capsys.readouterr().out
    assert "DiNTS topology: 2 depths" in out and DintsArch.load(searched / "dints_arch.json").short() in out


def test_train_eval_and_predict_a_dints_architecture(searched: Path, tmp_path, capsys):
    out = tmp_path / "train"
    args = ["train", "--arch", str(searched / "dints_arch.json"), "--preset", "tiny", "-o", str(out), "-q"]
    assert main([*args, "--set", "dints.channels=4", "--set", "iterations=4"]) == 0
    model, info = load_model(out)
    assert isinstance(model, DintsNet) and model.config.channels == 4
    found = DintsArch.load(searched / "dints_arch.json")
    assert model.arch == found == DintsArch.load(out / "dints_arch.json")
    record = load_checkpoint(out / "model.pt")["model"]
    assert record["kind"] == "dints" and DintsNet.from_config_dict(record).arch == model.arch
    x = torch.randn(1, 3, 24, 40)
    assert model(x).shape == (1, info.num_classes, 24, 40)
    assert main(["eval", str(out), "--split", "val", "--max-images", "2", "--no-json", "-q"]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert main(["train", "--resume", str(out), "-q", "--set", "iterations=6"]) == 0  # the run's own arch
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6


def test_a_dints_training_resumes_exactly(searched: Path, tmp_path, monkeypatch):
    """Stopped by SIGINT after step 3 of 6 (the signal's checkpoint) and resumed: the weights equal an
    unbroken run's."""
    import autodeeplab.train.loop as train_module

    original = train_module.poly_lr
    arch = ["--arch", str(searched), "--preset", "tiny", "-q", *sets(["dints.channels=4", "iterations=6"])]
    arch += sets(["checkpoint_every=0", "eval_every=0"])
    assert main(["train", *arch, "-o", str(tmp_path / "whole")]) == 0

    def sigint_at_step_2(base: float, step: int, iterations: int, power: float) -> float:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original(base, step, iterations, power)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "poly_lr", sigint_at_step_2)
        assert main(["train", *arch, "-o", str(tmp_path / "parts")]) == 130
    assert main(["train", "--resume", str(tmp_path / "parts"), "-q"]) == 0
    a, _ = load_model(tmp_path / "whole")
    b, _ = load_model(tmp_path / "parts")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_a_3d_dints_search_and_training_on_volumes(tmp_path):
    pytest.importorskip("nibabel")
    from test_volumes_end_to_end import VOLUME_DATA, write_volumes

    volumes = write_volumes(tmp_path / "data")
    search = tmp_path / "search"
    loop = ["epochs=2", "arch_start_epoch=1", "batch_size=2", "steps_per_epoch=1", "device=cpu"]
    data = [*VOLUME_DATA, "space.spatial_dims=3", "data.max_val_images=1"]
    args = ["search", "--space", "dints", "--preset", "cpu", "--data-root", str(volumes), "-o", str(search)]
    assert main([*args, "-q", *sets(TINY_DINTS + data + loop)]) == 0
    arch = DintsArch.load(search / "dints_arch.json")
    assert arch.op_set == "dints-3d" and "val_dice" in (search / "metrics.jsonl").read_text()
    train = tmp_path / "train"
    model = ["model.spatial_dims=3", "dints.channels=4", "iterations=2", "eval_every=0"]
    args = ["train", "--arch", str(search), "--preset", "tiny", "--data-root", str(volumes), "-o", str(train)]
    assert main([*args, "-q", *sets(VOLUME_DATA + model)]) == 0
    net, _ = load_model(train)
    assert isinstance(net, DintsNet) and net.config.spatial_dims == 3
    assert net(torch.randn(1, 1, 8, 12, 8)).shape == (1, 3, 8, 12, 8)


def test_the_settings_refuse_what_dints_cannot_do():
    with pytest.raises(ConfigError, match="search_space: must be one of autodeeplab, dints"):
        SearchConfig(search_space="darts")
    with pytest.raises(ConfigError, match=r"dints.memory_budget: must be a fraction in \[0, 1\]"):
        load_config(SearchConfig, overrides=["dints.memory_budget=1.5"])
    with pytest.raises(ConfigError, match="execution.checkpoint_cells: applies to the Auto-DeepLab"):
        load_config(SearchConfig, overrides=["search_space=dints", "execution.checkpoint_cells=true"])
    with pytest.raises(ConfigError, match="dints.norm: must be one of instance, batch"):
        load_config(SearchConfig, overrides=["dints.norm=group"])


def test_a_run_directory_with_two_architectures_is_refused(searched: Path, tmp_path):
    both = tmp_path / "both"
    both.mkdir()
    (both / "dints_arch.json").write_text((searched / "dints_arch.json").read_text())
    (both / "genotype.json").write_text(resolve_architecture("paper").to_json())
    with pytest.raises(GenotypeError, match="holds both genotype.json and dints_arch.json"):
        resolve_architecture(both)
    assert isinstance(resolve_architecture(both / "dints_arch.json"), DintsArch)


def test_a_broken_dints_record_is_one_line_naming_the_key(searched: Path, tmp_path, capsys):
    record = json.loads((searched / "arch_params.json").read_text())
    for key, value, message in (
        ("op_logits", [[1.0]], "op_logits: expected"),
        ("edge_logits", [[0.0] * 5], "edge_logits: expected"),
        ("op_set", "dints-4d", "op_set: unknown"),
        ("edge_probabilities", [[2.0] * 4] * 2, "edge_probabilities: expected"),
        ("op_logits", [[[10**400]]], "are not arrays of numbers"),  # an integer beyond any float
        ("memory_cost", np.zeros(np.shape(record["op_logits"])[1:]).tolist(), "not all 0"),
    ):
        broken = tmp_path / f"{key}.json"
        within = {"decode_within_budget": True, "memory_budget": 0.5} if key == "memory_cost" else {}
        broken.write_text(json.dumps({**record, **within, key: value}))
        with pytest.raises(GenotypeError, match=message):
            decode_record(json.loads(broken.read_text()), str(broken))
        assert main(["decode", str(broken)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(broken) in err and "Traceback" not in err


def test_estimate_counts_the_dints_supernet_on_its_crop(capsys):
    from autodeeplab.search.estimate import estimate_search

    assert main(["search", "--space", "dints", "--estimate-no-time", *sets(TINY_DINTS + TINY_2D)]) == 0
    assert "estimate for crop 32x32, batch 2" in capsys.readouterr().out
    config = load_config(SearchConfig, "cpu", overrides=[*TINY_DINTS, *TINY_2D, "search_space=dints"])
    wide = load_config(
        SearchConfig, "cpu", overrides=[*TINY_DINTS, *TINY_2D, "search_space=dints", "dints.channels=8"]
    )
    small, large = (estimate_search(c, torch.device("cpu"), measure_time=False) for c in (config, wide))
    assert 0 < small.saved_bytes_weight_step < large.saved_bytes_weight_step  # the DiNTS space is counted


def test_sizes_and_budgets_that_cannot_work_are_refused(searched: Path, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"data.crop_size: \[16, 16\] is too small for 5 depths.*33"):
        load_config(SearchConfig, overrides=["search_space=dints", "dints.depths=5", "data.crop_size=16"])
    load_config(SearchConfig, overrides=["search_space=dints", "dints.depths=5", "data.crop_size=33"])
    with pytest.raises(ConfigError, match="budget.multiply_adds: counts 2D networks"):
        load_config(
            SearchConfig,
            overrides=["budget.multiply_adds=1", "budget.image_size=[8,8]", "space.spatial_dims=3"],
        )
    args = ["train", "--arch", str(searched), "--preset", "tiny", "-o", str(tmp_path / "t")]
    assert main([*args, "--set", "model.spatial_dims=3", "--set", "data.volumes.patch_size=[8,8,8]"]) == 2
    err = capsys.readouterr().err
    assert "op set dints-2d, but model.spatial_dims is 3" in err and not (tmp_path / "t").exists()
    assert main([*args, "--set", "data.crop_size=4"]) == 2  # 2 depths: the deepest of a 4x4 crop is 1x1
    assert "data.crop_size: [4, 4] is too small for 2 depths" in capsys.readouterr().err


def test_show_refuses_files_of_different_searches_and_bad_fields(searched: Path, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    record = json.loads((searched / "arch_params.json").read_text())
    (run / "arch_params.json").write_text(json.dumps(record))
    three = DintsArch.from_chain([0, 0, 0], [[0] * 4] * 3, _topo(), "dints-2d")
    three.save(run / "dints_arch.json")
    assert main(["show", str(run), "--no-plots"]) == 0  # the summary alone reads no record
    assert main(["show", str(run)]) == 2
    assert "files of different searches" in capsys.readouterr().err
    for key, value in (("memory_budget", "half"), ("memory_fraction", None), ("ops", ["a", "b"])):
        bad = tmp_path / f"{key}.json"
        bad.write_text(json.dumps({**record, key: value}))
        assert main(["show", str(bad), "-o", str(tmp_path / "pics")]) == 2
        err = capsys.readouterr().err
        assert f"{key}: expected" in err and err.count("\n") == 1


def _topo():
    from autodeeplab.space.dints.topology import Topology

    return Topology(2)


def test_auto_deeplab_primitives_as_the_dints_op_set(tmp_path):
    search = tmp_path / "search"
    args = ["search", "--space", "dints", "-q", "-o", str(search)]
    assert main([*args, *sets([*TINY_DINTS, *TINY_2D, "dints.op_set=autodeeplab"])]) == 0
    arch = DintsArch.load(search / "dints_arch.json")
    record = json.loads((search / "arch_params.json").read_text())
    assert arch.op_set == "autodeeplab-2d" and "none" not in record["ops"] and len(record["ops"]) == 7
    assert decode_record(record) == arch
    train = tmp_path / "train"
    model = ["dints.channels=4", "iterations=2", "eval_every=0"]
    assert (
        main(["train", "--arch", str(search), "--preset", "tiny", "-q", "-o", str(train), *sets(model)]) == 0
    )
    net, _ = load_model(train)
    assert net.arch == arch and net(torch.randn(1, 3, 16, 24)).shape[2:] == (16, 24)
    with pytest.raises(ConfigError, match="dints.op_set: must be one of dints, autodeeplab"):
        load_config(SearchConfig, overrides=["dints.op_set=darts"])


def test_info_counts_a_dints_network(searched: Path, capsys):
    from autodeeplab.nets.complexity import count_multiply_adds, count_parameters
    from autodeeplab.nets.dints import dints_shape

    assert (
        main(["info", "--arch", str(searched), "--channels", "8", "--input-size", "40", "56", "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    arch = DintsArch.load(searched / "dints_arch.json")
    net = DintsNet(arch, dints_shape(arch, 8, "instance", 2, 3, 19))
    assert report["params"] == count_parameters(net)
    assert report["multiply_adds"] == count_multiply_adds(net, (1, 3, 40, 56))
    assert main(["info", "--arch", str(searched), "--input-size", "8", "8", "8"]) == 2
    assert "a 2D DiNTS architecture" in capsys.readouterr().err
