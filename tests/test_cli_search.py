"""The CLI end to end on the built-in synthetic data: search, decode, the whole pipeline, and bad input."""

import json

import numpy as np
import pytest
from PIL import Image
from tiny import SUPERNET, SYNTHETIC_SEARCH_DATA

from autodeeplab.cli.main import main
from autodeeplab.data.synthetic import CLASS_NAMES, PALETTE

TINY_SEARCH = [
    *SUPERNET,
    *SYNTHETIC_SEARCH_DATA,
    "batch_size=2",
    "epochs=2",
    "arch_start_epoch=1",
    "device=cpu",
]


def sets(flag, items):
    return [part for item in items for part in (flag, item)]


def test_search_cli_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["search", "--quiet", "-o", str(run), *sets("--set", TINY_SEARCH)]) == 0
    out = capsys.readouterr().out
    assert "found architecture" in out and "block 1:" in out and "output stride" in out
    for name in ("config.yaml", "split.json", "arch_params.json", "genotype.json", "metrics.jsonl"):
        assert (run / name).is_file()
    assert sorted(p.name for p in (run / "plots").glob("*.png")) == [
        "arch_history.png",
        "cell.png",
        "curves.png",
        "network_path.png",
    ]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and all(0 <= m["val_miou"] <= 1 for m in metrics)

    # decode the written arch_params again: same genotype as the search wrote
    decoded = tmp_path / "decoded.json"
    assert main(["decode", str(run / "arch_params.json"), "-o", str(decoded)]) == 0
    assert json.loads(decoded.read_text()) == json.loads((run / "genotype.json").read_text())


def test_pipeline_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "pipe"
    args = ["run", "--quiet", "-o", str(out), *sets("--search-set", TINY_SEARCH)]
    args += sets("--train-set", ["iterations=4", "model.filter_multiplier=2", "data.crop_size=32",
                                 "data.synthetic_size=[32,32]", "data.synthetic_train_samples=8",
                                 "data.synthetic_eval_samples=2", "eval_every=0"])  # fmt: skip
    assert main(args) == 0
    assert "test mIoU" in capsys.readouterr().out
    assert (out / "search" / "genotype.json").is_file() and (out / "train" / "model.pt").is_file()
    result = json.loads((out / "eval.json").read_text())
    assert 0 <= result["miou"] <= 1 and result["split"] == "test"
    names = sorted(p.name for p in (out / "predictions").iterdir())
    assert names == [f"sample{i:03d}_{kind}.png" for i in range(4) for kind in ("label", "overlay", "panel")]
    for i in range(4):
        with Image.open(out / "predictions" / f"sample{i:03d}_label.png") as label:
            assert label.mode == "P" and label.size == (32, 32)  # the synthetic images, 32x32
            assert label.getpalette()[:3] == list(PALETTE[0])  # the dataset's colours
            assert np.asarray(label).max() < len(CLASS_NAMES)  # class indices, nothing else


@pytest.mark.parametrize(
    "argv,message",
    [
        (["search", "--set", "epochs=-1"], "epochs: must be at least 1"),
        (["search", "--set", "serch.lr=1"], "unknown key 'serch.lr'"),
        (["search", "--preset", "nope"], "invalid choice: 'nope'"),
        (["search", "--dataset", "camvid", "--data-root", "/nonexistent"], "/nonexistent"),
        (["search", "--resume", "/nonexistent/run"], "not a search run directory"),
        (["decode", "/nonexistent/arch.json"], "no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0 and "Traceback" not in err


def test_output_directory_of_someone_else_is_not_touched(tmp_path, capsys):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert main(["search", "-o", str(precious), *sets("--set", TINY_SEARCH)]) == 2
    assert sorted(p.name for p in precious.iterdir()) == ["notes.txt"]
    assert "not empty" in capsys.readouterr().err
