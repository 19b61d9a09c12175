"""The search's validation is bounded (issue 17): centre crops of the search crop size, in batches, capped
by ``data.max_val_images``; and ``--estimate`` counts it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autodeeplab.config.settings import load_config
from autodeeplab.data.transforms import IGNORE_INDEX, CentreCropTransform
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.data import validation_miou
from autodeeplab.search.estimate import SearchEstimate, format_estimate, projected_search_seconds


def test_centre_crop_takes_the_middle_window_and_pads_small_images_with_ignore():
    image = np.arange(7 * 9 * 3, dtype=np.uint8).reshape(7, 9, 3)
    mask = np.arange(7 * 9, dtype=np.uint8).reshape(7, 9)
    out_image, out_mask = CentreCropTransform(3)(image, mask)
    assert out_image.shape == (3, 3, 3) and out_mask.tolist() == mask[2:5, 3:6].tolist()
    _, padded = CentreCropTransform((9, 4))(image, mask)
    assert padded.shape == (9, 4)
    assert padded[:7].tolist() == mask[:, 2:6].tolist() and (padded[7:] == IGNORE_INDEX).all()


class Recorder(nn.Module):
    """Logits that are right where the mask is 0 (class 0 everywhere); records the input shapes."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes, self.shapes = classes, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        logits = torch.zeros(x.shape[0], self.classes, *x.shape[2:])
        logits[:, 0] = 1.0
        return logits


class Photos(torch.utils.data.Dataset):
    """Five 'photos' of 40x50 through the validation transform."""

    num_classes, class_names, ignore_index = 2, ("a", "b"), IGNORE_INDEX

    def __init__(self, transform) -> None:
        self.transform = transform

    def __len__(self) -> int:
        return 5

    def __getitem__(self, index: int):
        rng = np.random.default_rng(index)
        return self.transform(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), np.zeros((40, 50), np.uint8))


@pytest.mark.parametrize(("cap", "batches"), [(None, [(2, 3, 16, 16)] * 2 + [(1, 3, 16, 16)]), (3, None)])
def test_validation_runs_centre_crops_in_batches_up_to_the_cap(cap, batches):
    overrides = ["data.crop_size=16", "batch_size=2", f"data.max_val_images={'null' if cap is None else cap}"]
    config = load_config(SearchConfig, preset="cpu", overrides=overrides)
    model = Recorder(2)
    miou = validation_miou(model, Photos(CentreCropTransform(16)), config, torch.device("cpu"), quiet=True)
    assert miou == pytest.approx(1.0)  # class a right everywhere; b absent from masks and predictions
    if batches is not None:
        assert model.shapes == batches
    else:
        assert sum(shape[0] for shape in model.shapes) == 3 and model.shapes[0] == (2, 3, 16, 16)


def test_the_estimate_counts_validation():
    e = SearchEstimate("cpu", 64, 4, 0, 0, 0, 1.0, 2.0, 10, epochs=6, arch_start_epoch=2)
    e.val_images, e.val_pixels, e.val_image_seconds = 8, 64 * 64, 0.5
    steps = projected_search_seconds(1.0, 2.0, 10, 6, 2)
    assert e.search_hours * 3600 == pytest.approx(steps + 6 * 8 * 0.5)
    text = format_estimate(e)
    assert "with validation" in text and "validation: 8 images of about 64x64 pixels" in text
    e.val_images = None
    assert e.search_hours * 3600 == pytest.approx(steps)
    assert "not counted" in format_estimate(e) and "without validation" in format_estimate(e)
