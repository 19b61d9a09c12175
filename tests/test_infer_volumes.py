"""3D volumes: sliding-window probabilities, Dice, HD95, the evaluation loop, NIfTI labels, slice pictures."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

from autodeeplab.errors import ConfigError, DataError
from autodeeplab.infer.volume_metrics import dice_per_class, hd95_per_class
from autodeeplab.infer.volumes import evaluate_volumes, sliding_window_probabilities, write_label_volume
from autodeeplab.viz.volumes import plot_orthogonal_slices, slice_centre


def pointwise_model(channels: int = 2, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv3d(channels, classes, kernel_size=1).eval()


@pytest.mark.parametrize(
    ("shape", "patch", "overlap", "mode"),
    [
        ((9, 11, 13), (4, 6, 5), 0.5, "gaussian"),  # many overlapping patches, uneven strides
        ((9, 11, 13), (4, 6, 5), 0.25, "constant"),
        ((3, 5, 4), (8, 8, 8), 0.5, "gaussian"),  # smaller than the patch on every axis: padded
        ((10, 3, 7), (4, 8, 4), 0.5, "gaussian"),  # smaller on one axis only
    ],
)
def test_sliding_window_equals_whole_volume_for_a_pointwise_model(shape, patch, overlap, mode):
    pytest.importorskip("monai")
    model = pointwise_model()
    image = torch.randn(2, *shape)
    with torch.no_grad():
        whole = torch.softmax(model(image[None]), dim=1)[0]
    probs = sliding_window_probabilities(model, image, patch, overlap=overlap, sw_batch_size=3, mode=mode)
    assert probs.shape == (3, *shape) and probs.dtype == torch.float32
    # A 1×1×1 convolution sees one voxel, so any blend of any windows gives back the same probabilities.
    torch.testing.assert_close(probs, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(probs.sum(0), torch.ones(shape), atol=1e-5, rtol=0)


def test_sliding_window_runs_whole_patches_and_refuses_bad_settings():
    pytest.importorskip("monai")
    seen: list[tuple[int, ...]] = []

    class Recorder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape[2:]))
            return torch.cat([x, -x], dim=1)

    probs = sliding_window_probabilities(Recorder(), torch.randn(1, 3, 10, 5), (4, 4, 4))
    assert probs.shape == (2, 3, 10, 5)
    assert seen and set(seen) == {(4, 4, 4)}  # the network always gets exactly the patch size
    for bad in [{"patch_size": (4, 4)}, {"patch_size": (0, 4, 4)}, {"overlap": 1.0}, {"mode": "median"}]:
        kwargs = {"patch_size": (4, 4, 4), **bad}
        with pytest.raises(ConfigError):
            sliding_window_probabilities(Recorder(), torch.randn(1, 3, 10, 5), **kwargs)


def test_a_missing_optional_dependency_is_a_one_line_config_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "monai.inferers", None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(ConfigError, match=r"needs monai .*pip install -e '\.\[medical\]'"):
        sliding_window_probabilities(pointwise_model(), torch.zeros(2, 4, 4, 4), (4, 4, 4))
    with pytest.raises(ConfigError, match="needs nibabel"):
        write_label_volume(np.zeros((2, 2, 2), dtype=np.int64), tmp_path / "ref.nii", tmp_path / "out.nii")


def test_dice_by_hand_with_an_absent_class_and_ignored_voxels():
    # One row of 8 voxels (shape [1, 1, 8]); classes 0..3, 255 = ignore.
    target = np.array([[[0, 0, 1, 1, 1, 2, 255, 255]]])
    pred = np.array([[[0, 1, 1, 1, 2, 2, 1, 3]]])
    # Voxels 6 and 7 are ignored, so pred's 1 and 3 there count nowhere. On the other six:
    #   class 0: |P| = 1, |T| = 2, |P∩T| = 1 -> 2·1/3
    #   class 1: |P| = 3, |T| = 3, |P∩T| = 2 -> 2·2/6
    #   class 2: |P| = 2, |T| = 1, |P∩T| = 1 -> 2·1/3
    #   class 3: absent from both (its only prediction is ignored) -> NaN
    dice = dice_per_class(torch.from_numpy(pred), torch.from_numpy(target), num_classes=4)
    assert dice[:3] == pytest.approx([2 / 3, 4 / 6, 2 / 3])
    assert math.isnan(dice[3])
    with pytest.raises(DataError):
        dice_per_class(pred, np.array([[[0, 0, 1, 1, 1, 7, 0, 0]]]), num_classes=4)


def cube(shape, corner, size):
    volume = np.zeros(shape, dtype=np.int64)
    volume[tuple(slice(c, c + size) for c in corner)] = 1
    return volume


def test_hd95_of_two_cubes_offset_along_one_axis_with_anisotropic_spacing():
    spacing = (2.5, 0.7, 0.9)
    target = cube((12, 8, 8), (2, 2, 2), 3)
    pred = cube((12, 8, 8), (5, 2, 2), 3)  # the same 3-voxel cube, 3 voxels further along axis 0
    # Each cube's 26 surface voxels (all but its centre) lie in three slabs along axis 0. From the prediction
    # (slabs 5, 6, 7) the nearest truth surface voxel is straight back along axis 0 in the truth's slab 4
    # (an off-axis step only adds 0.7 or 0.9 mm): 9 voxels at 1 · 2.5 mm, 8 at 2 · 2.5 mm and 9 at
    # 3 · 2.5 mm. The 95th percentile of 26 sorted values sits at position 0.95 · 25 = 23.75, inside the
    # last nine (17..25): 7.5 mm; the other direction is the mirror image.
    hd = hd95_per_class(pred, target, num_classes=2, spacing=spacing)
    assert math.isnan(hd[0])  # background has no HD95
    assert hd[1] == pytest.approx(3 * 2.5)
    assert hd95_per_class(target, target, 2, spacing)[1] == 0.0
    assert math.isnan(hd95_per_class(np.zeros_like(target), target, 2, spacing)[1])  # empty prediction


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI 1.6 warns about its own deprecated argument
def test_hd95_agrees_with_monai_on_irregular_shapes():
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(0)
    spacing = (1.5, 0.8, 0.6)
    target = rng.integers(0, 3, size=(10, 12, 9))
    pred = np.where(rng.random(target.shape) < 0.2, rng.integers(0, 3, size=target.shape), target)
    ours = hd95_per_class(pred, target, 3, spacing, ignore_index=None)
    one_hot = [np.eye(3)[v].transpose(3, 0, 1, 2)[None] for v in (pred, target)]
    theirs = monai_metrics.compute_hausdorff_distance(*one_hot, percentile=95, spacing=spacing)[0]
    assert ours[1:] == pytest.approx(theirs.tolist(), abs=1e-4)


class FakeVolumes:
    """The interface of the volume datasets: ``(image [C, D, H, W], mask [D, H, W])`` and metadata."""

    num_classes = 3
    class_names = ["background", "liver", "tumour"]
    ignore_index = 255

    def __init__(self) -> None:
        self.masks = [
            cube((7, 9, 6), (1, 2, 1), 4) + cube((7, 9, 6), (2, 3, 2), 2),
            cube((5, 4, 9), (1, 1, 4), 2),
        ]
        self.masks[1][0, 0, 0] = 255  # an ignored voxel

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.from_numpy(self.masks[index])
        # The "image" carries the truth as one-hot channels (ignored voxels all zero).
        return nn.functional.one_hot(mask.clamp(max=2), 3).permute(3, 0, 1, 2).float(), mask

    def volume_id(self, index: int) -> str:
        return f"case_{index:03d}"

    def spacing(self, index: int) -> tuple[float, float, float]:
        return (2.0, 0.8, 0.8)


class Oracle(nn.Module):
    """Returns logits whose arg-max is the one-hot truth it is given as input."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


