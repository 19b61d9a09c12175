"""Nothing of the user's is overwritten: every command that writes, with ``-o`` at each of its own inputs
and at a foreign file, is refused in one line (exit 2) and leaves every byte on disk as it was (issue 18)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli_show import _fake_search_run
from tiny import SMALL

from autodeeplab.cli.main import main
from autodeeplab.config.settings import load_config
from autodeeplab.data.camvid import CLASS_NAMES, PALETTE
from autodeeplab.nets.model_file import TrainedInfo, save_trained
from autodeeplab.outputs import check_output_file, is_our_png, png_bytes
from autodeeplab.train.config import TrainConfig
from autodeeplab.train.loop import build_model

TINY_MODEL = ["model.filter_multiplier=2", "model.aspp_channels=8", "model.decoder_channels=8"]


def snapshot(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (and the folders, as empty strings)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(root.rglob("*"))
    }


def write_png(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def user(tmp_path: Path) -> Path:
    """A user's folder: a search run, a trained run, images with their own ``a_label.png``, foreign files."""
    _fake_search_run(tmp_path / "search")
    train = tmp_path / "train"
    train.mkdir()
    config = load_config(TrainConfig, preset="tiny", overrides=TINY_MODEL)
    info = TrainedInfo("camvid", list(CLASS_NAMES), [list(c) for c in PALETTE], 255)
    save_trained(train / "model.pt", build_model(SMALL, config, len(CLASS_NAMES)), info)
    write_png(tmp_path / "images" / "a.png", 1)
    write_png(tmp_path / "images" / "a_label.png", 2)  # the user's own annotation, not a prediction
    (tmp_path / "notes.txt").write_text("my notes\n")
    write_png(tmp_path / "figures" / "cell.png", 3)  # a picture the user made
    write_png(tmp_path / "preds" / "a_overlay.png", 4)
    return tmp_path


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


CASES = [
    # (argv with {root}, words the message must hold)
    (["export", "{root}/train/model.pt", "-o", "{root}/train/model.pt", "--no-check"], "inputs"),
    (["export", "{root}/train", "-o", "{root}/train/model.pt", "--no-check"], "inputs"),
    (["export", "{root}/train/model.pt", "-o", "{root}/train/model.pt", "--overwrite"], "inputs"),
    (["export", "{root}/train/model.pt", "-o", "{root}/notes.txt", "--no-check"], "--overwrite"),
    (["export", "{root}/train/model.pt", "-o", "{root}/notes.txt/x.onnx"], "not a folder"),
    (["decode", "{root}/search/arch_params.json", "-o", "{root}/search/arch_params.json"], "inputs"),
    (
        ["decode", "{root}/search/arch_params.json", "-o", "{root}/search/arch_params.json", "--overwrite"],
        "inputs",
    ),
    (["decode", "{root}/search/arch_params.json", "-o", "{root}/notes.txt"], "--overwrite"),
    (["decode", "{root}/search/arch_params.json", "-o", "{root}/search"], "folder"),
    (["show", "{root}/search/genotype.json", "-o", "{root}/figures"], "--overwrite"),
    (["show", "{root}/search", "-o", "{root}/figures"], "--overwrite"),
    (["show", "paper", "-o", "{root}/notes.txt"], "not a folder"),
    (["predict", "{root}/train/model.pt", "{root}/images", "-o", "{root}/images"], "read back"),
    (["predict", "{root}/train/model.pt", "{root}/images/a.png", "-o", "{root}/images"], "read back"),
    (["predict", "{root}/train/model.pt", "{root}/images/a.png", "-o", "{root}/preds"], "--overwrite"),
    (["predict", "{root}/train/model.pt", "{root}/images/a.png", "-o", "{root}/notes.txt"], "not a folder"),
    (["run", "-q", "-o", "{root}/figures"], "not empty"),
    (["run", "-q", "-o", "{root}/notes.txt"], "is a file"),
]


@pytest.mark.parametrize(("argv", "words"), CASES, ids=[" ".join(c[0][:1] + c[0][2:]) for c in CASES])
def test_outputs_never_replace_inputs_or_foreign_files(user, argv, words, capsys):
    before = snapshot(user)
    err = refused([a.format(root=user) for a in argv], capsys)
    assert words in err, err
    assert snapshot(user) == before


