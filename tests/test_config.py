"""Typed configs: resolution order, YAML round trip, strict keys with suggestions, type errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from autodeeplab.config.schema import config_keys
from autodeeplab.config.settings import (
    config_from_dict,
    config_to_dict,
    dump_config_yaml,
    load_config,
    preset_names,
    read_run_info,
    register_presets,
)
from autodeeplab.errors import ConfigError


@dataclass
class DataCfg:
    crop: tuple[int, int] = (321, 321)
    root: Optional[str] = None  # noqa: UP045 -- Optional[...] must keep working for config authors
    name: str = "synthetic"


@dataclass
class SearchCfg:
    lr: float = 0.025
    epochs: int = 40
    amp: bool = False
    mode: Literal["first", "second"] = "first"
    levels: tuple[int, ...] = (4, 8, 16, 32)
    tags: list[str] = field(default_factory=list)
    out: Path = Path("runs")
    weights: dict[str, float] = field(default_factory=dict)
    limit: int | None = None


@dataclass
class RunCfg:
    seed: int = 0
    search: SearchCfg = field(default_factory=SearchCfg)
    data: DataCfg = field(default_factory=DataCfg)


register_presets(RunCfg, {"paper": {}, "cpu": {"search.epochs": 2, "data": {"crop": [64, 64]}}})


def _error(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(RunCfg, **kwargs)
    return str(info.value)


def test_defaults_are_the_dataclass_defaults():
    assert load_config(RunCfg) == RunCfg()
    assert preset_names(RunCfg) == ["paper", "cpu"]
    assert load_config(RunCfg, preset="paper") == RunCfg()


def test_resolution_order_defaults_preset_yaml_overrides(tmp_path):
    yaml_file = tmp_path / "my.yaml"
    yaml_file.write_text("search:\n  epochs: 5\n  lr: 0.5\ndata.name: camvid\n")
    cfg = load_config(RunCfg, preset="cpu", yaml_path=yaml_file, overrides=["search.lr=1e-3", "seed=7"])
    assert cfg.search.epochs == 5  # YAML beats preset
    assert cfg.search.lr == 0.001  # override beats YAML; "1e-3" (a string to PyYAML) is accepted for a float
    assert cfg.data.crop == (64, 64)  # preset beats default, list became a tuple
    assert cfg.data.name == "camvid"  # dotted key inside a YAML file
    assert cfg.seed == 7
    assert cfg.search.mode == "first"  # untouched default


def test_override_values_are_typed():
    cfg = load_config(
        RunCfg,
        overrides=[
            "data.name=123",  # a str field keeps the text
            "data.root=null",
            "search.limit=5",
            "search.amp=true",
            "search.tags=[a, b]",
            "search.mode=second",
            "search.out=/tmp/x",
            "search.weights={a: 1, b: 2.5}",
        ],
    )
    assert cfg.data.name == "123" and cfg.data.root is None
    assert cfg.search.limit == 5 and cfg.search.amp is True and cfg.search.tags == ["a", "b"]
    assert cfg.search.mode == "second" and cfg.search.out == Path("/tmp/x")
    assert cfg.search.weights == {"a": 1.0, "b": 2.5}


def test_yaml_round_trip_with_run_info(tmp_path):
    cfg = load_config(RunCfg, preset="cpu", overrides=["search.tags=[x]", "search.lr=0.125", "data.root=/d"])
    path = tmp_path / "config.yaml"
    dump_config_yaml(cfg, path, extra={"autodeeplab_version": "0.1.0", "seed": 3})
    assert load_config(RunCfg, yaml_path=path) == cfg
    assert read_run_info(path) == {"autodeeplab_version": "0.1.0", "seed": 3}
    assert config_from_dict(RunCfg, config_to_dict(cfg)) == cfg
    assert not list(tmp_path.glob("*.tmp"))


def test_unknown_key_in_yaml_names_file_and_suggests(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("serch:\n  lr: 0.1\n")
    assert _error(yaml_path=path) == f"{path}: unknown key 'serch.lr' (did you mean 'search.lr'?)"
    path.write_text("search:\n  epoch: 3\n")
    assert _error(yaml_path=path) == f"{path}: unknown key 'search.epoch' (did you mean 'search.epochs'?)"


def test_unknown_key_in_override_and_dict():
    assert (
        _error(overrides=["data.crp=1"])
        == "override 'data.crp=1': unknown key 'data.crp' (did you mean 'data.crop'?)"
    )
    message = _error(overrides=["zzzz=1"])
    assert message == "override 'zzzz=1': unknown key 'zzzz' (valid keys here: data, search, seed)"
    # A shared section prefix alone must not produce a suggestion.
    assert _error(overrides=["search={lr: 2, bogus: 1}"]).endswith(
        "unknown key 'search.bogus' (valid keys here: amp, epochs, levels, limit, lr, mode, out, tags, "
        "weights)"
    )
    assert _error(overrides=["search.epcohs=1"]).endswith("(did you mean 'search.epochs'?)")
    with pytest.raises(
        ConfigError, match=r"^x.yaml: unknown key 'search.lrr' \(did you mean 'search.lr'\?\)$"
    ):
        config_from_dict(RunCfg, {"search": {"lrr": 1.0}}, source="x.yaml")


def test_wrong_types_name_the_key(tmp_path):
    assert (
        _error(overrides=["search.lr=abc"])
        == "override 'search.lr=abc': search.lr: expected float, got 'abc' (str)"
    )
    assert _error(overrides=["search.epochs=2.5"]).endswith("search.epochs: expected int, got 2.5 (float)")
    assert _error(overrides=["search.amp=1"]).endswith("search.amp: expected bool, got 1 (int)")
    assert "search.mode: expected one of 'first', 'second', got 'third'" in _error(
        overrides=["search.mode=third"]
    )
    assert "data.crop: expected a list of 2 values (int, int)" in _error(overrides=["data.crop=[1,2,3]"])
    assert "data: expected a mapping of DataCfg settings" in _error(overrides=["data=3"])
    path = tmp_path / "c.yaml"
    path.write_text("search: {epochs: many}\n")
    assert _error(yaml_path=path) == f"{path}: search.epochs: expected int, got 'many' (str)"


def test_bad_files_presets_and_override_syntax(tmp_path):
    assert _error(yaml_path=tmp_path / "none.yaml") == f"{tmp_path / 'none.yaml'}: no such config file"
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [1\n")
    assert _error(yaml_path=bad).startswith(f"{bad}: not valid YAML (")
    bad.write_text("- 1\n- 2\n")
    assert _error(yaml_path=bad) == f"{bad}: expected a mapping of settings at the top, got list"
    assert _error(preset="cpx") == "preset 'cpx': unknown preset (did you mean 'cpu'? available: paper, cpu)"
    assert _error(overrides=["seed"]).startswith("override 'seed': expected KEY=VALUE")
    with pytest.raises(ConfigError, match=r"^preset 'broken': unknown key 'search.lrate'"):
        register_presets(RunCfg, {"broken": {"search.lrate": 1}})
    assert "broken" not in preset_names(RunCfg)


def test_config_keys_lists_dotted_leaves():
    keys = config_keys(RunCfg)
    assert "search.lr" in keys and "data.crop" in keys and "seed" in keys and "search" not in keys
    assert len(keys) == 1 + 9 + 3


def test_post_init_errors_become_config_errors():
    @dataclass
    class Checked:
        batch: int = 2

        def __post_init__(self) -> None:
            if self.batch < 1:
                raise ValueError(f"batch must be at least 1, got {self.batch}")

    with pytest.raises(ConfigError, match=r"^resolved config: batch must be at least 1, got 0$"):
        load_config(Checked, overrides=["batch=0"])


def _real_presets() -> list[tuple[type, str]]:
    from autodeeplab.search.config import SearchConfig
    from autodeeplab.train.config import TrainConfig

    return [(cls, name) for cls in (SearchConfig, TrainConfig) for name in preset_names(cls)]


@pytest.mark.parametrize(("cls", "preset"), _real_presets(), ids=lambda v: getattr(v, "__name__", v))
def test_every_real_preset_round_trips_through_yaml(tmp_path, cls, preset):
    config = load_config(cls, preset=preset)
    dump_config_yaml(config, tmp_path / "config.yaml", {"autodeeplab_version": "x", "seed": 0})
    again = load_config(cls, yaml_path=tmp_path / "config.yaml")
    assert again == config and config_to_dict(again) == config_to_dict(config)


def test_real_presets_exist():
    names = {(cls.__name__, name) for cls, name in _real_presets()}
    assert {("SearchConfig", "paper"), ("SearchConfig", "cpu"), ("TrainConfig", "paper")} <= names
    assert {("TrainConfig", "cpu"), ("TrainConfig", "tiny")} <= names


def test_resume_changes_outside_the_allowed_keys_are_refused(tmp_path):
    from autodeeplab.runs.resume import check_resume_changes, config_changes, record_resume_changes

    stored = config_to_dict(RunCfg())
    longer = load_config(RunCfg, overrides=["search.epochs=60", "data.root=/moved"])
    assert config_changes(stored, config_to_dict(longer)) == [
        ("search.epochs", 40, 60),
        ("data.root", None, "/moved"),
    ]
    allowed = {"search.epochs", "data.root"}
    changes = check_resume_changes(stored, longer, allowed, "--resume r")
    assert changes == [("search.epochs", 40, 60), ("data.root", None, "/moved")]
    other = load_config(RunCfg, overrides=["search.epochs=60", "data.crop=[64,64]"])
    with pytest.raises(ConfigError) as info:
        check_resume_changes(stored, other, allowed, "--resume r")
    assert str(info.value) == (
        "--resume r: data.crop cannot change on resume (the run has [321, 321], now [64, 64]); only "
        "data.root, search.epochs may change"
    )
    # a key the stored config lacks (written by an older version) is not a change
    assert check_resume_changes({"seed": 0}, RunCfg(), set(), "x") == []
    path = tmp_path / "config.yaml"
    dump_config_yaml(RunCfg(), path, {"seed": 0})
    record_resume_changes(longer, path, changes, "000003-step.pt")
    record_resume_changes(longer, path, [], "000004-step.pt")
    assert load_config(RunCfg, yaml_path=path) == longer
    assert read_run_info(path) == {
        "seed": 0,
        "resumed_with": [
            {
                "checkpoint": "000003-step.pt",
                "changed": {"search.epochs": [40, 60], "data.root": [None, "/moved"]},
            },
            {"checkpoint": "000004-step.pt", "changed": {}},
        ],
    }


# -- the real settings types ---------------------------------------------------------------------------------
# (settings type whose validate() refuses it, the top-level config it is read in, its dotted key there, a bad
# value, the error). Eight types: SearchConfig and its SearchSpaceConfig/SearchDataConfig/ExecutionConfig,
# TrainConfig and its TrainDataConfig/NetworkConfig, EvalConfig.
_BAD_VALUES = [
    ("SearchConfig", "search", "batch_size", 0, "batch_size: must be at least 1, got 0"),
    ("SearchConfig", "search", "momentum", 1.0, "momentum: must be in [0, 1), got 1.0"),
    ("SearchConfig", "search", "arch_betas", (0.9, 1.0), "arch_betas[1]: must be in [0, 1), got 1.0"),
    (
        "SearchConfig",
        "search",
        "space.spatial_dims",
        4,
        "space.spatial_dims: must be 2 (images) or 3 (volumes), got 4",
    ),
    ("SearchDataConfig", "search", "data.crop_size", 0, "data.crop_size: must be at least 1, got 0"),
    (
        "SearchDataConfig",
        "search",
        "data.max_val_images",
        0,
        "data.max_val_images: must be at least 1 or null, got 0",
    ),
    ("SearchSpaceConfig", "search", "space.num_blocks", 0, "space.num_blocks: must be at least 1, got 0"),
    (
        "SearchSpaceConfig",
        "search",
        "space.partial_channels",
        3,
        "space.partial_channels: must be at least 1 and divide space.filter_multiplier (8), got 3",
    ),
    (
        "ExecutionConfig",
        "search",
        "execution.checkpoint_levels",
        (0, 0),
        "execution.checkpoint_levels: [0, 0] lists a level twice",
    ),
    (
        "ExecutionConfig",  # the level count is the parent's (space.num_levels): unknown to a section alone
        "search",
        "execution.checkpoint_levels",
        (4,),
        "execution.checkpoint_levels: level 4 does not exist (levels are 0..3 with space.num_levels=4)",
    ),
    ("TrainConfig", "train", "batch_size", 0, "batch_size: must be at least 1, got 0"),
    (
        "TrainConfig",
        "train",
        "model.spatial_dims",
        4,
        "model.spatial_dims: must be 2 (images) or 3 (volumes), got 4",
    ),
    ("TrainDataConfig", "train", "data.jitter", 1.5, "data.jitter: must be in [0, 1), got 1.5"),
    (
        "TrainDataConfig",
        "train",
        "data.eval_max_images",
        0,
        "data.eval_max_images: must be at least 1 or null, got 0",
    ),
    (
        "NetworkConfig",
        "train",
        "model.decoder_channels",
        0,
        "model.decoder_channels: must be at least 1, got 0",
    ),
    ("EvalConfig", "eval", "max_images", 0, "max_images: must be at least 1 or null, got 0"),
    ("EvalConfig", "eval", "window_overlap", 1.0, "window_overlap: must be in [0, 1), got 1.0"),
]
_SECTIONS = {"search": ("space", "data", "execution"), "train": ("data", "model"), "eval": ()}
"""The sections of each top-level config."""


def _top_level(which: str) -> type:
    from autodeeplab.infer.evaluate import EvalConfig
    from autodeeplab.search.config import SearchConfig
    from autodeeplab.train.config import TrainConfig

    return {"search": SearchConfig, "train": TrainConfig, "eval": EvalConfig}[which]


def _holder(config: object, key: str) -> tuple[object, str]:
    """The settings object holding the dotted ``key``, and the field's name in it."""
    *path, name = key.split(".")
    for part in path:
        config = getattr(config, part)
    return config, name


