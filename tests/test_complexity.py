"""Parameter and multiply-add counts: hand-computed cases, paper Table 2, and ``autodeeplab info``."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from autodeeplab.cli.main import main
from autodeeplab.nets.complexity import count_multiply_adds, count_parameters, format_count
from autodeeplab.nets.network import VARIANTS, AutoDeepLabNet, NetworkConfig
from autodeeplab.space.autodeeplab.genotype import PAPER

# Paper Table 2 (Cityscapes, 19 classes): parameters in millions, multiply-adds in billions at 1024×2048.
TABLE_2 = {"S": (10.15, 333.25), "M": (21.62, 460.93), "L": (44.42, 695.03)}
MULTIPLY_ADD_TOLERANCE = 0.07  # counting conventions differ slightly (see autodeeplab.nets.complexity)


def meta_net(variant: str, num_classes: int = 19) -> AutoDeepLabNet:
    """The full-size network on the meta device: shapes only, built in milliseconds."""
    with torch.device("meta"):
        return AutoDeepLabNet(
            PAPER, NetworkConfig(filter_multiplier=VARIANTS[variant], num_classes=num_classes)
        )


def test_counts_by_hand_on_a_small_model() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),  # 9x11 -> 5x6
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False),  # depthwise
        nn.Conv2d(8, 4, 1),  # pointwise with bias
        nn.Flatten(),
        nn.Linear(4 * 5 * 6, 7),
    )
    assert count_parameters(model) == 3 * 8 * 9 + 2 * 8 + 8 * 25 + (8 * 4 + 4) + (120 * 7 + 7)
    positions = 5 * 6
    per_image = positions * 8 * 3 * 9 + positions * 8 * 25 + positions * 4 * 8 + 120 * 7
    assert count_multiply_adds(model, (2, 3, 9, 11)) == 2 * per_image


def test_counting_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    net = AutoDeepLabNet(
        PAPER, NetworkConfig(filter_multiplier=4, aspp_channels=8, decoder_channels=8)
    ).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    count_multiply_adds(net, (1, 3, 1024, 2048))
    assert net.training
    after = net.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())
    assert not any(m._forward_hooks for m in net.modules())


def test_meta_count_equals_a_real_forward_at_an_odd_size() -> None:
    """The meta-device pass sees the same shapes as a real one (odd sizes, up and down the levels)."""
    torch.manual_seed(0)
    net = AutoDeepLabNet(
        PAPER, NetworkConfig(filter_multiplier=4, aspp_channels=8, decoder_channels=8)
    ).eval()
    real = 0

    def hook(m: nn.Module, _inputs, out: torch.Tensor) -> None:
        nonlocal real
        real += out.numel() * m.weight[0].numel()

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(torch.randn(1, 3, 67, 93))
    for h in handles:
        h.remove()
    assert count_multiply_adds(net, (1, 3, 67, 93)) == real


@pytest.mark.parametrize("variant", ["S", "M", "L"])
def test_parameters_match_table_2(variant: str) -> None:
    """Equal to the paper's printed precision (two decimals in millions)."""
    params = count_parameters(meta_net(variant))
    assert round(params / 1e6, 2) == TABLE_2[variant][0]


@pytest.mark.parametrize("variant", ["S", "M", "L"])
def test_multiply_adds_within_7_percent_of_table_2(variant: str) -> None:
    multiply_adds = count_multiply_adds(meta_net(variant), (1, 3, 1024, 2048))
    paper = TABLE_2[variant][1] * 1e9
    assert abs(multiply_adds - paper) / paper < MULTIPLY_ADD_TOLERANCE


def test_format_count() -> None:
    assert format_count(10_147_171) == "10.15M"
    assert format_count(317_541_632_000) == "317.54B"
    assert format_count(999) == "999"


def run_info(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["info", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_info_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_info(capsys, "--variant", "S", "--json")
    assert code == 0
    report = json.loads(out)
    assert type(report["params"]) is int and type(report["multiply_adds"]) is int
    assert report["params"] == count_parameters(meta_net("S"))
    assert report["multiply_adds"] == count_multiply_adds(meta_net("S"), (1, 3, 1024, 2048))
    assert report["output_stride"] == 8 and report["genotype"] == PAPER.to_dict()


def test_info_classes_and_size(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    PAPER.save(tmp_path / "genotype.json")  # a run directory holding a genotype
    args = ("--genotype", str(tmp_path), "--filter-multiplier", "20", "--input-size", "360", "480", "--json")
    _, out19, _ = run_info(capsys, *args)
    _, out11, _ = run_info(capsys, *args, "--num-classes", "11")
    r19, r11 = json.loads(out19), json.loads(out11)
    # Only the classifier changes: 8 fewer classes × (256 weights + 1 bias).
    assert r19["params"] - r11["params"] == 8 * (256 + 1)
    assert r11["input_size"] == [360, 480]
    assert r11["multiply_adds"] == count_multiply_adds(meta_net("S", 11), (1, 3, 360, 480))


def test_info_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_info(capsys, "--filter-multiplier", "48")
    assert code == 0
    assert "parameters     44,424,435 (44.42M)" in out
    assert "at 1024x2048" in out


def test_info_errors(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    code, _, err = run_info(capsys, "--genotype", str(tmp_path / "missing.json"))
    assert code == 2
    assert err.startswith(f"autodeeplab info: error: {tmp_path / 'missing.json'}: not a built-in genotype")
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"version": 1, "network_path": [0, 2], "cell": [[["sep_conv_3x3", 0], ["skip_connect", 1]]]}'
    )
    code, _, err = run_info(capsys, "--genotype", str(bad))
    assert code == 2 and "network_path[1]: level 2 jumps more than one level" in err
    with pytest.raises(SystemExit) as exit_info:
        run_info(capsys, "--variant", "S", "--filter-multiplier", "20")
    assert exit_info.value.code == 2


def test_info_for_volumes(capsys: pytest.CaptureFixture[str]) -> None:
    """Three sizes build the 3D network: 3D kernels (27 taps) over a D×H×W volume."""
    args = ("--filter-multiplier", "4", "--num-classes", "3", "--in-channels", "1", "--json")
    code, out, _ = run_info(capsys, *args, "--input-size", "32", "40", "48")
    assert code == 0
    report = json.loads(out)
    assert (report["spatial_dims"], report["in_channels"], report["input_size"]) == (3, 1, [32, 40, 48])
    config = NetworkConfig(filter_multiplier=4, num_classes=3, in_channels=1, spatial_dims=3)
    with torch.device("meta"):
        net = AutoDeepLabNet(PAPER, config)
    assert report["params"] == count_parameters(net)
    assert report["multiply_adds"] == count_multiply_adds(net, (1, 1, 32, 40, 48))
    code, out2d, _ = run_info(capsys, *args, "--input-size", "40", "48")
    assert json.loads(out2d)["params"] < report["params"]  # 3×3 kernels hold fewer weights than 3×3×3
    code, _, err = run_info(capsys, *args, "--input-size", "8", "8", "8", "8")
    assert code == 2
    assert err.strip() == (
        "autodeeplab info: error: --input-size: expected H W (an image) or D H W (a volume), got 4 sizes"
    )
