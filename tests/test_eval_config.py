"""The evaluation's typed config (presets, YAML, --set, flags), its results JSON, and written file modes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from autodeeplab import __version__
from autodeeplab.cli import evaluate as cli_evaluate
from autodeeplab.cli.main import build_parser, main
from autodeeplab.config.settings import config_to_dict, dump_config_yaml, load_config, preset_names
from autodeeplab.data.synthetic import CLASS_NAMES, PALETTE
from autodeeplab.errors import ConfigError
from autodeeplab.fileio import atomic_write_bytes, current_umask
from autodeeplab.infer.evaluate import (
    EVAL_JSON_KIND,
    PAPER_MULTI_SCALE,
    PAPER_SCALES,
    EvalConfig,
    InferenceSettings,
    is_eval_json,
)
from autodeeplab.nets.model_file import TrainedInfo, save_trained
from autodeeplab.nets.network import AutoDeepLabNet, NetworkConfig
from autodeeplab.space.autodeeplab.genotype import Genotype

SIZE = [24, 24]  # synthetic images of the fake checkpoint (the network takes any size)
TINY_GENOTYPE = Genotype(network_path=(0, 1), cell=((("atr_conv_3x3", 0), ("skip_connect", 1)),))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained but complete model.pt on the synthetic data: what eval needs, in well under a second."""
    net = AutoDeepLabNet(
        TINY_GENOTYPE,
        NetworkConfig(filter_multiplier=2, num_classes=len(CLASS_NAMES), aspp_channels=4, decoder_channels=4),
    )
    info = TrainedInfo(
        dataset="synthetic",
        class_names=list(CLASS_NAMES),
        palette=[list(c) for c in PALETTE],
        ignore_index=255,
        dataset_options={"size": SIZE, "seed": 0},
    )
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_trained(path, net, info)
    return path


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    prefix = "autodeeplab eval: error: "
    assert err.startswith(prefix), err
    return err[len(prefix) :]


# --- the config -------------------------------------------------------------------------------------


def test_presets_paper_is_multi_scale_flip_and_cpu_is_single_scale() -> None:
    assert preset_names(EvalConfig) == ["cpu", "paper"]
    paper = load_config(EvalConfig, preset="paper")
    assert paper.scales == PAPER_SCALES == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) and paper.flip is True
    assert paper.inference_settings() == PAPER_MULTI_SCALE
    cpu = load_config(EvalConfig, preset="cpu")
    assert cpu == EvalConfig() and cpu.inference_settings() == InferenceSettings()
    assert (cpu.split, cpu.max_images, cpu.window, cpu.device) == ("val", None, None, "auto")


def test_yaml_then_overrides_and_round_trip(tmp_path: Path) -> None:
    (tmp_path / "eval.yaml").write_text("split: test\nscales: [0.75, 1, 1.25]\nwindow: [16, 20]\n")
    cfg = load_config(
        EvalConfig, preset="paper", yaml_path=tmp_path / "eval.yaml", overrides=["max_images=7", "flip=false"]
    )
    assert (cfg.split, cfg.scales, cfg.flip, cfg.window, cfg.max_images) == (
        "test",
        (0.75, 1.0, 1.25),
        False,
        (16, 20),
        7,
    )
    dump_config_yaml(cfg, tmp_path / "resolved.yaml", extra={"autodeeplab_version": __version__})
    assert load_config(EvalConfig, yaml_path=tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("scals=[1]", "override 'scals=[1]': unknown key 'scals' (did you mean 'scales'?)"),
        ("max_image=3", "override 'max_image=3': unknown key 'max_image' (did you mean 'max_images'?)"),
        ("scales=[1,0]", "scales: must be positive, got [1.0, 0.0]"),
        ("scales=[]", "scales: must be positive, got []"),
        ("max_images=0", "max_images: must be at least 1 or null, got 0"),
        ("window=[0,4]", "window: must be two (images) or three (volumes) positive sizes, got [0, 4]"),
        ("window_overlap=1", "window_overlap: must be in [0, 1), got 1.0"),
        ("split=''", "split: must not be empty"),
    ],
)
def test_bad_settings_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(EvalConfig, overrides=[override])
    assert str(info.value) == message


