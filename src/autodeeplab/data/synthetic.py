"""The default dataset: scenes generated in code, where texture and spatial context both matter.

Each image is a random Voronoi partition into cells of four texture classes, plus an "object" and its
"shadow":

- every class is drawn as a sinusoidal grating between the same two colours (random per image) with a
  random phase, so every class has the same colour distribution: a per-pixel colour classifier cannot tell
  them apart;
- ``background`` (vertical stripes), ``horizontal``, ``diagonal`` differ in orientation, ``fine`` in
  frequency;
- ``object`` is a rectangle with its own grating (135°);
- ``shadow`` is the band right below the object, painted with the *background* grating in phase with it:
  locally it is identical to background and only its position under the object tells it apart.

Pixel noise is added on top. How many cells, how large the object, which colours and how much noise is the
reader's ``style`` (:data:`STYLES`): ``easy`` (the default: a few large cells, a dark and a light colour,
learnt by ``autodeeplab run``'s small networks in minutes on a CPU) or ``hard`` (many small cells, colour
pairs of any hue, more noise). All randomness is drawn from a generator seeded by (seed, split, index), so the
data are the same on every machine and run; the splits use different derived seeds, so train and val differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autodeeplab.data.base import SegmentationDataset, Transform
from autodeeplab.errors import ConfigError

CLASS_NAMES: tuple[str, ...] = ("background", "horizontal", "diagonal", "fine", "object", "shadow")
PALETTE: list[tuple[int, int, int]] = [
    (90, 90, 90),
    (230, 60, 60),
    (60, 180, 75),
    (60, 110, 230),
    (250, 200, 40),
    (150, 60, 190),
]
# (orientation in degrees, period in pixels) of each class's grating; shadow reuses background's.
GRATINGS: tuple[tuple[float, float], ...] = ((0.0, 8.0), (90.0, 8.0), (45.0, 8.0), (0.0, 4.0), (135.0, 6.0))
BACKGROUND, OBJECT, SHADOW = 0, 4, 5
NUM_TEXTURE_CLASSES = 4  # classes a Voronoi cell can take

DEFAULT_SIZE = (64, 64)
DEFAULT_NUM_SAMPLES = {"train": 256, "val": 64, "test": 64}
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_GENERATOR_TAG = 0x5EED  # separates content seeds from augmentation seeds drawn from the same run seed


@dataclass(frozen=True)
class SceneStyle:
    """How big, how many and how clean the regions of a scene are (fractions of the shorter image side).

    The classes and their gratings are the same in every style; only the layout, the colours and the noise
    differ.
    """

    voronoi_cells: tuple[int, int]
    """Inclusive range of the number of Voronoi cells."""
    object_width: tuple[float, float]
    object_height: tuple[float, float]
    min_colour_distance: float
    """RGB distance between the two grating colours, so textures stay visible."""
    dark_and_light: bool
    """Draw the two colours as a dark one (each channel in 0..90) and a light one (165..255), so that the
    gratings' contrast lies along brightness, where a few filters see it; otherwise any two colours
    ``min_colour_distance`` apart, whose contrast may lie along any direction of colour space (e.g. red
    against green of the same brightness), which a small network takes many more steps to learn."""
    noise_std: float
    """Per-pixel Gaussian noise, in 0..255 units."""


STYLES: dict[str, SceneStyle] = {
    # The default: a few large regions, a large object, dark-against-light gratings and little noise, so
    # that the small supernet and network of ``autodeeplab run`` learn it within their few dozen and few
    # hundred steps on a CPU. Colour still tells nothing: every class of an image shows the same two
    # colours in the same proportions; the classes differ only in texture and (the shadow) position.
    "easy": SceneStyle((2, 4), (0.3, 0.5), (0.18, 0.3), 150.0, True, 4.0),
    # Many small cells, a small object, colour pairs of any hue, weaker contrast and more noise: most
    # pixels lie near a boundary.
    "hard": SceneStyle((4, 7), (0.2, 0.4), (0.12, 0.25), 100.0, False, 8.0),
}
DEFAULT_STYLE = "easy"


class SyntheticDataset(SegmentationDataset):
    """Generated scenes: ``num_samples`` images of ``size`` (H, W), deterministic from ``seed``.

    Options: ``num_samples`` (default 256 for train, 64 for val and test), ``size`` (default 64×64),
    ``seed`` (content and augmentation), ``style`` (a name of :data:`STYLES`: ``easy``, the default, or
    ``hard``). Needs no data root.
    """

    name = "synthetic"
    splits = ("train", "val", "test")
    class_names = CLASS_NAMES
    palette = PALETTE

    def __init__(
        self,
        root: None = None,
        split: str = "train",
        transform: Transform | None = None,
        seed: int = 0,
        num_samples: int | None = None,
        size: int | tuple[int, int] = DEFAULT_SIZE,
        style: str = DEFAULT_STYLE,
        strict: bool = True,
    ) -> None:
        super().__init__(split, transform, seed)
        if root is not None:
            raise ConfigError(
                f"data_root: the synthetic dataset is generated and takes no data root, got {root}"
            )
        self._check_split(root)
        count = DEFAULT_NUM_SAMPLES[split] if num_samples is None else num_samples
        if not isinstance(count, int) or count < 1:
            raise ConfigError(f"num_samples: must be a positive integer, got {num_samples!r}")
        pair = (size, size) if isinstance(size, int) else tuple(size)
        if len(pair) != 2 or not all(isinstance(v, int) and v >= 16 for v in pair):
            raise ConfigError(f"size: must be (height, width) integers of at least 16, got {size!r}")
        if style not in STYLES:
            raise ConfigError(f"style: must be one of {', '.join(STYLES)}, got {style!r}")
        self.num_samples = count
        self.image_size = (pair[0], pair[1])
        self.style = STYLES[style]

    def __len__(self) -> int:
        return self.num_samples

    def image_path(self, index: int) -> str:
        return f"synthetic/{self.split}/{self._index(index):05d}"

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([_GENERATOR_TAG, self.seed, SPLIT_CODES[self.split], index])
        return generate_scene(rng, self.image_size, self.style)


def generate_scene(
    rng: np.random.Generator, size: tuple[int, int], style: SceneStyle = STYLES[DEFAULT_STYLE]
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(uint8 [H, W, 3] RGB, uint8 [H, W] class ids)`` drawn from ``rng``."""
    height, width = size
    labels = _voronoi_labels(rng, height, width, style.voronoi_cells)
    texture_of = labels.copy()  # which grating each pixel shows
    _place_object(rng, labels, texture_of, style)
    phases = rng.uniform(0.0, 2.0 * math.pi, size=len(GRATINGS))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    level = np.empty((height, width), dtype=np.float32)
    for texture, (degrees, period) in enumerate(GRATINGS):
        where = texture_of == texture
        if where.any():
            angle = math.radians(degrees)
            along = xs[where] * math.cos(angle) + ys[where] * math.sin(angle)
            level[where] = 0.5 + 0.5 * np.sin(2.0 * math.pi * along / period + phases[texture])
    low, high = _colour_pair(rng, style)
    rgb = low + level[..., None] * (high - low) + rng.normal(0.0, style.noise_std, size=(height, width, 3))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), labels


