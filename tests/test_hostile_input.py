"""Hostile files and numbers: whatever the JSON, YAML and image libraries raise on them, and whatever value
a config or a JSON file holds, every command answers with one line and exit 2 (issue 18)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_outputs import user  # noqa: F401  (the fixture: a search run, model.pt, images)

from autodeeplab.cli.main import main


def png_with_size(width: int, height: int) -> bytes:
    """A 1×1 PNG whose header claims ``width`` × ``height`` (with a valid CRC): a decompression bomb."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8  # after the signature: length (4), "IHDR" (4), 13 bytes of header, CRC (4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21]))
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def broken_crc_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[29] ^= 0xFF  # the IHDR chunk's CRC
    return bytes(data)


def truncated_png() -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()[:200]


IMAGES = {
    "bomb.png": png_with_size(20000, 20000),
    "crc.png": broken_crc_png(),
    "cut.png": truncated_png(),
    "empty.png": b"",
    "noise.png": bytes(range(256)) * 4,
}

DEEP = "[" * 100_000 + "]" * 100_000
LONG_INT = "9" * 5000
BEYOND_FLOAT = "9" * 400  # within Python's int parsing limit, beyond float64's range


def arch_params(user: Path, **change) -> str:  # noqa: F811
    data = json.loads((user / "search" / "arch_params.json").read_text())
    data.update(change)
    return json.dumps(data)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_hostile_images_are_one_line(user, name, capsys):  # noqa: F811
    path = user / name
    path.write_bytes(IMAGES[name])
    code = main(["predict", str(user / "train" / "model.pt"), str(path), "-o", str(user / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(path) in err, err
    assert not (user / "out").exists() or not any((user / "out").iterdir())


def hostile_json(user: Path) -> dict[str, str]:  # noqa: F811
    alpha = json.loads(arch_params(user))["alpha"]
    return {
        "deep": DEEP,
        "long_int": arch_params(user).replace('"alpha": [', f'"alpha": [[{LONG_INT}], ', 1),
        "nan": arch_params(user, alpha=[[float("nan")] * len(alpha[0])] * len(alpha)),
        "infinity": arch_params(user).replace("0.", "Infinity, 0.", 1),
        "negative": arch_params(user, alpha=[[-1.0] * len(alpha[0])] * len(alpha)),
        "strings": arch_params(user, alpha=[["x"] * len(alpha[0])] * len(alpha)),
        "utf16": arch_params(user).encode("utf-16").decode("latin-1"),
        "beyond_float": arch_params(user).replace('"alpha": [', f'"alpha": [[{BEYOND_FLOAT}], ', 1),
        "primitives": arch_params(user, primitives=5),
    }


CASES = ["deep", "long_int", "nan", "infinity", "negative", "strings", "utf16", "beyond_float", "primitives"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", ["decode", "show"])
def test_hostile_arch_params_are_one_line(user, case, command, capsys):  # noqa: F811
    path = user / f"{case}.json"
    path.write_text(hostile_json(user)[case], encoding="latin-1" if case == "utf16" else "utf-8")
    argv = {"decode": ["decode", str(path)], "show": ["show", str(path), "--no-plots"]}[command]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(path) in err, err


GENOTYPES = {
    "deep": DEEP,
    "long_int": '{"version": 1, "network_path": [' + LONG_INT + "]}",
    "level": '{"version": 1, "network_path": [0, 99], "cell": []}',
    "bool": '{"version": 1, "network_path": [0, true], "cell": []}',
    "nan": '{"version": NaN, "network_path": [0], "cell": []}',
}


@pytest.mark.parametrize("case", sorted(GENOTYPES))
def test_hostile_genotypes_are_one_line_and_write_nothing(user, case, capsys):  # noqa: F811
    path = user / f"{case}.json"
    path.write_text(GENOTYPES[case])
    code = main(["train", "--genotype", str(path), "--preset", "tiny", "-o", str(user / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(path) in err, err
    assert not (user / "run").exists()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("epochs: " + "[" * 50_000, "not valid YAML"),
        (f"seed: {LONG_INT}", "not valid YAML"),
        ("seed: -1", "seed: must be an integer in [0, 2**32)"),
        (f"seed: {2**32}", "seed: must be an integer in [0, 2**32)"),
        ("lr: .inf", "lr: must be positive"),
        ("lr: .nan", "lr"),
        (f"lr: {BEYOND_FLOAT}", "lr: expected float"),
        ("epochs: 4\narch_start_epoch: 4", "arch_start_epoch: must be less than epochs (4)"),
        ("data:\n  max_val_images: 0", "data.max_val_images: must be at least 1 or null"),
    ],
)
def test_hostile_settings_are_refused_by_runs_and_estimates_alike(tmp_path, text, words, capsys):
    config = tmp_path / "settings.yaml"
    config.write_text(text + "\n")
    for extra in (["-o", str(tmp_path / "run")], ["--estimate-no-time"]):
        code = main(["search", "--config", str(config), "--quiet", *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "run").exists()


def test_train_seed_is_range_checked(tmp_path, capsys):
    code = main(["train", "--genotype", "paper", "--preset", "tiny", "--set", "seed=-3", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "seed: must be an integer in [0, 2**32), got -3" in err, err
