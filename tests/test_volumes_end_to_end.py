"""Volumes end to end through the CLI: a 3D training, its resume, eval (Dice per volume), predict (NIfTI on
the input's grid + slices PNG), a 3D search and its resume, on tiny NIfTI volumes written here; and the
Dice + cross-entropy loss against MONAI's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel")
pytest.importorskip("monai")

from autodeeplab.cli.main import main  # noqa: E402
from autodeeplab.nets.model_file import load_model  # noqa: E402
from autodeeplab.ops.losses import DiceCELoss  # noqa: E402

SHAPE = (10, 12, 9)
AFFINE = np.diag([1.5, 1.0, 2.0, 1.0])
AFFINE[:3, 3] = [-7.0, 3.0, 11.0]
VOLUME_MODEL = [
    "model.spatial_dims=3",
    "model.filter_multiplier=2",
    "model.stem_channels=[4,4,8]",
    "model.aspp_channels=8",
    "model.decoder_channels=8",
    "model.low_level_channels=4",
]
VOLUME_DATA = [
    "data.dataset=nifti",
    "data.num_workers=0",
    "data.split_fractions=[0.2,0.2]",
    "data.volumes.split_order=sorted",
    "data.volumes.patch_size=[8,8,8]",
]


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def write_volumes(root: Path, count: int = 10) -> Path:
    """``count`` volumes: a bright box of class 1 and a dark one of class 2 at random places."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(count):
        label = np.zeros(SHAPE, np.uint8)
        image = rng.normal(100, 5, SHAPE).astype(np.float32)
        for value, brightness in ((1, 160), (2, 40)):
            corner = [int(rng.integers(0, s - 4)) for s in SHAPE]
            box = tuple(slice(c, c + 4) for c in corner)
            label[box], image[box] = value, brightness
        nib.save(nib.Nifti1Image(image, AFFINE), root / "images" / f"case_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(label, AFFINE), root / "labels" / f"case_{i:03d}.nii.gz")
    return root


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_volumes(tmp_path_factory.mktemp("vol") / "data")


@pytest.fixture(scope="module")
def trained(volumes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    args = [
        "train",
        "--preset",
        "tiny",
        "--genotype",
        "paper",
        "--data-root",
        str(volumes),
        "-o",
        str(out),
        "-q",
    ]
    extra = ["iterations=4", "batch_size=2", "checkpoint_every=2", "eval_every=0"]
    assert main(args + sets(VOLUME_DATA + VOLUME_MODEL + extra)) == 0
    return out


def test_training_a_volumetric_network_writes_a_3d_model_with_dice(trained: Path):
    model, info = load_model(trained / "model.pt")
    assert model.config.spatial_dims == 3 and model.config.in_channels == 1
    assert info.patch_size == [8, 8, 8] and info.step == 4
    assert info.dataset_options["split_order"] == "sorted"
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 1, *SHAPE)).shape == (1, 3, *SHAPE)
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    final = records[-1]
    assert final["split"] == "val" and final["volumes"] == 2 and 0.0 <= final["mean_dice"] <= 1.0
    split = json.loads((trained / "data_split.json").read_text())["splits"]
    assert split["test"] == ["case_008", "case_009"] and len(split["train"]) == 6