def _voronoi_labels(rng: np.random.Generator, height: int, width: int, cells: tuple[int, int]) -> np.ndarray:
    """``uint8 [H, W]``: nearest of a few random seed points, each point a random texture class."""
    count = int(rng.integers(cells[0], cells[1] + 1))
    points = rng.uniform(0.0, 1.0, size=(count, 2)) * (height, width)
    classes = rng.integers(0, NUM_TEXTURE_CLASSES, size=count)
    ys, xs = np.mgrid[0:height, 0:width]
    distances = (ys[None] - points[:, 0, None, None]) ** 2 + (xs[None] - points[:, 1, None, None]) ** 2
    return classes[np.argmin(distances, axis=0)].astype(np.uint8)


def _place_object(
    rng: np.random.Generator, labels: np.ndarray, texture_of: np.ndarray, style: SceneStyle
) -> None:
    """Paint an object rectangle and, right below it, a shadow of the same size showing background texture."""
    height, width = labels.shape
    side = min(height, width)
    box_w = max(2, round(rng.uniform(*style.object_width) * side))
    box_h = max(2, round(rng.uniform(*style.object_height) * side))
    top = int(rng.integers(0, height - 2 * box_h + 1))
    left = int(rng.integers(0, width - box_w + 1))
    labels[top : top + box_h, left : left + box_w] = OBJECT
    texture_of[top : top + box_h, left : left + box_w] = OBJECT
    labels[top + box_h : top + 2 * box_h, left : left + box_w] = SHADOW
    texture_of[top + box_h : top + 2 * box_h, left : left + box_w] = BACKGROUND


def _colour_pair(rng: np.random.Generator, style: SceneStyle) -> tuple[np.ndarray, np.ndarray]:
    """Two random RGB colours at least ``style.min_colour_distance`` apart, as ``float32 [3]`` arrays
    (a dark and a light one where ``style.dark_and_light``)."""
    if style.dark_and_light:
        dark = rng.uniform(0.0, 90.0, size=3).astype(np.float32)
        return dark, rng.uniform(165.0, 255.0, size=3).astype(np.float32)
    while True:
        low, high = rng.uniform(0.0, 255.0, size=(2, 3)).astype(np.float32)
        if float(np.linalg.norm(high - low)) >= style.min_colour_distance:
            return low, high
