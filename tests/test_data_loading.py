"""Augmentation is a pure function of (seed, epoch, index): same batches across runs and worker counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_data_layouts import write_camvid
from torch.utils.data import DataLoader, Subset

from autodeeplab.data.registry import build_dataset
from autodeeplab.data.splits import set_epoch
from autodeeplab.data.transforms import TrainTransform
from autodeeplab.errors import DataError
from autodeeplab.runs.sampling import split_halves


def synthetic(seed: int = 0, num_samples: int = 6):
    transform = TrainTransform(24, scale_range=(0.5, 1.5), jitter=0.2)
    return build_dataset(
        "synthetic", None, "train", transform, num_samples=num_samples, size=(32, 32), seed=seed
    )


def batches(dataset, workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = DataLoader(dataset, batch_size=3, shuffle=False, num_workers=workers)
    return list(loader)


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, y) and torch.equal(m, n) for (x, m), (y, n) in zip(a, b, strict=True)
    )


def test_sample_depends_on_seed_epoch_and_index_only():
    first, second = synthetic(), synthetic()
    x, y = first[2]
    for _ in range(2):
        first[0], first[1]  # reading other samples in between changes nothing
    assert torch.equal(first[2][0], x) and torch.equal(second[2][1], y)
    second.set_epoch(1)
    assert not torch.equal(second[2][0], x)
    assert not torch.equal(synthetic(seed=1)[2][0], x)
    second.set_epoch(0)
    assert torch.equal(second[2][0], x)


@pytest.mark.parametrize("epoch", [0, 3])
def test_worker_counts_give_identical_batches(epoch):
    reference = synthetic()
    reference.set_epoch(epoch)
    expected = batches(reference, 0)
    for workers in (1, 2):
        dataset = synthetic()
        dataset.set_epoch(epoch)
        assert same(batches(dataset, workers), expected)


def test_set_epoch_reaches_through_subsets_to_workers():
    dataset = synthetic()
    indices_a, _ = split_halves(len(dataset), seed=0)
    train_a = Subset(dataset, indices_a)
    set_epoch(train_a, 2)
    assert dataset.epoch == 2
    reference = synthetic()
    reference.set_epoch(2)
    expected = [reference[i] for i in train_a.indices]
    got = [
        (x, y)
        for xb, yb in DataLoader(train_a, batch_size=1, num_workers=2)
        for x, y in zip(xb, yb, strict=True)
    ]
    assert same(got, expected)


def test_broken_file_in_a_worker_stops_with_one_line_naming_the_file(tmp_path):
    root = write_camvid(tmp_path)
    broken = root / "train" / "train_001.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated PNG
    dataset = build_dataset("camvid", root, "train", TrainTransform(4))
    with pytest.raises(DataError) as info:
        list(DataLoader(dataset, batch_size=1, num_workers=2))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{broken}: unreadable or truncated image file (")


def test_lazy_read_in_main_process_raises_the_same_message(tmp_path):
    root = write_camvid(tmp_path)
    broken = root / "train" / "train_001.png"
    broken.write_bytes(b"not a png at all")
    dataset = build_dataset("camvid", root, "train")
    index = [image for image, _ in dataset.samples].index(broken)
    with pytest.raises(DataError) as info:
        dataset[index]
    assert str(info.value).startswith(f"{broken}: unreadable or truncated image file (")
    assert np.asarray(dataset.load_raw(index - 1)[0]).shape == (6, 8, 3)  # neighbours still read
