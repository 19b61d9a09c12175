"""What keeps a run reproducible and stoppable: RNG state capture, graceful SIGINT/SIGTERM, NaN checks.

Split out of :mod:`autodeeplab.runs.rundir`: the run directory and checkpoint files
live there, the process-level state here.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import Any

import numpy as np
import torch

from autodeeplab.errors import AutoDeepLabError, CheckpointError, ConfigError
from autodeeplab.runs.distributed import mean_over_ranks


class NonFiniteError(AutoDeepLabError):
    """A loss or metric became NaN or infinite; the run stops and keeps its last good checkpoint.

    ``what``: what became what, where (``loss became nan at epoch 3 step 41``); ``hint``: what to do
    (None: :data:`NONFINITE_HINT`), kept apart so that a run directory without a checkpoint can say so."""

    def __init__(self, what: str, hint: str | None = None) -> None:
        self.what, self.hint = what, hint
        super().__init__(f"{what}; {hint or NONFINITE_HINT}")


# ----------------------------------------------------------------------------------------------------------
# Random number generators
# ----------------------------------------------------------------------------------------------------------


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG a run draws from, as checkpoint-safe values.

    Python, NumPy (the legacy global state), torch CPU, CUDA when present, and ``generators`` by name (e.g.
    the seeded ``torch.Generator`` that shuffles a DataLoader).
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {key: g.get_state() for key, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(
    state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None
) -> None:
    """Put back what :func:`capture_rng_state` captured (``generators`` are matched by name).

    CUDA states are restored only when as many CUDA devices are present as were saved; a generator named in
    ``generators`` but missing from ``state`` is a :class:`CheckpointError`.
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    saved = state.get("generators", {})
    for key, g in (generators or {}).items():
        if key not in saved:
            raise CheckpointError(f"checkpoint has no state for the random generator {key!r}")
        g.set_state(saved[key])


# ----------------------------------------------------------------------------------------------------------
# Signals and non-finite values
# ----------------------------------------------------------------------------------------------------------


class GracefulInterrupt:
    """Context manager turning SIGINT/SIGTERM into a request to stop after the current step.

    Inside the block, the first signal sets :attr:`requested` (and :attr:`signal_name`) and prints one line
    to ``stream``; the loop then finishes its step, saves a checkpoint and exits with :func:`resume_hint`.
    A second signal raises :class:`KeyboardInterrupt` at once. The previous handlers come back on exit.
    Outside the main thread (where Python cannot install handlers) it does nothing. Processes forked inside
    the block (DataLoader workers) inherit the handler; there it does nothing, so one Ctrl-C prints one line
    and only the main process checkpoints (workers simply end with their parent's iterator).
    """

    SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, stream: Any = None) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._stream = stream
        self._previous: dict[signal.Signals, Any] = {}
        self._pid: int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked child (a loader worker): its parent handles the signal
            return
        name = signal.Signals(signum).name
        if self.requested:
            if name == "SIGTERM" and self.signal_name == "SIGTERM" and _world_size() > 1:
                return  # a job's SIGTERM can reach a rank twice (the scheduler and torchrun): one stop
            raise KeyboardInterrupt(f"second {name}: stopping without a checkpoint")
        self.requested, self.signal_name = True, name
        stream = self._stream or sys.stderr
        print(
            f"\nreceived {name}: finishing the current step and saving a checkpoint "
            "(send it again to stop at once)",
            file=stream,
            flush=True,
        )

    def __enter__(self) -> GracefulInterrupt:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def resume_hint(command: str, run_dir: str | os.PathLike[str], reason: str | None = None) -> str:
    """How to continue: ``stopped (SIGTERM); ...; resume with: autodeeplab search --resume X``"""
    why = f" ({reason})" if reason else ""
    return (
        f"stopped{why}; checkpoint saved in {run_dir}; resume with: autodeeplab {command} --resume {run_dir}"
    )


SYNC_EVERY = 10
"""Steps whose losses the training and search loops read back together: they wait for the device once per
this many steps instead of every step (a non-finite loss is still reported with its own step)."""


def read_losses(pending: list[tuple[int, torch.Tensor]], what: str, world: int = 1) -> list[float]:
    """The losses of ``pending`` ``(step, 0-dim tensor)`` as floats, in one transfer, each checked in step
    order (:func:`check_finite` names the first bad one's step); ``pending`` is emptied. With ``world``
    ranks, each loss is averaged over them first (the global batch's loss, the same on every rank); every
    rank must then call it at the same steps."""
    if not pending:
        return []
    values = mean_over_ranks(torch.stack([loss.double() for _, loss in pending]), world).tolist()
    for (step, _), value in zip(pending, values, strict=True):
        check_finite(value, what, step=step)
    pending.clear()
    return values


def check_finite(
    value: float | torch.Tensor,
    what: str,
    epoch: int | None = None,
    step: int | None = None,
    hint: str | None = None,
) -> None:
    """Raise :class:`NonFiniteError` if ``value`` is NaN or ±inf: ``loss became nan at epoch 3 step 41; ...``.

    A tensor is reduced to one Python float (a device sync: call it once per step, not per op).
    """
    number = float(value.detach().float().sum()) if isinstance(value, torch.Tensor) else float(value)
    if math.isfinite(number):
        return
    parts = [f"{k} {v}" for k, v in (("epoch", epoch), ("step", step)) if v is not None]
    where = f" at {' '.join(parts)}" if parts else ""
    raise NonFiniteError(f"{what} became {number}{where}", hint)


NONFINITE_HINT = "the last good checkpoint is kept; lower the learning rate or check the data, then resume"
"""What :func:`check_finite` tells by default (a run directory rewrites it when no checkpoint was written,
:meth:`~autodeeplab.runs.rundir.RunDir.kept_resumable`)."""


_SINGLE_VALUE_BN = "Expected more than 1 value per channel when training"


@contextlib.contextmanager
def batch_norm_needs_two_values(batch_size: int, per_process: bool = False) -> Iterator[None]:
    """Turn torch's "more than 1 value per channel" error into a one-line :class:`ConfigError`: a batch of
    one whose deepest features (or the ASPP's image pooling) are one voxel leaves batch norm one value per
    channel; small 3D patches meet this easily. ``batch_size``: what each forward pass holds;
    ``per_process``: several processes without ``sync_bn`` (which would pool their samples)."""
    try:
        yield
    except ValueError as exc:
        if _SINGLE_VALUE_BN not in str(exc):
            raise
        if per_process:
            raise ConfigError(
                f"batch_size: {batch_size} sample per process leaves batch norm a single value per channel "
                "(a one-pixel deepest level); use --set sync_bn=true, a larger batch_size, "
                "or larger crops / patches"
            ) from None
        raise ConfigError(
            f"batch_size: {batch_size} leaves batch norm a single value per channel at the deepest level "
            "(one sample of one voxel); use batch_size 2 or more, or larger crops / patches"
        ) from None
