"""Raw label values → train ids through one lookup table per dataset, with the ignore label fixed at 255.

Every reader describes its label encoding as a :class:`LabelMap`: which stored values are classes (and which
train id each becomes), which are "ignore", and — by omission — which are not allowed at all. Applying the map
checks the values, so a label with a stray value is reported with the file name instead of being trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from autodeeplab.data.problems import DataProblemError, problem

IGNORE_INDEX = 255
"""The one ignore label of the package after mapping: loss and metrics skip pixels with this value."""

_INVALID = -1
_MAX_SHOWN_VALUES = 6  # how many offending values a message lists before "..."

Colour = tuple[int, int, int]


class LabelMap:
    """A table from stored label values to train ids ``0..num_classes-1`` or :data:`IGNORE_INDEX`.

    ``table`` maps each allowed stored value to its train id (use :data:`IGNORE_INDEX` for "ignore");
    values not in ``table`` are problems. ``expected`` is the human wording of the allowed set, used in
    messages (e.g. ``"0..10, or 11 (void)"``).
    """

    def __init__(self, table: Mapping[int, int], expected: str) -> None:
        # Stored values may be negative (a volume's -1 for "unlabelled"): the table then starts at the
        # lowest of them, and a value v is looked up at v - low.
        low = min(0, min(table, default=0))
        high = max(table, default=0)
        size = 256 if high < 256 else 65536 if high < 65536 else high + 1
        lut = np.full(size - low, _INVALID, dtype=np.int16)
        for raw, train_id in table.items():
            if not (low <= raw < size and (0 <= train_id < IGNORE_INDEX or train_id == IGNORE_INDEX)):
                raise ValueError(f"bad label map entry {raw} -> {train_id}")
            lut[raw - low] = train_id
        self.lut, self.low = lut, low
        self.expected = expected

    @classmethod
    def identity(cls, num_classes: int, ignore_values: Sequence[int] = (IGNORE_INDEX,)) -> LabelMap:
        """Values ``0..num_classes-1`` are the classes; ``ignore_values`` are ignored."""
        table = {v: v for v in range(num_classes)} | {v: IGNORE_INDEX for v in ignore_values}
        ignored = ", ".join(str(v) for v in ignore_values)
        return cls(table, f"0..{num_classes - 1}" + (f", or {ignored} (ignore)" if ignored else ""))

    def train_id(self, value: int) -> int | None:
        """The train id of one stored value (:data:`IGNORE_INDEX` for ignore), None if not allowed."""
        index = value - self.low
        found = int(self.lut[index]) if 0 <= index < len(self.lut) else _INVALID
        return None if found == _INVALID else found

    def apply(self, raw: np.ndarray, path: str | Path) -> np.ndarray:
        """Stored values ``[H, W]`` → train ids ``uint8 [H, W]``; bad values raise a problem naming it."""
        low, high = self.low, self.low + len(self.lut)
        if raw.dtype != np.uint8 and (raw.min(initial=0) < low or raw.max(initial=0) >= high):
            self._raise_bad(np.unique(raw[(raw < low) | (raw >= high)]), path)
        mapped = self.lut[raw] if low == 0 else self.lut[raw.astype(np.int64) - low]
        bad = mapped == _INVALID
        if bad.any():
            self._raise_bad(np.unique(raw[bad]), path)
        return mapped.astype(np.uint8)

    def _raise_bad(self, values: np.ndarray, path: str | Path) -> None:
        shown = ", ".join(str(int(v)) for v in values[:_MAX_SHOWN_VALUES])
        more = ", ..." if len(values) > _MAX_SHOWN_VALUES else ""
        message = f"label values {shown}{more} are outside the class set (expected {self.expected})"
        raise DataProblemError(problem(path, message))


def bit_palette(count: int) -> list[Colour]:
    """The PASCAL VOC colour map: colour ``i`` spreads the bits of ``i`` over R, G, B from the top bit down.

    Index 0 is black, 1 dark red, ..., 255 is (224, 224, 192) — the VOC boundary colour.
    """
    colours = []
    for index in range(count):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((r, g, b))
    return colours


def decode_colours(
    rgb: np.ndarray, colours: Mapping[Colour, int], path: str | Path, expected: str
) -> np.ndarray:
    """Map a colour-coded label ``uint8 [H, W, 3]`` to stored values ``int32 [H, W]`` via ``colours``.

    A colour that is in no entry of ``colours`` is a problem naming ``path``.
    """
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in colours], dtype=np.int32)
    values = np.array(list(colours.values()), dtype=np.int32)
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    slot = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
    known = keys[slot] == packed
    if not known.all():
        unknown = np.unique(packed[~known])[:_MAX_SHOWN_VALUES]
        shown = ", ".join(f"({v >> 16}, {(v >> 8) & 255}, {v & 255})" for v in unknown.tolist())
        raise DataProblemError(
            problem(path, f"label colours {shown} are not class colours (expected {expected})")
        )
    return values[slot]
