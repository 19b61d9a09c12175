"""The training's ``model`` section is the found network's own settings type: every setting of the network
can be set (YAML, --set), the presets give the networks they gave before, and model.pt keeps them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from test_train import SMALL, TINY, quiet, tiny_config

from autodeeplab.config.schema import config_keys
from autodeeplab.config.settings import load_config
from autodeeplab.errors import ConfigError
from autodeeplab.nets.model_file import load_model
from autodeeplab.nets.network import NetworkConfig
from autodeeplab.ops.heads import aspp_rates_for_stride
from autodeeplab.train.config import TrainConfig
from autodeeplab.train.loop import build_train_data, run_training


def test_every_network_setting_is_a_training_key() -> None:
    keys = set(config_keys(TrainConfig))
    assert {f"model.{f.name}" for f in dataclasses.fields(NetworkConfig)} <= keys
    assert type(TrainConfig().model) is NetworkConfig


@pytest.mark.parametrize(
    ("preset", "network"),
    [
        # The networks the presets gave before the model section became a NetworkConfig.
        (
            "paper",
            {
                "filter_multiplier": 20,
                "drop_path_keep_prob": 0.7,
                "aspp_channels": 256,
                "decoder_channels": 256,
            },
        ),
        (
            "cpu",
            {"filter_multiplier": 8, "drop_path_keep_prob": 1.0, "aspp_channels": 64, "decoder_channels": 64},
        ),
        (
            "tiny",
            {"filter_multiplier": 4, "drop_path_keep_prob": 1.0, "aspp_channels": 32, "decoder_channels": 32},
        ),
    ],
)
def test_presets_give_the_same_networks_as_before(preset: str, network: dict) -> None:
    config = load_config(TrainConfig, preset=preset)
    # in_channels: null (the data's, 3 for images) since training also reads volumes.
    assert config.model == NetworkConfig(**network, num_classes=None, in_channels=None)
    assert config.network_config(11) == NetworkConfig(**network, num_classes=11, in_channels=3)


def test_network_settings_from_yaml_and_set_reach_model_pt(tmp_path: Path) -> None:
    """Every network setting can be set (file and --set alike), is trained with, and comes back from model.pt
    and from the run's config.yaml."""
    (tmp_path / "net.yaml").write_text(
        "model:\n  stem_channels: [8, 8, 16]\n  aspp_rates_os16: [2, 4, 6]\n  low_level_channels: 4\n"
    )
    config = load_config(
        TrainConfig,
        preset="tiny",
        yaml_path=tmp_path / "net.yaml",
        overrides=[
            *TINY,
            "model.aspp_dropout=0.2",
            "model.drop_path_keep_prob=0.9",
            "model.num_classes=6",  # the synthetic data's count: accepted
            "iterations=1",
            "checkpoint_every=0",
            "data.eval_split=null",
        ],
    )
    expected = NetworkConfig(
        filter_multiplier=4,
        num_classes=6,
        stem_channels=(8, 8, 16),
        aspp_channels=8,
        aspp_rates_os16=(2, 4, 6),
        aspp_dropout=0.2,
        decoder_channels=8,
        low_level_channels=4,
        drop_path_keep_prob=0.9,
    )
    assert config.model == dataclasses.replace(expected, in_channels=None)  # null: the data's
    run_training(config, SMALL, tmp_path / "run", echo=quiet)
    model, _ = load_model(tmp_path / "run")
    assert model.config == expected
    assert model.stem.conv0[0].out_channels == 8 and model.decoder.reduce[0].out_channels == 4
    assert (
        model.aspp.rates == aspp_rates_for_stride((2, 4, 6), model.output_stride)
        and model.aspp.dropout.p == 0.2
    )
    assert load_config(TrainConfig, yaml_path=tmp_path / "run" / "config.yaml") == config


def test_class_count_must_match_the_data() -> None:
    config = tiny_config("model.num_classes=4")
    with pytest.raises(ConfigError) as info:
        build_train_data(config)
    assert str(info.value) == (
        "model.num_classes: 4 does not match the 6 classes of synthetic train (null takes the data's count)"
    )
