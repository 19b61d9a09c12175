"""The public Python API (``autodeeplab/__init__.py``): every name resolves; the README's example runs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
from tiny import SMALL_HEADS, SUPERNET, SYNTHETIC_SEARCH_DATA

import autodeeplab


def test_every_public_name_resolves_to_what_it_names():
    for name in autodeeplab.__all__:
        assert getattr(autodeeplab, name) is not None, name
    from autodeeplab.nets.model_file import load_model
    from autodeeplab.search.loop import run_search

    assert autodeeplab.run_search is run_search and autodeeplab.load_model is load_model


def test_importing_the_package_does_not_import_torch():
    """The CLI's start-up (``autodeeplab --help``) must not pay for torch: names load on first use."""
    code = "import sys, autodeeplab; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_readme_example_search_train_load(tmp_path):
    """The README's API example line by line, at tiny size (the overrides are the only additions)."""
    from autodeeplab import (
        Genotype,
        SearchConfig,
        TrainConfig,
        build_network,
        build_supernet,
        decode,
        load_config,
        load_model,
        run_search,
        run_training,
    )

    tiny_search = [*SUPERNET, *SYNTHETIC_SEARCH_DATA, "device=cpu", "batch_size=2", "steps_per_epoch=1"]
    search = load_config(
        SearchConfig, preset="cpu", overrides=[*tiny_search, "epochs=2", "arch_start_epoch=1"]
    )
    found = run_search(search, tmp_path / "search", quiet=True, echo=lambda s: None)
    assert isinstance(found.genotype, Genotype) and found.genotype.num_layers == 3
    tiny_train = [
        *SMALL_HEADS,
        "data.crop_size=32",
        "data.dataset=synthetic",
        "data.root=null",
        "data.synthetic_size=[32,32]",
        "device=cpu",
        "batch_size=2",
    ]
    train = load_config(TrainConfig, preset="cpu", overrides=[*tiny_train, "iterations=1"])
    trained = run_training(train, found.genotype, tmp_path / "train", quiet=True, echo=lambda s: None)
    model, info = load_model(trained.model_path)
    assert not model.training and len(info.class_names) == model.config.num_classes
    net = build_network(Genotype.load(tmp_path / "search" / "genotype.json"), model.config)
    net.load_state_dict(model.state_dict())  # the same settings build the same network
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(net.eval()(x), model(x))
    supernet = build_supernet(search.space, num_classes=19, execution=search.execution)
    assert supernet.execution is search.execution
    assert supernet(torch.randn(2, 3, 32, 32)).shape == (2, 19, 32, 32)
    # decode: the arch_params.json the search wrote gives the genotype it found.
    params = json.loads((tmp_path / "search" / "arch_params.json").read_text())
    assert decode(np.array(params["alpha"]), np.array(params["beta"]), 2) == found.genotype
