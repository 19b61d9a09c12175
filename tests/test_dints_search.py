"""A DiNTS search through the ordinary search loop: 2D synthetic data, decoded to a valid dints_arch.json,
and an exact resume."""

from __future__ import annotations

import json

from test_contract import quiet, search_config

from autodeeplab.nets.dints import DintsNet
from autodeeplab.search.loop import run_search
from autodeeplab.space.dints.arch import DintsArch
from autodeeplab.space.dints.network import DintsShape
from autodeeplab.space.dints.supernet import DintsSupernet


def build(config, num_classes: int, in_channels: int = 3) -> DintsSupernet:
    shape = DintsShape(2, 2, 4, spatial_dims=2, in_channels=in_channels, num_classes=num_classes)
    return DintsSupernet(shape, memory_budget=0.3)


def test_a_dints_search_runs_decodes_and_resumes_exactly(tmp_path):
    result = run_search(search_config(2), tmp_path / "whole", quiet=True, echo=quiet, build_space=build)
    arch = DintsArch.from_json((tmp_path / "whole" / "dints_arch.json").read_text())
    assert arch == result.genotype and arch.depths == 2 and arch.num_blocks == 2
    record = json.loads((tmp_path / "whole" / "arch_params.json").read_text())
    assert record["kind"] == "dints" and 0 < record["memory_fraction"] <= 1
    assert 0 < record["decoded_memory_fraction"] <= 1
    metrics = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert all("arch_loss" in m for m in metrics) and metrics[-1]["genotype"] == arch.short()
    DintsNet(arch, DintsShape(depths=2, blocks=2, channels=4, spatial_dims=2, in_channels=3))  # builds
    run_search(search_config(1), tmp_path / "parts", quiet=True, echo=quiet, build_space=build)
    run_search(search_config(2), tmp_path / "parts", resume=True, quiet=True, echo=quiet, build_space=build)
    for name in ("arch_params.json", "dints_arch.json"):
        assert (tmp_path / "whole" / name).read_text() == (tmp_path / "parts" / name).read_text()


def test_the_extra_terms_ramp_in_after_the_warm_up():
    net = build(None, 2)
    weights = []
    for epoch in range(6):
        net.set_search_progress(epoch, 6, 2)
        weights.append(net.arch_weight)
        terms = net.arch_loss_terms()
        assert all(float(t.detach()) == 0.0 for t in terms.values()) == (net.arch_weight == 0.0)
    assert weights == [0.0, 0.0, 0.0, 0.25, 0.5, 0.75]
