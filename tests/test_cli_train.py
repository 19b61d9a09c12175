"""train → eval → predict → export end to end on tiny synthetic runs, and their bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny import SMALL, SMALL_HEADS

from autodeeplab.cli.main import main
from autodeeplab.nets.model_file import load_model

TINY = [
    "data.crop_size=32",
    "data.synthetic_size=[32,32]",
    "data.synthetic_train_samples=4",
    "data.synthetic_eval_samples=3",
    *SMALL_HEADS,
    "iterations=2",
    "batch_size=2",
]
CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


def tiny_sets() -> list[str]:
    return [arg for item in TINY for arg in ("--set", item)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cli")
    SMALL.save(base / "genotype.json")
    out = base / "run"
    code = main(
        [
            "train",
            "--genotype",
            str(base / "genotype.json"),
            "--preset",
            "tiny",
            "-o",
            str(out),
            "-q",
            *tiny_sets(),
        ]
    )
    assert code == 0
    return out


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    prefix = f"autodeeplab {command}: error: "
    assert err.startswith(prefix), err
    return err[len(prefix) :]


def test_train_writes_a_run_whose_checkpoint_carries_everything(run_dir: Path) -> None:
    model, info = load_model(run_dir / "model.pt")
    assert model.genotype == SMALL and model.config.filter_multiplier == 4
    assert info.dataset == "synthetic" and info.num_classes == len(info.palette) == 6
    assert info.step == 2 and info.metrics is not None and info.metrics["split"] == "val"


def test_eval_json_matches_the_metrics_recorded_by_training(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    # training evaluated the first 3 val images (synthetic_eval_samples); samples do not depend on the count
    args = ["eval", str(run_dir / "model.pt"), "--split", "val", "--max-images", "3"]
    assert main([*args, "--json", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "pixel accuracy" in printed
    result = json.loads(out.read_text())
    _, info = load_model(run_dir)
    assert result["confusion"] == info.metrics["confusion"]
    assert result["miou"] == pytest.approx(info.metrics["miou"])
    assert (result["dataset"], result["split"], result["num_images"], result["scales"]) == (
        "synthetic",
        "val",
        3,
        [1.0],
    )


def test_eval_multi_scale_flags_reach_the_results(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ms.json"
    args = ["eval", str(run_dir), "--split", "test", "--scales", "0.5", "1", "--flip", "--max-images", "2"]
    assert main([*args, "--json", str(out), "-q"]) == 0
    result = json.loads(out.read_text())
    assert result["scales"] == [0.5, 1.0] and result["flip"] is True and result["num_images"] == 2
    assert sum(map(sum, result["confusion"])) == 2 * 32 * 32


def test_predict_writes_palette_pngs(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "street.png")
    assert (
        main(["predict", str(run_dir / "model.pt"), str(tmp_path / "street.png"), "-o", str(tmp_path / "o")])
        == 0
    )
    label = Image.open(tmp_path / "o" / "street_label.png")
    assert label.mode == "P" and label.size == (30, 20)
    assert np.array(label).max() < 6
    assert Image.open(tmp_path / "o" / "street_overlay.png").mode == "RGB"


def test_export_onnx_matches_pytorch(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("autodeeplab.infer.export", reason="autodeeplab.infer.export is not available")
    out = tmp_path / "m.onnx"
    assert (
        main(
            [
                "export",
                str(run_dir / "model.pt"),
                "--format",
                "onnx",
                "-o",
                str(out),
                "--input-size",
                "40",
                "56",
            ]
        )
        == 0
    )
    assert out.stat().st_size > 0
    assert "(ok)" in capsys.readouterr().out


# -- bad input: one line, exit 2, nothing written ------------------------------------------------------------
def test_negative_batch_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(
        ["train", "--genotype", "paper", "--preset", "tiny", "-o", str(out), "--set", "batch_size=-1"]
    )
    assert code == 2
    assert one_line_error(capsys, "train") == "batch_size: must be at least 1, got -1"
    assert not out.exists()


def test_bad_network_setting_names_the_model_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = [
        "train",
        "--genotype",
        "paper",
        "--preset",
        "tiny",
        "-o",
        str(out),
        "--set",
        "model.aspp_rates_os16=[6,0,18]",
    ]
    assert main(args) == 2
    assert one_line_error(capsys, "train") == (
        "model.aspp_rates_os16: must be a list of 3 positive integers, got [6, 0, 18]"
    )
    assert not out.exists()


def test_model_file_of_an_older_format_is_refused_in_one_line(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autodeeplab.checkpoint_io import load_checkpoint, save_checkpoint

    state = load_checkpoint(run_dir / "model.pt")
    state["model_format"], state["autodeeplab_version"] = 2, "0.1.0"
    old = tmp_path / "old.pt"
    save_checkpoint(old, state)
    expected = (
        f"{old}: trained-model format 2 (written by autodeeplab 0.1.0) is older than format 3, which this "
        "version reads (the found network's resizes align corners, as in the released model); retrain the "
        "model with this version"
    )
    for command in (["eval", str(old)], ["predict", str(old), "x.png"], ["export", str(old), "-o", "x.onnx"]):
        assert main(command) == 2
        assert one_line_error(capsys, command[0]) == expected
    assert not Path("x.onnx").exists()


def test_genotype_that_does_not_exist_or_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.json"
    assert main(["train", "--genotype", str(missing), "--preset", "tiny", "-o", str(tmp_path / "r")]) == 2
    assert one_line_error(capsys, "train").startswith(f"{missing}: not a built-in genotype")
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {"version": 1, "network_path": [0, 2], "cell": [[["sep_conv_3x3", 0], ["skip_connect", 1]]]}
        )
    )
    assert main(["train", "--genotype", str(bad), "--preset", "tiny", "-o", str(tmp_path / "r")]) == 2
    assert one_line_error(capsys, "train") == (
        f"{bad}: network_path[1]: level 2 jumps more than one level from level 0 of the layer before"
    )
    assert not (tmp_path / "r").exists()


def test_used_output_directory_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["train", "--genotype", "paper", "--preset", "tiny", "-o", str(out), *tiny_sets()]) == 2
    assert "run directory exists and is not empty" in one_line_error(capsys, "train")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_truncated_checkpoint(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cut = tmp_path / "cut.pt"
    data = (run_dir / "model.pt").read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    for command in (["eval", str(cut)], ["predict", str(cut), "x.png"], ["export", str(cut), "-o", "x.onnx"]):
        assert main(command) == 2
        name = "eval" if command[0] == "eval" else command[0]
        assert one_line_error(capsys, name).startswith(f"{cut}: truncated or corrupt checkpoint")
    assert not Path("x.onnx").exists()


def test_class_count_differs_from_the_checkpoint(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not CAMVID.is_dir():
        pytest.skip(f"CamVid not found at {CAMVID}")
    args = ["eval", str(run_dir / "model.pt"), "--dataset", "camvid", "--data-root", str(CAMVID), "-q"]
    assert main(args) == 2
    assert one_line_error(capsys, "eval") == (
        f"{run_dir / 'model.pt'}: the checkpoint predicts 6 classes (synthetic) but camvid val has 11"
    )


def test_unreadable_image_for_predict(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "o"
    assert main(["predict", str(run_dir), str(tmp_path / "broken.jpg"), "-o", str(out)]) == 2
    assert (
        one_line_error(capsys, "predict")
        == f"{tmp_path / 'broken.jpg'}: cannot read image (not a readable image)"
    )
    assert not out.exists()


def test_bad_inference_flags(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(run_dir), "--scales", "1", "-0.5"]) == 2
    assert one_line_error(capsys, "eval").endswith("scales: must be positive, got [1.0, -0.5]")
    assert main(["eval", str(run_dir), "--max-images", "0"]) == 2
    assert one_line_error(capsys, "eval") == "--max-images: must be a positive integer, got 0"


def test_crop_larger_than_the_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["train", "--genotype", "paper", "--preset", "tiny", "-o", str(out), "-q"]
    assert main([*args, "--set", "data.crop_size=100"]) == 2  # tiny: 64x64 images, scales up to 1.25
    message = one_line_error(capsys, "train")
    assert message.startswith("crop_size: 100x100 is larger than allowed: the images are")
    assert message.endswith("64x64 (HxW), 80x80 at the largest scale 1.25")
    assert not out.exists()  # nothing left behind: the same -o works once the crop is fixed


def test_an_architecture_of_an_unfinished_search_is_noted(tmp_path: Path, capsys) -> None:
    """From the run's metrics.jsonl and config.yaml; nothing for a finished search, a built-in name, a
    file outside a run, or a folder whose records cannot be read."""
    from autodeeplab.cli.train import note_unfinished_search, searched_epochs
    from autodeeplab.space.autodeeplab.genotype import PAPER

    run = tmp_path / "search"
    run.mkdir()
    PAPER.save(run / "genotype.json")
    (run / "config.yaml").write_text("epochs: 3\nbatch_size: 2\n")
    rows = [{"phase": "search", "epoch": e, "train_loss": 1.0} for e in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for spec in (str(run), str(run / "genotype.json")):
        assert searched_epochs(spec) == (2, 3)
        note_unfinished_search(spec)
        assert capsys.readouterr().err == (
            f"note: {spec}: from a search stopped after epoch 2 of 3; its architecture is that epoch's "
            "decoding (autodeeplab search --resume finishes the search)\n"
        )
    # through the CLI: noted before the training starts (here it then stops at a split that does not exist)
    out = tmp_path / "t"
    assert main(["train", "-q", "--genotype", str(run), "-o", str(out), "--set", "data.train_split=dev"]) == 2
    assert capsys.readouterr().err.startswith(f"note: {run}: from a search stopped after epoch 2 of 3;")
    (run / "config.yaml").write_text("epochs: 2\n")  # finished
    note_unfinished_search(str(run))
    assert capsys.readouterr().err == ""
    (run / "config.yaml").write_text("- not a mapping\n")
    assert searched_epochs(str(run)) is None
    assert searched_epochs("paper") is None
    PAPER.save(tmp_path / "g.json")
    assert searched_epochs(str(tmp_path / "g.json")) is None