def _refusal(validate: Callable[[], None]) -> str:
    with pytest.raises(ConfigError) as info:
        validate()
    return str(info.value)


@pytest.mark.parametrize(
    ("what", "top", "key", "value", "message"),
    _BAD_VALUES,
    ids=[f"{case[0]}-{case[2]}" for case in _BAD_VALUES],
)
def test_every_real_config_validates_alike(
    what: str, top: str, key: str, value: object, message: str
) -> None:
    """One way for every settings type: ``validate(where)`` raises the one user-error type in one line
    ``<where>.<field>: must be …``, a parent validating its sections under their dotted keys; the top-level
    settings validate when built, so a file, preset, ``--set`` or ``--resume`` override fails at once."""
    cls = _top_level(top)
    as_yaml = json.dumps(list(value) if isinstance(value, tuple) else value)
    built = _refusal(lambda: load_config(cls, overrides=[f"{key}={as_yaml}"]))  # what every CLI path does
    assert built == message and "\n" not in built

    config = cls()  # valid when built, spoiled afterwards: validate() again (run_search/run_training do)
    holder, name = _holder(config, key)
    assert what in (type(holder).__name__, type(config).__name__)  # the parent's rules about a section
    setattr(holder, name, value)
    assert _refusal(config.validate) == message
    # A parent passes its own name on (the pipeline could name the search settings ``search``).
    named = message.partition(": ")[0]
    assert _refusal(lambda: config.validate(where=top)).startswith(f"{top}.{named}: ")
    if holder is not config and type(holder).__name__ == what and "does not exist" not in message:
        # A section alone names itself under its own default name: its key, except a NetworkConfig, which
        # is ``network`` (the record of model.pt) and ``model`` in the training settings.
        own = "network" if what == "NetworkConfig" else key.split(".")[0]
        assert _refusal(holder.validate) == own + message[message.index(".") :]


@pytest.mark.parametrize("top", sorted(_SECTIONS))
def test_every_real_config_passes_with_its_defaults_and_presets(top: str) -> None:
    cls = _top_level(top)
    for config in [cls(), *(load_config(cls, preset=name) for name in preset_names(cls))]:
        config.validate()
        for section in _SECTIONS[top]:
            getattr(config, section).validate(section)


def test_device_checks_are_separate_from_validate() -> None:
    from autodeeplab.fast.execution import ExecutionConfig

    fp16 = ExecutionConfig(precision="fp16")
    fp16.validate()  # valid settings: whether they run depends on the device
    fp16.check_device("cuda")
    message = "execution.precision: fp16 needs a CUDA device (running on cpu); use bf16"
    assert _refusal(lambda: fp16.check_device("cpu")) == message
    assert _refusal(lambda: ExecutionConfig(precision="fp8").validate()) == (  # type: ignore[arg-type]
        "execution.precision: must be one of fp32, bf16, fp16, got 'fp8'"
    )