def test_training_resumes_and_extends(trained: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    assert main(["train", "--resume", str(copy), "-q", "--set", "iterations=6"]) == 0
    assert load_model(copy / "model.pt")[1].step == 6


def test_eval_scores_each_test_volume(trained: Path, tmp_path: Path):
    out = tmp_path / "eval.json"
    assert main(["eval", str(trained), "--split", "test", "--json", str(out), "-q"]) == 0
    data = json.loads(out.read_text())
    assert data["kind"] == "autodeeplab-eval" and data["num_volumes"] == 2
    assert [row["id"] for row in data["volumes"]] == ["case_008", "case_009"]
    assert set(data["per_class_dice"]) == {"background", "class 1", "class 2"}
    assert data["window"] == [8, 8, 8]
    info = load_model(trained / "model.pt")[1]
    assert (data["step"], data["iterations"]) == (info.step, info.iterations) and info.step > 0


def test_eval_refuses_image_flags_for_volumes_and_mirrors_with_flip(trained: Path, tmp_path: Path, capsys):
    assert main(["eval", str(trained), "--scales", "0.5", "1", "--no-json"]) == 2
    assert "not volumes" in capsys.readouterr().err
    out = tmp_path / "mirrored.json"
    assert main(["eval", str(trained), "--split", "test", "--flip", "--json", str(out), "-q"]) == 0
    assert "mirrored 8 ways" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["mirror"] is True and data["num_volumes"] == 2 and data["largest_component"] is False
    kept = tmp_path / "largest.json"
    args = ["eval", str(trained), "--split", "test", "--largest-component", "--json", str(kept), "-q"]
    assert main(args) == 0
    assert json.loads(kept.read_text())["largest_component"] is True


def test_predict_writes_labels_on_the_input_grid(trained: Path, volumes: Path, tmp_path: Path):
    source = volumes / "images" / "case_001.nii.gz"
    out = tmp_path / "pred"
    assert main(["predict", str(trained), str(source), "-o", str(out)]) == 0
    written = nib.load(out / "case_001_label.nii.gz")
    assert written.shape == SHAPE
    np.testing.assert_array_equal(written.affine, AFFINE)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
    assert (out / "case_001_slices.png").stat().st_size > 0
    assert main(["predict", str(trained), str(source), "-o", str(out)]) == 0  # ours: replaced


def test_predict_tells_a_one_channel_model_that_a_4d_volume_has_too_many_channels(
    trained: Path, volumes: Path, tmp_path: Path, capsys
):
    two = np.stack([np.asarray(nib.load(volumes / "images" / "case_001.nii.gz").dataobj)] * 2, axis=-1)
    path = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(two.astype(np.float32), AFFINE), str(path))
    assert main(["predict", str(trained), str(path), "-o", str(tmp_path / "out")]) == 2
    assert f"{path}: 2 channels, but the model takes 1" in capsys.readouterr().err


def test_predict_keeps_a_file_it_did_not_write(trained: Path, volumes: Path, tmp_path: Path, capsys):
    out = tmp_path / "pred"
    out.mkdir()
    foreign = out / "case_001_label.nii.gz"
    foreign.write_bytes(b"user data")
    code = main(["predict", str(trained), str(volumes / "images" / "case_001.nii.gz"), "-o", str(out)])
    assert code == 2 and foreign.read_bytes() == b"user data"
    assert "not written by autodeeplab" in capsys.readouterr().err


def test_a_2d_network_on_volumes_is_refused_with_the_fix(volumes: Path, tmp_path: Path, capsys):
    args = [
        "train",
        "--preset",
        "tiny",
        "--genotype",
        "paper",
        "--data-root",
        str(volumes),
        "-o",
        str(tmp_path / "r"),
    ]
    assert main(args + sets(VOLUME_DATA)) == 2
    err = capsys.readouterr().err
    assert "model.spatial_dims: 2 (images)" in err and "--set model.spatial_dims=3" in err
    assert not (tmp_path / "r").exists()


def test_a_3d_search_finds_an_architecture_and_resumes(volumes: Path, tmp_path: Path):
    out = tmp_path / "search"
    space = ["space.spatial_dims=3", "space.filter_multiplier=2", "space.num_layers=2", "space.num_blocks=2"]
    data = [*VOLUME_DATA, "space.stem_channels=[4,4,8]", "data.max_val_images=1"]
    loop = ["epochs=1", "arch_start_epoch=0", "batch_size=2", "steps_per_epoch=1", "device=cpu"]
    args = ["search", "--preset", "cpu", "--data-root", str(volumes), "-o", str(out), "-q"]
    assert main(args + sets(space + data + loop)) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "val_dice" in record and "val_miou" not in record
    genotype = json.loads((out / "genotype.json").read_text())
    assert len(genotype["network_path"]) == 2
    assert main(["search", "--resume", str(out), "-q", "--set", "epochs=2"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_dice_ce_equals_monai_without_ignored_voxels_and_skips_ignored_ones():
    from monai.losses import DiceCELoss as MonaiDiceCE

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 5, 6))
    ours = DiceCELoss()(logits, target)
    reference = MonaiDiceCE(include_background=False, to_onehot_y=True, softmax=True)(logits, target[:, None])
    torch.testing.assert_close(ours, reference)
    # An ignored voxel changes nothing, whatever the network says there.
    masked = target.clone()
    masked[0, 0, 0, 0] = 255
    changed = logits.detach().clone()
    changed[0, :, 0, 0, 0] = torch.tensor([9.0, -9.0, 3.0])
    a, b = DiceCELoss()(logits.detach(), masked), DiceCELoss()(changed, masked)
    torch.testing.assert_close(a, b)


