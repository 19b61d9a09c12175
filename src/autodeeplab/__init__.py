"""Auto-DeepLab: hierarchical neural architecture search for semantic segmentation (Liu et al., CVPR 2019).

The public Python API (the command line ``autodeeplab`` is built on the same functions)::

    from autodeeplab import (SearchConfig, TrainConfig, load_config, run_search, run_training,
                             build_supernet, build_network, load_model, Genotype, decode)

    config = load_config(SearchConfig, preset="cpu")
    result = run_search(config, "runs/search")            # writes genotype.json, arch_params.json, ...
    trained = run_training(load_config(TrainConfig, preset="cpu"), result.genotype, "runs/train")
    model, info = load_model("runs/train/model.pt")      # the network and its metadata

Names are resolved on first use, so ``import autodeeplab`` stays cheap (the CLI starts without torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API: dict[str, tuple[str, str]] = {
    # search
    "build_supernet": ("autodeeplab.fast.supernet", "build_supernet"),
    "run_search": ("autodeeplab.search.loop", "run_search"),
    "SearchConfig": ("autodeeplab.search.config", "SearchConfig"),
    "SearchSpaceConfig": ("autodeeplab.space.autodeeplab.supernet", "SearchSpaceConfig"),
    "ExecutionConfig": ("autodeeplab.fast.execution", "ExecutionConfig"),
    "SearchSpace": ("autodeeplab.space.contract", "SearchSpace"),
    # architectures
    "Genotype": ("autodeeplab.space.autodeeplab.genotype", "Genotype"),
    "decode": ("autodeeplab.space.autodeeplab.decode", "decode"),
    # found networks
    "build_network": ("autodeeplab.nets.network", "build_network"),
    "NetworkConfig": ("autodeeplab.nets.network", "NetworkConfig"),
    "run_training": ("autodeeplab.train.loop", "run_training"),
    "TrainConfig": ("autodeeplab.train.config", "TrainConfig"),
    "load_model": ("autodeeplab.nets.model_file", "load_model"),
    # settings
    "load_config": ("autodeeplab.config.settings", "load_config"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'autodeeplab' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
