"""Saved-activation accounting, what each memory means saves, precision, partial channels and --estimate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autodeeplab.cli.main import main
from autodeeplab.errors import ConfigError
from autodeeplab.fast.execution import ExecutionConfig, reference_switches
from autodeeplab.fast.memory import SavedTensorCounter
from autodeeplab.fast.supernet import build_supernet
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.loop import make_optimizers, weight_step
from autodeeplab.search.saved_memory import count_saved, resolution_chain, scale_saved_bytes
from autodeeplab.space.autodeeplab.supernet import SearchNetwork, SearchSpaceConfig

REFERENCE = ExecutionConfig(**reference_switches())


def tiny_net(execution: ExecutionConfig | None = None, **space) -> SearchNetwork:
    torch.manual_seed(0)
    cfg = dict(filter_multiplier=4, num_layers=3, num_blocks=2, stem_channels=(4, 4, 8))
    return build_supernet(SearchSpaceConfig(**{**cfg, **space}), num_classes=3, execution=execution)


def saved(net: SearchNetwork, size: int = 33, step: str = "weight") -> int:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, size, size, generator=g), torch.randint(0, 3, (2, size, size), generator=g)
    records = count_saved(net, x, y, nn.CrossEntropyLoss(), step, net.execution.precision)
    return sum(r.nbytes for r in records)


def test_counter_deduplicates_storages_and_skips_parameters():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    x = torch.randn(1, 2, 8, 8)
    with SavedTensorCounter(exclude=conv.parameters()) as counter:
        r = torch.relu(x.requires_grad_())  # saves its output
        conv(r)  # saves the same tensor (its input) and its weight (excluded)
    assert counter.total_bytes == r.numel() * 4
    assert [rec.shape for rec in counter.records] == [(1, 2, 8, 8)]


def test_resolution_chain_follows_stride_two_ceil():
    assert resolution_chain(321, 7) == [321, 161, 81, 41, 21, 11, 6]
    assert resolution_chain(97, 6) == [97, 49, 25, 13, 7, 4]


@pytest.mark.parametrize("step", ["weight", "arch"])
@pytest.mark.parametrize("setting", ["defaults", "batch groups", "partial channels"])
def test_saved_bytes_scale_from_a_calibration_crop(step, setting):
    """The crop scaling of the memory estimate within 0.5% of a direct count, whatever layout the node
    inputs take (channel groups, batch groups; partial channels keep the batch groups)."""
    if setting == "batch groups":
        net = tiny_net(ExecutionConfig(groups_in_channels=False))
    elif setting == "partial channels":
        net = tiny_net(partial_channels=2)
    else:
        net = tiny_net()
    predicted = scale_saved_bytes(count_saved_records(net, 97, step), 97, 129)
    assert abs(predicted - saved(net, 129, step)) / saved(net, 129, step) < 0.005


def count_saved_records(net, size, step):
    x, y = torch.randn(2, 3, size, size), torch.randint(0, 3, (2, size, size))
    return count_saved(net, x, y, nn.CrossEntropyLoss(), step, net.execution.precision)


@pytest.mark.parametrize("step", ["weight", "arch"])
def test_fast_path_keeps_less_than_the_reference(step):
    # the part that grows with the image: the fused convolutions also keep their gathered filters
    # (about the size of the parameters, independent of the crop), which a tiny net would make look big
    def growth(net):
        return saved(net, 65, step) - saved(net, 33, step)

    assert growth(tiny_net()) < 0.8 * growth(tiny_net(REFERENCE))


def test_checkpointing_keeps_only_node_boundaries():
    full = saved(tiny_net())
    checkpointed = saved(tiny_net(ExecutionConfig(checkpoint_cells=True)))
    assert checkpointed < 0.25 * full
    assert checkpointed > 0  # the checkpoint's held inputs are counted (note_held)


def test_bf16_keeps_about_half_and_trains():
    net = tiny_net(ExecutionConfig(precision="bf16"))

    def activations(records):  # batch-leading tensors: not the bf16 copies of the weights autocast keeps
        return sum(r.nbytes for r in records if r.shape and r.shape[0] == 2)

    half = activations(count_saved_records(net, 33, "weight"))
    assert half < 0.55 * activations(count_saved_records(tiny_net(), 33, "weight"))
    before = [p.detach().clone() for p in net.weight_parameters()]
    w_opt, _, _ = make_optimizers(net, SearchConfig())
    x, y = torch.randn(2, 3, 33, 33), torch.randint(0, 3, (2, 33, 33))
    loss = weight_step(net, x, y, w_opt, nn.CrossEntropyLoss(), grad_clip=5.0, precision="bf16")
    assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in net.parameters())  # master weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, net.weight_parameters(), strict=True))


def test_fp16_needs_a_gpu():
    with pytest.raises(
        ConfigError, match=r"^execution.precision: fp16 needs a CUDA device \(running on cpu\)"
    ):
        ExecutionConfig(precision="fp16").check_device("cpu")
    ExecutionConfig(precision="bf16").check_device("cpu")


def test_partial_channels_shapes_memory_and_parameters():
    full, partial = tiny_net(), tiny_net(partial_channels=2)
    x = torch.randn(1, 3, 33, 33)
    assert partial(x).shape == full(x).shape == (1, 3, 33, 33)
    assert saved(partial) < 0.8 * saved(full)
    assert partial.cells["1_0"].edges[0].ops[3][1].in_channels == 2  # sep conv on F/2 channels
    assert sum(p.numel() for p in partial.parameters()) < sum(p.numel() for p in full.parameters())


def test_partial_channels_must_divide_f():
    message = (
        r"^space\.partial_channels: must be at least 1 and divide space\.filter_multiplier \(4\), got 3$"
    )
    with pytest.raises(ConfigError, match=message):
        tiny_net(partial_channels=3)


def test_estimate_cli_prints_prediction_and_creates_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = [
        "space.filter_multiplier=2",
        "space.num_layers=2",
        "space.num_blocks=2",
        "space.stem_channels=[4,4,8]",
        "data.crop_size=32",
        "data.synthetic_size=[32,32]",
        "data.synthetic_train_samples=8",
        "batch_size=2",
        "epochs=2",
        "arch_start_epoch=1",
        "device=cpu",
    ]
    args = ["search", "--estimate", "--quiet"] + [part for s in tiny for part in ("--set", s)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "activations kept for backward: weight step" in out
    assert "s per iteration" in out
    assert "full search: 2 epochs x 2 steps" in out  # 8 images → trainA 4 → 2 batches of 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        ((7,), r"level 7 does not exist \(levels are 0\.\.3 with space\.num_levels=4\)$"),
        ((-1,), r"level -1 does not exist"),
        ((0, 0), r"\[0, 0\] lists a level twice$"),
        ((), r"empty, so checkpoint_cells would checkpoint nothing"),
    ],
)
def test_checkpoint_levels_are_validated_against_the_levels(levels, message):
    execution = ExecutionConfig(checkpoint_cells=True, checkpoint_levels=levels)
    with pytest.raises(ConfigError, match=r"^execution\.checkpoint_levels: " + message):
        tiny_net(execution, num_levels=4)
    with pytest.raises(ConfigError, match=r"^execution\.checkpoint_levels: "):
        execution.check_levels(4)


def test_checkpoint_levels_default_to_all_levels_of_any_supernet():
    execution = ExecutionConfig(checkpoint_cells=True)
    net = tiny_net(execution, num_levels=3)  # the default is valid whatever num_levels is
    assert [execution.checkpoints_level(s) for s in range(3)] == [True, True, True]
    assert ExecutionConfig(checkpoint_cells=True, checkpoint_levels=[0, 2]).checkpoints_level(1) is False
    assert ExecutionConfig(checkpoint_levels=[0]).checkpoints_level(0) is False  # checkpointing off
    assert saved(net) < 0.25 * saved(tiny_net(num_levels=3))
    with pytest.raises(ConfigError, match=r"level 3 does not exist \(levels are 0\.\.2 with"):
        tiny_net(ExecutionConfig(checkpoint_levels=[3]), num_levels=3)  # wrong even while unused


def test_cli_reports_a_bad_checkpoint_level_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["search", "--estimate-no-time", "--set", "device=cpu", "--set", "execution.checkpoint_levels=[7]"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "autodeeplab search: error: execution.checkpoint_levels: level 7 does not exist "
        "(levels are 0..3 with space.num_levels=4)"
    )
    assert list(tmp_path.iterdir()) == []


def test_scaling_finds_the_side_of_a_channels_last_rows_owner():
    """A saved tensor owned by channels-last rows ``[N, H, W, C]`` (a view of a tensor made as rows, e.g. by
    ``fast.pointwise.to_rows``), by rows of channel groups ``[N, H, W, G, (E,) C]`` or by batch groups'
    partial sums ``[G, N, C, H, W]``, scales with the crop like its ``[N, C, H, W]`` twin; a non-spatial one
    does not."""
    from autodeeplab.fast.memory import SavedRecord

    f32 = torch.float32
    twins = [
        SavedRecord(2 * 8 * 25 * 25 * 4, (2, 8, 25, 25), f32),
        SavedRecord(2 * 8 * 25 * 25 * 4, (2, 25, 25, 8), f32),
        SavedRecord(2 * 8 * 25 * 25 * 4, (2, 25, 25, 2, 4), f32),  # rows of 2 channel groups
        SavedRecord(2 * 8 * 25 * 25 * 4, (2, 25, 25, 2, 2, 2), f32),  # and of 2 edges each
        SavedRecord(2 * 8 * 25 * 25 * 4, (2, 1, 8, 25, 25), f32),  # batch groups' partial sums
        SavedRecord(2 * 8 * 25 * 25 * 4, (2, 2, 2, 25, 25), f32),  # the same, N = C = a side (2)
    ]
    scaled = [scale_saved_bytes([r], 97, 129) for r in twins]
    assert scaled == [2 * 8 * 33 * 33 * 4] * 6
    assert scale_saved_bytes([SavedRecord(40 * 4, (40,), f32)], 97, 129) == 160