def test_cli_flags_override_preset_and_set(checkpoint: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(
        [
            "eval",
            str(checkpoint),
            "--preset",
            "paper",
            "--set",
            "split=test",
            "--no-flip",
            "--scales",
            "1",
            "2",
        ]
    )
    cfg = cli_evaluate.resolve_eval_config(args)
    assert (cfg.split, cfg.scales, cfg.flip) == ("test", (1.0, 2.0), False)
    args = parser.parse_args(["eval", str(checkpoint), "--preset", "paper", "--split", "train"])
    cfg = cli_evaluate.resolve_eval_config(args)
    assert (cfg.split, cfg.scales, cfg.flip) == ("train", PAPER_SCALES, True)


def test_cli_mistyped_set_key_is_one_line(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(checkpoint), "--set", "flipp=true"]) == 2
    assert one_line_error(capsys) == "override 'flipp=true': unknown key 'flipp' (did you mean 'flip'?)"
    assert main(["eval", str(checkpoint), "--window", "0", "4"]) == 2
    assert one_line_error(capsys).endswith(
        "window: must be two (images) or three (volumes) positive sizes, got [0, 4]"
    )


# --- the results JSON -------------------------------------------------------------------------------


def test_eval_writes_json_beside_the_checkpoint_by_default(
    checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = checkpoint.parent / "eval-test.json"
    target.unlink(missing_ok=True)
    args = ["eval", str(checkpoint.parent), "--split", "test", "--max-images", "2", "-q"]
    assert main([*args, "--preset", "paper", "--set", "scales=[1,0.5]"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and f"results written to {target}" in out
    data = json.loads(target.read_text())
    assert data["kind"] == EVAL_JSON_KIND and data["autodeeplab_version"] == __version__
    assert data["checkpoint"] == str(checkpoint.resolve())
    assert (data["split"], data["num_images"], data["scales"], data["flip"]) == ("test", 2, [1.0, 0.5], True)
    expected = config_to_dict(EvalConfig(split="test", scales=(1.0, 0.5), flip=True, max_images=2))
    assert data["config"] == expected
    assert sum(map(sum, data["confusion"])) == 2 * SIZE[0] * SIZE[1]
    # Our own earlier result is replaced by the next evaluation.
    assert main([*args, "--max-images", "1"]) == 0
    assert json.loads(target.read_text())["num_images"] == 1


def test_a_foreign_file_at_the_default_place_is_left_alone(
    checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = checkpoint.parent / "eval-val.json"
    target.write_text('{"my": "notes"}\n')
    assert main(["eval", str(checkpoint), "--max-images", "1", "-q"]) == 0
    captured = capsys.readouterr()
    assert "mIoU" in captured.out  # the table is still printed
    assert captured.err.strip() == (
        f"note: results JSON not written: {target} exists and is not an autodeeplab eval result; "
        "not overwriting it"
    )
    assert target.read_text() == '{"my": "notes"}\n'
    # Named explicitly, such a file is refused before anything runs.
    assert main(["eval", str(checkpoint), "--max-images", "1", "--json", str(target)]) == 2
    assert one_line_error(capsys) == (
        f"--json: {target} exists and is not an autodeeplab eval result; not overwriting it"
    )
    assert target.read_text() == '{"my": "notes"}\n'
    target.unlink()


def test_an_unwritable_folder_is_one_line_and_the_table_still_prints(
    checkpoint: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(path, *args, **kwargs):  # what a read-only folder does (tests may run as root)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("autodeeplab.infer.evaluate.atomic_write_json", refuse)
    assert main(["eval", str(checkpoint), "--max-images", "1", "-q"]) == 0
    captured = capsys.readouterr()
    assert "mIoU" in captured.out
    target = checkpoint.parent / "eval-val.json"
    assert captured.err.strip() == (
        f"note: results JSON not written: cannot write {target} (Permission denied); "
        "give --json OUT to write elsewhere"
    )


def test_a_json_path_that_cannot_be_written_is_refused_before_the_evaluation(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "notes"
    blocker.write_text("mine\n")
    ran = []
    monkeypatch.setattr("autodeeplab.infer.evaluate.evaluate", lambda *a, **k: ran.append(1))
    assert main(["eval", str(checkpoint), "--max-images", "1", "--json", str(blocker / "e.json")]) == 2
    assert (
        one_line_error(capsys)
        == f"--json: {blocker} is a file, not a folder, so {blocker / 'e.json'} cannot be written"
    )

    def refuse(*args, **kwargs):  # what a read-only folder does (tests may run as root)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.TemporaryFile", refuse)
    target = tmp_path / "new" / "e.json"
    assert main(["eval", str(checkpoint), "--max-images", "1", "--json", str(target)]) == 2
    assert one_line_error(capsys) == (
        f"--json: cannot write {target}: no file can be made in {tmp_path} (Permission denied)"
    )
    assert ran == [] and blocker.read_text() == "mine\n" and not (tmp_path / "new").exists()


def test_a_model_of_an_unfinished_training_is_noted_and_its_step_recorded(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autodeeplab.nets.model_file import load_model, save_trained

    model, info = load_model(checkpoint)
    for step, noted in ((24, True), (60, False)):
        info.step, info.iterations = step, 60
        path = tmp_path / f"model-{step}.pt"
        save_trained(path, model, info)
        out = tmp_path / f"eval-{step}.json"
        assert main(["eval", str(path), "--max-images", "1", "-q", "--json", str(out)]) == 0
        err = capsys.readouterr().err
        if noted:
            assert (
                f"note: {path}: from a training stopped at step {step} of 60; these results are that step's"
                in err
            )
        else:
            assert "note:" not in err, err
        data = json.loads(out.read_text())
        assert (data["step"], data["iterations"]) == (step, 60)


def test_no_json_writes_nothing(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (checkpoint.parent / "eval-val.json").unlink(missing_ok=True)
    assert main(["eval", str(checkpoint), "--max-images", "1", "-q", "--no-json"]) == 0
    assert not (checkpoint.parent / "eval-val.json").exists()
    assert main(["eval", str(checkpoint), "--no-json", "--json", str(tmp_path / "x.json")]) == 2
    assert one_line_error(capsys) == "--json and --no-json contradict each other; give one"


def test_is_eval_json(tmp_path: Path) -> None:
    cases = {
        "ours.json": {"kind": EVAL_JSON_KIND, "miou": 0.1},
        "legacy.json": {"checkpoint": "m.pt", "num_images": 1, "scales": [1.0], "confusion": [], "miou": 0},
        "other.json": {"kind": "something-else", "miou": 0.1},
        "list.json": [1, 2],
    }
    for name, data in cases.items():
        (tmp_path / name).write_text(json.dumps(data))
    (tmp_path / "broken.json").write_text("{not json")
    found = {name: is_eval_json(tmp_path / name) for name in [*cases, "broken.json", "missing.json"]}
    assert found == {
        "ours.json": True,
        "legacy.json": True,
        "other.json": False,
        "list.json": False,
        "broken.json": False,
        "missing.json": False,
    }


# --- file modes -------------------------------------------------------------------------------------


def test_written_files_get_the_umask_mode_and_rewrites_keep_theirs(tmp_path: Path) -> None:
    if os.name != "posix":
        pytest.skip("file modes are POSIX")
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        atomic_write_bytes(tmp_path / "new.bin", b"x")
        assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o640  # 0o666 & ~0o027, not 0o600
        os.umask(0o002)
        atomic_write_bytes(tmp_path / "other.bin", b"x")
        assert stat.S_IMODE((tmp_path / "other.bin").stat().st_mode) == 0o664
        # Replacing a file keeps the mode its owner gave it, as open(path, "w") would.
        os.chmod(tmp_path / "new.bin", 0o600)
        atomic_write_bytes(tmp_path / "new.bin", b"y")
        assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o600
        assert (tmp_path / "new.bin").read_bytes() == b"y"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["new.bin", "other.bin"]  # no temp files left
    finally:
        os.umask(old)


def test_eval_refuses_data_whose_classes_are_the_models_in_another_order(checkpoint, tmp_path, capsys):
    from test_data_layouts import rgb, save

    def folder(names: list[str]) -> Path:
        root = tmp_path / "-".join(names[:2])
        root.mkdir()
        (root / "classes.yaml").write_text(json.dumps({"names": names}))
        for i in range(2):
            save(root / "images" / f"a{i}.png", rgb(i, 24, 24))
            save(root / "masks" / f"a{i}.png", (rgb(i, 24, 24)[..., 0] % len(names)).astype("uint8"))
        return root

    swapped = [CLASS_NAMES[1], CLASS_NAMES[0], *CLASS_NAMES[2:]]
    args = ["eval", str(checkpoint), "--dataset", "folder", "--split", "all", "--quiet"]
    assert main([*args, "--data-root", str(folder(swapped)), "--json", str(tmp_path / "x.json")]) == 2
    assert one_line_error(capsys) == (
        f"{checkpoint}: the checkpoint's classes {list(CLASS_NAMES)} are not folder all's {swapped} (in this "
        "order): its class i would be scored as the data's class i"
    )
    assert not (tmp_path / "x.json").exists()
    same = folder(list(CLASS_NAMES))
    assert main([*args, "--data-root", str(same), "--json", str(tmp_path / "y.json")]) == 0