def test_evaluate_volumes_with_a_perfect_model():
    pytest.importorskip("monai")
    model = Oracle().train()
    calls: list[tuple[int, int]] = []
    result = evaluate_volumes(model, FakeVolumes(), (4, 4, 4), progress=lambda i, n: calls.append((i, n)))
    assert model.training  # restored
    assert calls == [(1, 2), (2, 2)]
    assert [row.id for row in result.rows] == ["case_000", "case_001"]
    assert result.rows[0].dice == [1.0, 1.0, 1.0] and result.rows[0].hd95[1:] == [0.0, 0.0]
    assert math.isnan(result.rows[1].dice[2]) and math.isnan(result.rows[1].hd95[2])  # no tumour in case 1
    assert result.mean_dice == 1.0 and result.mean_hd95 == 0.0
    assert result.per_class_dice == [1.0, 1.0, 1.0]
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["mean_dice"] == 1.0 and data["volumes"][1]["dice"]["tumour"] is None
    assert data["per_class_hd95"]["background"] is None
    assert "tumour" in result.format_table() and "100.00" in result.format_table()
    assert len(evaluate_volumes(model, FakeVolumes(), (4, 4, 4), max_volumes=1).rows) == 1


def test_write_label_volume_round_trip(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    affine = np.array([[0.0, 0.0, -2.5, 10.0], [0.0, 0.8, 0.0, -20.0], [0.9, 0.0, 0.0, 5.0], [0, 0, 0, 1]])
    reference = nibabel.Nifti1Image(np.full((6, 5, 4, 2), -1000, dtype=np.int16), affine)  # a 2-channel image
    reference.header.set_qform(affine, code=1)
    reference.header.set_sform(affine, code=2)
    reference.header.set_slope_inter(1.0, -1024.0)  # CT-style scaling that labels must not inherit
    ref_path = tmp_path / "ct.nii.gz"
    nibabel.save(reference, ref_path)
    labels = np.random.default_rng(0).integers(0, 4, size=(6, 5, 4))

    for name in ("labels.nii.gz", "labels.nii"):
        out = write_label_volume(torch.from_numpy(labels), ref_path, tmp_path / name)
        back = nibabel.load(out)
        np.testing.assert_array_equal(np.asanyarray(back.dataobj), labels)
        np.testing.assert_allclose(back.affine, nibabel.load(ref_path).affine)
        assert back.get_data_dtype() == np.uint8 and back.shape == (6, 5, 4)
        assert back.header.get_zooms() == pytest.approx((0.9, 0.8, 2.5))
        assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (1, 2)

    many = labels * 100  # up to 300: past uint8
    back = nibabel.load(write_label_volume(many, ref_path, tmp_path / "many.nii.gz"))
    assert back.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), many)
    with pytest.raises(ConfigError, match="do not match"):
        write_label_volume(labels[:, :, :3], ref_path, tmp_path / "bad.nii.gz")
    assert not (tmp_path / "bad.nii.gz").exists()


