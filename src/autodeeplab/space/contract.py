"""The contract between the search loop and a search space: what any supernet offers the bilevel search.

The loop (:mod:`autodeeplab.search.loop`), its state on disk (:mod:`autodeeplab.search.state`), resume and
the study of searched against random architectures use a supernet only through :class:`SearchSpace`, and
an architecture only through :class:`Architecture`. Auto-DeepLab's supernet
(:class:`autodeeplab.space.autodeeplab.supernet.SearchNetwork`, architecture
:class:`autodeeplab.space.autodeeplab.genotype.Genotype`) is the first implementation; a second space
plugs in by implementing these methods and passing its builder to :func:`autodeeplab.search.loop.run_search`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Architecture(Protocol):
    """A decoded architecture: immutable, validated when read, one versioned JSON document on disk.

    ``FILE_NAME``: the name of that document in a run directory (``genotype.json``, ``dints_arch.json``)."""

    FILE_NAME: str

    def to_json(self) -> str:
        """The JSON document (``genotype.json`` for Auto-DeepLab); ``from_json`` reads it back equal."""
        ...

    @classmethod
    def from_json(cls, text: str, source: str = ...) -> Architecture:
        """Parse and validate; errors name ``source`` and the field (one user-error line)."""
        ...

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` atomically."""
        ...

    def short(self) -> str:
        """A one-line text form for logs and ``metrics.jsonl``."""
        ...


@runtime_checkable
class SearchSpace(Protocol):
    """A supernet (an ``nn.Module``) whose architecture is searched with the weights.

    ``forward``: images ``[N, C_in, *S]`` → logits ``[N, num_classes, *S]``, mixing every candidate with
    the current architecture weights. The loop moves :meth:`weight_parameters` on trainA and
    :meth:`arch_parameters` on trainB; the two lists are disjoint and together are all parameters.
    """

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture logits (Auto-DeepLab: α ``[E, P]`` and β ``[L, levels, 3]``)."""
        ...

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Every other parameter (the operations' weights)."""
        ...

    def decode(self) -> Architecture:
        """The discrete architecture the current architecture weights stand for (valid by construction)."""
        ...

    def random_architecture(self, generator: torch.Generator) -> Architecture:
        """An architecture drawn uniformly from the valid architectures of this space (seeded by
        ``generator``); the baseline against which a search is judged."""
        ...

    def arch_loss_terms(self) -> dict[str, torch.Tensor]:
        """Named scalar terms added to the architecture step's loss (budgets, regularisers); differentiable
        in :meth:`arch_parameters`. Empty for the paper's Auto-DeepLab."""
        ...

    def arch_record(self) -> dict[str, Any]:
        """The normalised architecture weights as a JSON-able object: written as ``arch_params.json`` and,
        with the epoch, as a line of ``arch_history.jsonl`` after every epoch."""
        ...

    # Optional: ``set_search_progress(epoch, epochs, arch_start_epoch)``, called by the loop at the start of
    # every epoch (0-based), for a space whose :meth:`arch_loss_terms` follow a schedule (DiNTS ramps its
    # terms in from the end of the warm-up). A function of the epoch only, so a resumed search is exact.


def check_search_space(model: Any) -> None:
    """Fail early, naming the method, when ``model`` does not implement :class:`SearchSpace`.

    A programming error (a new space missing a method), not a user error: it raises ``TypeError``.
    """
    missing = [
        name
        for name in (
            "arch_parameters",
            "weight_parameters",
            "decode",
            "random_architecture",
            "arch_loss_terms",
            "arch_record",
        )
        if not callable(getattr(model, name, None))
    ]
    if missing or not isinstance(model, nn.Module):
        what = f"lacks {', '.join(missing)}" if missing else "is not an nn.Module"
        raise TypeError(
            f"{type(model).__name__} is not a search space: it {what} (autodeeplab.space.contract)"
        )
    arch = {id(p) for p in model.arch_parameters()}
    weights = {id(p) for p in model.weight_parameters()}
    every = {id(p) for p in model.parameters()}
    if arch & weights or arch | weights != every:
        raise TypeError(
            f"{type(model).__name__}: arch_parameters() and weight_parameters() must split parameters() "
            "into two disjoint parts"
        )
