"""The checks every settings type's ``validate(where)`` is made of, so that all speak alike.

Every config class (``SearchConfig`` and its ``space``/``data``/``execution`` sections, ``TrainConfig`` and
its ``data``/``model`` sections, ``EvalConfig``) has ``validate(where)``: it raises
:class:`~autodeeplab.errors.ConfigError` for the first value that cannot work, in one line of the form
``<where>.<field>: must be …, got …``. ``where`` is the dotted name the settings are read under: a top-level
config's is ``""`` (its keys are bare: ``batch_size``), a section's is its key in the parent (``data``,
``space``, ``model``), and a parent validates its sections with that prefix.

When: a top-level config validates itself when it is built (``__post_init__``), which covers every file,
preset, ``--set`` and ``--resume`` (all go through :func:`autodeeplab.config.settings.load_config`), so a bad
value is refused before anything runs or is written; ``run_search`` / ``run_training`` validate again,
for settings changed after they were built. A section only normalises itself when built (it cannot know the
name it is read under) and is validated by its parent, or by what builds from it alone
(``SearchNetwork`` for a ``SearchSpaceConfig``, ``AutoDeepLabNet`` for a ``NetworkConfig``).
"""

from __future__ import annotations

import math

from autodeeplab.errors import ConfigError

IMAGE_DIMS = 2
"""Spatial dimensions of an image batch ``[N, C, H, W]``: what every dataset of the package yields."""
VOLUME_DIMS = 3
"""Spatial dimensions of a volume batch ``[N, C, D, H, W]``."""


def dotted(where: str, name: str) -> str:
    """The key ``name`` of the settings read under ``where`` (``""``: the top level)."""
    return f"{where}.{name}" if where else name


def at_least(key: str, value: int, low: int) -> None:
    """``key: must be at least 1, got …`` / ``key: must be >= 0, got …``."""
    if value < low:
        raise ConfigError(f"{key}: must be {'at least 1' if low == 1 else f'>= {low}'}, got {value}")


def at_least_one_or_null(key: str, value: int | None) -> None:
    """``key: must be at least 1 or null, got …`` (``None`` means "no limit")."""
    if value is not None and value < 1:
        raise ConfigError(f"{key}: must be at least 1 or null, got {value}")


SEED_LIMIT = 2**32
"""Seeds are integers in ``[0, 2**32)``: what every generator the runs seed (torch, numpy) accepts."""


def seed_range(key: str, value: int) -> None:
    """``key: must be an integer in [0, 2**32), got …`` (torch and numpy refuse others mid-run)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{key}: must be an integer in [0, 2**32), got {value!r}")


def split_fractions(key: str, value: tuple[float, float]) -> None:
    """``key: must be [val, test] with each >= 0 and val + test < 1, got …`` (a reader-made split)."""
    ok = (
        len(value) == 2
        and all(isinstance(f, int | float) and not isinstance(f, bool) and 0 <= f < 1 for f in value)
        and value[0] + value[1] < 1
    )
    if not ok:
        raise ConfigError(f"{key}: must be [val, test] with each >= 0 and val + test < 1, got {list(value)}")


def positive(key: str, value: float) -> None:
    """``key: must be positive, got …`` (NaN and infinity are refused too)."""
    if not 0 < value < math.inf:
        raise ConfigError(f"{key}: must be positive, got {value}")


def non_negative(key: str, value: float) -> None:
    """``key: must be >= 0 and finite, got …`` (NaN and infinity are refused too)."""
    if not 0 <= value < math.inf:
        raise ConfigError(f"{key}: must be >= 0 and finite, got {value}")


def below_one(key: str, value: float) -> None:
    """``key: must be in [0, 1), got …`` (momentum, jitter, overlaps)."""
    if not 0 <= value < 1:
        raise ConfigError(f"{key}: must be in [0, 1), got {value}")


def scale_range(key: str, value: tuple[float, float]) -> None:
    """``key: must be 0 < low <= high, got [low, high]`` (random rescaling before a crop)."""
    if len(value) != 2 or not 0 < value[0] <= value[1] < math.inf:
        raise ConfigError(f"{key}: must be 0 < low <= high, got {list(value)}")


def image_dims(key: str, value: int, phase: str) -> None:
    """``key: only 2 (images) is supported by {phase} for now, got …``: the loops' data are images only,
    though the supernet and the found network also build for volumes."""
    if value != IMAGE_DIMS:
        raise ConfigError(f"{key}: only {IMAGE_DIMS} (images) is supported by {phase} for now, got {value}")