def test_orthogonal_slices_png(tmp_path):
    image = np.random.default_rng(0).normal(size=(10, 12, 8)).astype(np.float32)
    labels = cube((10, 12, 8), (6, 2, 1), 3)
    assert slice_centre(labels, labels.shape) == (7, 3, 2)
    assert slice_centre(None, labels.shape) == (5, 6, 4)
    palette = [[0, 0, 0], [255, 0, 0]]
    out = plot_orthogonal_slices(
        image, labels, palette, "case_000", tmp_path / "slices.png", spacing=(2, 1, 1)
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
    plain = plot_orthogonal_slices(image, None, palette, None, tmp_path / "plain.png")
    assert plain.stat().st_size > 1000


class AllBackground(nn.Module):
    """Class 0 everywhere: its Dice is 2·n₀ / (N + n₀), a function of the grid it is counted on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 3, *x.shape[2:])
        logits[:, 0] = 1.0
        return logits


def test_a_resampled_dataset_is_scored_on_the_files_own_grid(tmp_path):
    pytest.importorskip("monai")
    pytest.importorskip("nibabel")
    from test_data_volumes import label, write_nifti_folder

    from autodeeplab.data.registry import build_dataset

    root = write_nifti_folder(tmp_path / "data", count=2)  # 6x7x5 voxels of 1.5x2.0x2.5 mm
    data = build_dataset("nifti", root, "all", target_spacing=(1.0, 1.0, 1.0))
    image, mask = data[0]
    assert tuple(mask.shape) == (9, 14, 12)  # the network sees the resampled grid ...
    result = evaluate_volumes(AllBackground(), data, (8, 8, 8), with_hd95=False)
    for i, row in enumerate(result.rows):
        truth = label(i)  # ... the scores count the file's 6x7x5 voxels
        n0, n = int((truth == 0).sum()), truth.size
        assert row.dice[0] == pytest.approx(2 * n0 / (n + n0), abs=1e-6)
        assert row.dice[1:] == [0.0, 0.0]


def test_volumes_whose_class_was_missed_are_counted_beside_the_hd95_mean():
    pytest.importorskip("monai")
    result = evaluate_volumes(AllBackground(), FakeVolumes(), (4, 4, 4))
    # Nothing predicted: both classes of case 0 and the liver of case 1 are missed (the tumour of case 1
    # is in neither, so it has no Dice and is not counted).
    assert result.hd95_undefined() == [0, 2, 1]
    assert math.isnan(result.mean_hd95)
    assert result.to_dict()["hd95_undefined"] == {"background": 0, "liver": 2, "tumour": 1}
    perfect = evaluate_volumes(Oracle(), FakeVolumes(), (4, 4, 4))
    assert perfect.hd95_undefined() == [0, 0, 0] and "left out" not in perfect.format_table()


def test_mirroring_averages_the_eight_flips_each_flipped_back():
    pytest.importorskip("monai")
    torch.manual_seed(0)
    model = nn.Conv3d(2, 3, 3, padding=1).eval()  # a 3x3x3 kernel: not symmetric under flips
    image = torch.randn(2, 6, 5, 4)
    # One window covers the volume, so each pass is the softmax of the model's whole-volume output.
    plain = sliding_window_probabilities(model, image, (6, 5, 4), overlap=0.0)
    mirrored = sliding_window_probabilities(model, image, (6, 5, 4), overlap=0.0, mirror=True)
    expected = torch.zeros(3, 6, 5, 4)
    with torch.no_grad():
        for axes in [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)]:
            flipped = image.flip(axes) if axes else image
            probs = torch.softmax(model(flipped[None])[0], dim=0)
            expected += probs.flip(axes) if axes else probs
    torch.testing.assert_close(plain, torch.softmax(model(image[None])[0], dim=0).detach())
    torch.testing.assert_close(mirrored, expected / 8)
    assert not torch.allclose(mirrored, plain, atol=1e-3)


def test_keep_largest_component_by_hand():
    pytest.importorskip("scipy")
    from autodeeplab.infer.volume_metrics import keep_largest_component

    labels = np.zeros((5, 6, 7), dtype=np.int64)
    labels[0:2, 0:2, 0:2] = 1  # 8 voxels of class 1
    labels[4, 5, 6] = 1  # an island of class 1, far away
    labels[2, 2, 2] = 1  # touches the big piece at a corner only: 26-connected, kept
    labels[3:5, 0:3, 3:6] = 2  # 18 voxels of class 2
    labels[0, 5, 0] = 2  # an island of class 2
    kept = keep_largest_component(labels)
    expected = labels.copy()
    expected[4, 5, 6] = 0
    expected[0, 5, 0] = 0
    assert np.array_equal(kept, expected) and labels[4, 5, 6] == 1  # a copy; the input untouched
    assert np.array_equal(keep_largest_component(expected), expected)  # nothing more to remove