def test_our_own_outputs_may_be_replaced_and_overwrite_is_the_way_for_others(user, capsys):
    model, image = str(user / "train" / "model.pt"), str(user / "images" / "a.png")
    out = user / "out"
    assert main(["predict", model, image, "-o", str(out)]) == 0
    first = snapshot(out)
    assert is_our_png(out / "a_label.png") and is_our_png(out / "a_overlay.png")
    assert main(["predict", model, image, "-o", str(out)]) == 0  # ours: replaced without a flag
    assert snapshot(out) == first  # same model, same image, same bytes
    assert main(["show", str(user / "search"), "-o", str(out)]) == 0
    assert main(["show", str(user / "search"), "-o", str(out)]) == 0
    assert (
        main(
            [
                "decode",
                str(user / "search" / "arch_params.json"),
                "-o",
                str(user / "notes.txt"),
                "--overwrite",
            ]
        )
        == 0
    )
    assert (user / "notes.txt").read_text().lstrip().startswith("{")
    assert main(["predict", model, image, "-o", str(user / "preds"), "--overwrite"]) == 0
    assert is_our_png(user / "preds" / "a_overlay.png")
    capsys.readouterr()


def test_decode_and_export_replace_their_own_earlier_output(user, capsys):
    """A rerun may write over its own result: decode when the file holds what it would write (a genotype
    carries no mark of its writer), export when the ONNX file carries the export's mark."""
    arch, out = str(user / "search" / "arch_params.json"), user / "g.json"
    assert main(["decode", arch, "-o", str(out)]) == 0
    first = out.read_bytes()
    assert main(["decode", arch, "-o", str(out)]) == 0 and out.read_bytes() == first
    assert main(["decode", arch, "-o", str(user / "search" / "genotype.json")]) == 0  # the search's own
    other = first.replace(
        b'"version": 1', b'"version": 1, "note": 1'
    )  # another content (even an invalid one)
    out.write_bytes(other)
    assert "exists and holds something else; give another path, or --overwrite" in refused(
        ["decode", arch, "-o", str(out)], capsys
    )
    assert out.read_bytes() == other
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    model, onnx_file = str(user / "train" / "model.pt"), user / "m.onnx"
    for _ in range(2):
        assert main(["export", model, "-o", str(onnx_file), "--input-size", "32", "32", "--no-check"]) == 0
    capsys.readouterr()


def test_a_failed_atomic_write_names_the_file_asked_for(tmp_path, monkeypatch):
    """Not the temporary file beside it, an internal name."""
    import errno
    import tempfile

    from autodeeplab.fileio import atomic_write_text

    def full(prefix, suffix, dir):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(dir) / f"{prefix}x{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(OSError) as caught:
        atomic_write_text(tmp_path / "out.json", "{}")
    assert caught.value.filename == str(tmp_path / "out.json") and caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_png_marker_and_links(tmp_path):
    mine, theirs = tmp_path / "mine.png", tmp_path / "theirs.png"
    mine.write_bytes(png_bytes(Image.new("RGB", (3, 2))))
    Image.new("RGB", (3, 2)).save(theirs)
    (tmp_path / "text.png").write_text("not a png")
    assert is_our_png(mine) and not is_our_png(theirs) and not is_our_png(tmp_path / "text.png")
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "in.json")
    (tmp_path / "in.json").write_text("{}")
    with pytest.raises(Exception, match="inputs"):  # a symlink to an input is the input
        check_output_file(link, "-o", inputs=[tmp_path / "in.json"], overwrite=True)
    (tmp_path / "hard.json").hardlink_to(tmp_path / "in.json")
    with pytest.raises(Exception, match="inputs"):  # so is a hard link
        check_output_file(tmp_path / "hard.json", "-o", inputs=[tmp_path / "in.json"], overwrite=True)
    assert (
        check_output_file(tmp_path / "new.json", "-o", inputs=[tmp_path / "in.json"]) == tmp_path / "new.json"
    )
