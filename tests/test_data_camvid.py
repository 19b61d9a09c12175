"""The real CamVid copy beside the repository (``../shared/data/camvid``), when it is there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autodeeplab.data.registry import build_dataset
from autodeeplab.data.transforms import TrainTransform

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"

pytestmark = pytest.mark.skipif(not CAMVID.is_dir(), reason=f"real CamVid not present at {CAMVID}")


@pytest.mark.parametrize(("split", "count"), [("train", 367), ("val", 101), ("test", 233)])
def test_real_camvid_counts_sizes_and_label_values(split, count):
    data = build_dataset("camvid", CAMVID, split)
    assert len(data) == count and data.problems == []
    for image_path, label_path in data.samples:
        with Image.open(image_path) as image:
            assert image.size == (480, 360) and image.mode == "RGB"
        label = np.asarray(Image.open(label_path))
        assert label.shape == (360, 480) and label.max() <= 11
    _, mask = data.load_raw(0)
    assert set(np.unique(mask)) <= set(range(11)) | {255}


def test_real_camvid_through_the_training_transform():
    data = build_dataset("camvid", CAMVID, "train", TrainTransform(321, jitter=0.1), seed=0)
    x, y = data[5]
    assert x.shape == (3, 321, 321) and y.shape == (321, 321)
    assert set(np.unique(y.numpy())) <= set(range(11)) | {255}
