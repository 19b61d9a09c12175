"""The search-space contract: the real search loop runs end to end on a second space defined here.

``ChoiceSpace`` is as small as a search space gets — one stem conv, one edge mixing three ops with
softmax weights α, a 1×1 classifier — and knows nothing of Auto-DeepLab. If the loop, its state on disk or
resume reached into Auto-DeepLab's supernet anywhere, these tests would fail.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from tiny import SYNTHETIC_SEARCH_DATA
from torch import nn

from autodeeplab.config.settings import load_config
from autodeeplab.errors import GenotypeError
from autodeeplab.fileio import atomic_write_text
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.loop import run_search
from autodeeplab.space.contract import Architecture, SearchSpace, check_search_space

OPS = ("conv1", "conv3", "identity")


@dataclass(frozen=True)
class Choice:
    """The architecture of :class:`ChoiceSpace`: which op its one edge keeps."""

    op: str
    FILE_NAME: ClassVar[str] = "choice.json"

    def to_json(self) -> str:
        return json.dumps({"version": 1, "op": self.op}) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "choice") -> Choice:
        data = json.loads(text)
        if data.get("op") not in OPS:
            raise GenotypeError(f"{source}: op: expected one of {OPS}")
        return cls(data["op"])

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_text(Path(path), self.to_json())

    def short(self) -> str:
        return f"op {self.op}"


class ChoiceSpace(nn.Module):
    """``[N, 3, H, W]`` → stem 3×3 → Σ_o softmax(α)_o · op_o → 1×1 → ``[N, classes, H, W]``."""

    def __init__(self, num_classes: int, penalty: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.ops = nn.ModuleList([nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, padding=1), nn.Identity()])
        self.classifier = nn.Conv2d(4, num_classes, 1)
        self.alpha = nn.Parameter(torch.zeros(len(OPS)))
        self.penalty = penalty

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        weights = torch.softmax(self.alpha, 0)
        return self.classifier(sum(w * op(h) for w, op in zip(weights, self.ops, strict=True)))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p is not self.alpha)

    def decode(self) -> Choice:
        return Choice(OPS[int(self.alpha.argmax())])

    def random_architecture(self, generator: torch.Generator) -> Choice:
        return Choice(OPS[int(torch.randint(len(OPS), (1,), generator=generator))])

    def arch_loss_terms(self) -> dict[str, torch.Tensor]:
        # A budget-like term: the weight of the 3×3 conv costs `penalty` per unit.
        return {"cost": self.penalty * torch.softmax(self.alpha, 0)[1]} if self.penalty else {}

    def arch_record(self) -> dict[str, Any]:
        return {"version": 1, "alpha": torch.softmax(self.alpha.detach(), 0).tolist()}


def search_config(epochs: int = 2) -> SearchConfig:
    return load_config(
        SearchConfig,
        preset="cpu",
        overrides=[
            *SYNTHETIC_SEARCH_DATA,
            "batch_size=2",
            f"epochs={epochs}",
            "arch_start_epoch=0",
            "steps_per_epoch=2",
            "device=cpu",
        ],
    )


def quiet(_: str) -> None:
    pass


def build(penalty: float = 0.0):
    return lambda config, num_classes, in_channels=3: ChoiceSpace(num_classes, penalty)


def test_the_tiny_space_and_autodeeplab_both_satisfy_the_contract():
    from autodeeplab.space.autodeeplab.supernet import SearchNetwork, SearchSpaceConfig

    tiny = ChoiceSpace(3)
    supernet = SearchNetwork(SearchSpaceConfig(filter_multiplier=2, num_layers=2, num_blocks=2), 3)
    for model in (tiny, supernet):
        check_search_space(model)
        assert isinstance(model, SearchSpace)
        assert isinstance(model.decode(), Architecture)
    assert isinstance(supernet.random_architecture(torch.Generator().manual_seed(0)), Architecture)


def test_a_model_missing_a_method_is_refused_by_name():
    class Broken(nn.Module):
        def arch_parameters(self):
            return []

    with pytest.raises(TypeError, match="weight_parameters"):
        check_search_space(Broken())


def test_search_loop_runs_a_second_space_end_to_end(tmp_path):
    result = run_search(search_config(), tmp_path / "run", quiet=True, echo=quiet, build_space=build())
    run = tmp_path / "run"
    assert isinstance(result.genotype, Choice)
    # choice.json (its FILE_NAME) is the space's own architecture document, read back equal.
    assert Choice.from_json((run / "choice.json").read_text()) == result.genotype
    # arch_params.json is the space's record; the history has one line per epoch; α moved in arch steps.
    record = json.loads((run / "arch_params.json").read_text())
    assert set(record) == {"version", "alpha"} and abs(sum(record["alpha"]) - 1) < 1e-6
    history = [json.loads(line) for line in (run / "arch_history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0]["alpha"] != [1 / 3] * 3 and history[1]["alpha"] != history[0]["alpha"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["genotype"] for m in metrics][-1] == result.genotype.short()
    assert all("arch_loss" in m for m in metrics)
    # The pictures: this space's files are not Auto-DeepLab's, so only the (generic) curves are drawn.
    from autodeeplab.viz.plots import render_run

    assert [p.name for p in render_run(run)] == ["curves.png"]


def test_arch_loss_terms_reach_the_architecture_step(tmp_path):
    """A large cost on the 3×3 conv's weight drives it below the others, and below where the same run
    without the cost leaves it (Adam moves α by about lr = 3e-3 per step, 4 steps here)."""

    def read(name: str, file: str) -> Any:
        text = (tmp_path / name / file).read_text()
        return json.loads(text) if file.endswith(".json") else [json.loads(x) for x in text.splitlines()]

    run_search(search_config(), tmp_path / "cost", quiet=True, echo=quiet, build_space=build(penalty=50.0))
    run_search(search_config(), tmp_path / "free", quiet=True, echo=quiet, build_space=build())
    cost, free = read("cost", "arch_params.json")["alpha"], read("free", "arch_params.json")["alpha"]
    assert cost[1] < min(cost[0], cost[2]) and cost[1] < free[1] - 0.004
    # The reported architecture loss includes the term (50 · ~1/3 on top of a cross-entropy of ~1).
    assert read("cost", "metrics.jsonl")[0]["arch_loss"] > read("free", "metrics.jsonl")[0]["arch_loss"] + 10


def test_resume_of_a_second_space_continues_exactly(tmp_path):
    """One epoch, then a resume to two, ends where an uninterrupted two-epoch run ends."""
    run_search(search_config(2), tmp_path / "whole", quiet=True, echo=quiet, build_space=build())
    run_search(search_config(1), tmp_path / "parts", quiet=True, echo=quiet, build_space=build())
    run_search(search_config(2), tmp_path / "parts", resume=True, quiet=True, echo=quiet, build_space=build())
    for name in ("arch_params.json", "choice.json"):
        assert (tmp_path / "whole" / name).read_text() == (tmp_path / "parts" / name).read_text()
    whole = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    parts = (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(a)["train_loss"] for a in whole] == [json.loads(b)["train_loss"] for b in parts]