def test_search_estimate_counts_a_3d_supernet_on_its_patch(volumes: Path, capsys):
    space = ["space.spatial_dims=3", "space.filter_multiplier=2", "space.num_layers=2", "space.num_blocks=2"]
    data = [*VOLUME_DATA, "space.stem_channels=[4,4,8]", "batch_size=2", "device=cpu"]
    args = ["search", "--preset", "cpu", "--data-root", str(volumes), "--estimate", "--estimate-no-time"]
    assert main(args + sets(space + data)) == 0
    assert "estimate for patch 8x8x8, batch 2" in capsys.readouterr().out
    from autodeeplab.config.settings import load_config
    from autodeeplab.search.config import SearchConfig
    from autodeeplab.search.estimate import estimate_search

    config = load_config(SearchConfig, preset="cpu", overrides=[*space, *data, f"data.root={volumes}"])
    estimate = estimate_search(config, torch.device("cpu"), measure_time=False)
    assert estimate.saved_bytes_weight_step > 0 and estimate.sample_shape == (8, 8, 8)
    # 6 training volumes: trainA and trainB of 3, one step of 2 per epoch; 2 val volumes.
    assert estimate.steps_per_epoch == 1 and estimate.val_images == 2


def test_a_3d_preset_on_images_is_told_about_dimensions_not_crop_size(tmp_path: Path, capsys):
    args = ["train", "--preset", "hippocampus", "--genotype", "paper", "--dataset", "synthetic"]
    assert main(args + ["-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "model.spatial_dims: 3 (volumes)" in err and "--set model.spatial_dims=2" in err
    assert "crop_size" not in err and not (tmp_path / "r").exists()


def test_channels_last_volumes_give_the_default_layouts_outputs_and_gradients():
    """The CPU speed layout for 3D (runs.device.preferred_memory_format) changes no number beyond float
    rounding: train-mode BatchNorm, separable and atrous cells, ASPP and the fine stage, both passes."""
    from autodeeplab.nets.network import build_network
    from autodeeplab.runs.device import preferred_memory_format

    cpu = torch.device("cpu")
    assert preferred_memory_format(cpu, 3) == torch.channels_last_3d
    assert preferred_memory_format(cpu, 2) == torch.contiguous_format
    assert preferred_memory_format(torch.device("cuda"), 3) == torch.contiguous_format
    small = {"filter_multiplier": 2, "num_classes": 3, "stem_channels": (4, 4, 8), "aspp_channels": 8}
    small |= {"decoder_channels": 8, "low_level_channels": 4, "in_channels": 1, "spatial_dims": 3}
    small |= {"fine_skip_channels": 4, "aspp_dropout": 0.0}
    torch.manual_seed(0)
    net = build_network("paper", **small)
    x = torch.randn(2, 1, 12, 16, 12)
    target = torch.randint(0, 3, (2, 12, 16, 12))

    def step(model, images):
        model.zero_grad()
        out = model(images)
        torch.nn.functional.cross_entropy(out, target).backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    ref_out, ref_grads = step(net, x)
    net.to(memory_format=torch.channels_last_3d)
    conv_weights = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in conv_weights)
    out, grads = step(net, x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)


def test_the_fine_decoder_stage_is_off_by_default_and_trains_when_on():
    from autodeeplab.nets.network import AutoDeepLabNet, build_network

    small = {"filter_multiplier": 2, "num_classes": 3, "stem_channels": (4, 4, 8), "aspp_channels": 8}
    small |= {"decoder_channels": 8, "low_level_channels": 4, "in_channels": 1, "spatial_dims": 3}
    plain = build_network("paper", **small)
    assert plain.fine_decoder is None and not any(k.startswith("fine") for k in plain.state_dict())
    torch.manual_seed(0)
    net = build_network("paper", **small, fine_skip_channels=4)
    x = torch.randn(2, 1, 11, 14, 9)
    out = net(x)
    assert out.shape == (2, 3, 11, 14, 9)
    out.square().mean().backward()
    assert net.fine_decoder.reduce[0].weight.grad.abs().sum() > 0  # the stem's stride-2 features are used
    # The setting travels with the model file's config and rebuilds the same network.
    rebuilt = AutoDeepLabNet.from_config_dict(net.config_dict())
    rebuilt.load_state_dict(net.state_dict())
    net.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), net(x))


