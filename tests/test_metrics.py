"""Confusion-matrix metrics against hand-computed and brute-force answers, ignore label included."""

from __future__ import annotations

import math

import pytest
import torch

from autodeeplab.errors import DataError
from autodeeplab.infer.metrics import ConfusionMatrix, metrics_from_confusion

IGNORE = 255


def hand_example() -> tuple[torch.Tensor, torch.Tensor]:
    """3 classes; the last pixel is ignored and predicted as class 2 (which must not count)."""
    target = torch.tensor([[0, 0, 1], [1, 2, IGNORE]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])
    return pred, target


def test_hand_computed_confusion_matrix_and_metrics() -> None:
    cm = ConfusionMatrix(3, IGNORE)
    pred, target = hand_example()
    cm.update(pred, target)
    # rows = truth, columns = prediction; the ignored pixel (predicted 2) is nowhere.
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    m = cm.compute(["a", "b", "c"])
    # IoU: a = 1 / (2 + 2 - 1), b = 2 / (2 + 3 - 2), c = 0 / (1 + 0 - 0)
    assert m.per_class_iou == pytest.approx((1 / 3, 2 / 3, 0.0))
    assert m.miou == pytest.approx(1 / 3)
    assert m.pixel_accuracy == pytest.approx(3 / 5)
    assert m.mean_class_accuracy == pytest.approx((1 / 2 + 2 / 2 + 0) / 3)
    assert m.num_pixels == 5


def test_streaming_over_batches_equals_one_matrix() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (6, 7, 9), generator=g)
    target[target == 4] = IGNORE
    pred = torch.randint(0, 4, (6, 7, 9), generator=g)
    whole = ConfusionMatrix(4, IGNORE)
    whole.update(pred, target)
    streamed = ConfusionMatrix(4, IGNORE)
    for i in range(6):
        streamed.update(pred[i], target[i])
    assert torch.equal(whole.matrix, streamed.matrix)
    # mIoU of the split is not the mean of per-image mIoUs: it comes from the one matrix.
    assert streamed.compute().miou == pytest.approx(whole.compute().miou)


def test_random_labels_match_brute_force_loops() -> None:
    g = torch.Generator().manual_seed(1)
    k = 4
    target = torch.randint(0, k + 1, (2, 11, 13), generator=g)
    target[target == k] = IGNORE
    pred = torch.randint(0, k, (2, 11, 13), generator=g)
    cm = ConfusionMatrix(k, IGNORE)
    cm.update(pred, target)
    brute = [[0] * k for _ in range(k)]
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist(), strict=True):
        if t != IGNORE:
            brute[t][p] += 1
    assert cm.matrix.tolist() == brute
    ious = []
    for c in range(k):
        tp = brute[c][c]
        fp = sum(brute[t][c] for t in range(k)) - tp
        fn = sum(brute[c]) - tp
        ious.append(tp / (tp + fp + fn))
    m = cm.compute()
    assert m.per_class_iou == pytest.approx(tuple(ious))
    assert m.miou == pytest.approx(sum(ious) / k)
    total = sum(map(sum, brute))
    assert m.pixel_accuracy == pytest.approx(sum(brute[c][c] for c in range(k)) / total)


def test_absent_class_is_left_out_of_the_mean_and_false_positive_class_scores_zero() -> None:
    # class 2 never occurs (truth or prediction); class 3 is only predicted.
    matrix = torch.tensor([[3, 0, 0, 1], [0, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    m = metrics_from_confusion(matrix)
    assert math.isnan(m.per_class_iou[2])
    assert m.per_class_iou[3] == 0.0
    assert m.miou == pytest.approx((3 / 4 + 1.0 + 0.0) / 3)
    d = m.to_dict()
    assert d["per_class_iou"]["class_2"] is None
    assert d["confusion"] == matrix.tolist()


def test_everything_ignored_gives_undefined_metrics() -> None:
    cm = ConfusionMatrix(2, IGNORE)
    cm.update(torch.zeros(3, 3, dtype=torch.long), torch.full((3, 3), IGNORE))
    m = cm.compute()
    assert m.num_pixels == 0
    assert math.isnan(m.miou) and math.isnan(m.pixel_accuracy)
    assert m.to_dict()["miou"] is None


def test_ground_truth_outside_the_classes_is_a_data_error() -> None:
    cm = ConfusionMatrix(3, IGNORE)
    message = r"^ground-truth label 7 is outside 0\.\.2 and is not the ignore label 255$"
    with pytest.raises(DataError, match=message):
        cm.update(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[0, 7]]))
    assert cm.matrix.sum() == 0  # nothing half-added


def test_table_lists_every_class_and_the_summary() -> None:
    cm = ConfusionMatrix(3, IGNORE)
    cm.update(*hand_example())
    lines = cm.compute(["sky", "road", "car"]).format_table().splitlines()
    rows = {line.split()[0]: line.split()[-1] for line in lines if line and not line.startswith("-")}
    assert rows["sky"] == "33.33" and rows["road"] == "66.67" and rows["car"] == "0.00"
    assert rows["mIoU"] == "33.33"
    assert any(line.startswith("pixel accuracy") and line.endswith("60.00") for line in lines)