def test_the_full_resolution_stage_needs_the_fine_one_and_trains():
    from autodeeplab.errors import ConfigError
    from autodeeplab.nets.network import AutoDeepLabNet, build_network

    small = {"filter_multiplier": 2, "num_classes": 3, "stem_channels": (4, 4, 8), "aspp_channels": 8}
    small |= {"decoder_channels": 8, "low_level_channels": 4, "in_channels": 1, "spatial_dims": 3}
    with pytest.raises(ConfigError, match="full_skip_channels: 4 needs the stride-2 stage"):
        build_network("paper", **small, full_skip_channels=4)
    torch.manual_seed(0)
    net = build_network("paper", **small, fine_skip_channels=4, full_skip_channels=4)
    assert isinstance(net.fine_decoder.classifier, torch.nn.Identity)  # features go on to full resolution
    x = torch.randn(2, 1, 11, 14, 9)
    out = net(x)
    assert out.shape == (2, 3, 11, 14, 9)
    out.square().mean().backward()
    assert net.full_decoder.reduce[0].weight.grad.abs().sum() > 0  # the input itself is used
    rebuilt = AutoDeepLabNet.from_config_dict(net.config_dict())
    rebuilt.load_state_dict(net.state_dict())
    net.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), net(x))


def train_args(root: Path, out: Path, *extra: str) -> list[str]:
    args = [
        "train",
        "--preset",
        "tiny",
        "--genotype",
        "paper",
        "--data-root",
        str(root),
        "-o",
        str(out),
        "-q",
    ]
    return args + sets([*VOLUME_DATA, *VOLUME_MODEL, "iterations=2", "batch_size=2", *extra])


def test_a_broken_volume_stops_a_training_before_anything_is_written(tmp_path: Path, capsys):
    root = write_volumes(tmp_path / "data")
    label = root / "labels" / "case_004.nii.gz"  # a training volume (sorted: 0..5 train)
    label.write_bytes(label.read_bytes()[: len(label.read_bytes()) // 2])
    assert main(train_args(root, tmp_path / "run", "checkpoint_every=1")) == 2
    assert "case_004.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_single_sample_batch_is_one_line_and_leaves_nothing(volumes: Path, tmp_path: Path, capsys):
    assert main(train_args(volumes, tmp_path / "run", "batch_size=1")) == 2
    assert "batch_size: 1 leaves batch norm a single value" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_export_and_the_pipeline_refuse_volumes_in_one_line(
    trained: Path, volumes: Path, tmp_path: Path, capsys
):
    assert main(["export", str(trained), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "ONNX export is for 2D models" in capsys.readouterr().err
    assert main(["run", "--dataset", "nifti", "--data-root", str(volumes), "-o", str(tmp_path / "p")]) == 2
    assert "autodeeplab run is for images" in capsys.readouterr().err


def test_eval_refuses_a_folder_whose_split_changed_since_training(trained: Path, tmp_path: Path, capsys):
    import shutil

    import yaml

    root = tmp_path / "data"
    shutil.copytree(yaml.safe_load((trained / "config.yaml").read_text())["data"]["root"], root)
    for kind in ("images", "labels"):  # a new last id moves the sorted test split
        shutil.copy(root / kind / "case_000.nii.gz", root / kind / "case_999.nii.gz")
    assert main(["eval", str(trained), "--data-root", str(root), "--split", "test", "--no-json"]) == 2
    assert "changed since this run started" in capsys.readouterr().err


def test_data_check_and_stats_take_the_runs_split_order(volumes: Path, tmp_path: Path, capsys):
    split = ["--split-order", "sorted", "--split-fractions", "0.2", "0.2"]
    assert main(["data", "check", "--dataset", "nifti", "--data-root", str(volumes), *split]) == 0
    assert "train 6, val 2, test 2" in capsys.readouterr().out
    out = tmp_path / "stats"
    assert (
        main(["data", "stats", "--dataset", "nifti", "--data-root", str(volumes), *split, "-o", str(out)])
        == 0
    )
    stats = json.loads((out / "stats.json").read_text())
    assert "test" in json.dumps(stats) and (out / "class_voxels.png").exists()
    assert main(["data", "check", "--dataset", "synthetic", *split]) == 2
    assert "for volume datasets" in capsys.readouterr().err
