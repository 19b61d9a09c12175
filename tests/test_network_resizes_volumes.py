"""The found network follows the released model's resizes (corners aligned at all four places) and builds
for volumes (``spatial_dims=3``) as well as images."""

from __future__ import annotations

import torch
from test_network import ALL_OPS_CELL, TINY, tiny_net
from torch import nn
from torch.nn import functional as F

from autodeeplab.nets.model_file import TrainedInfo, load_model, save_trained
from autodeeplab.space.autodeeplab.genotype import PAPER, Genotype

# --- resizes align corners (the released model's resize_bilinear) ----------------------------------------


def _resized(source: torch.Tensor, like: torch.Tensor, align_corners: bool) -> torch.Tensor:
    return F.interpolate(source, size=like.shape[2:], mode="bilinear", align_corners=align_corners)


def _check_aligned(got: torch.Tensor, source: torch.Tensor, what: str) -> None:
    """``got`` is ``source`` resized with aligned corners, and visibly not the unaligned resize."""
    torch.testing.assert_close(got, _resized(source, got, True), msg=what)
    unaligned = _resized(source, got, False)
    assert (got - unaligned).abs().max() > 0.01 * got.abs().max() > 0, what


def test_every_resize_aligns_corners() -> None:
    """The four resizes of the found network are F.interpolate(align_corners=True) of what they resize:
    h^{l-2} to the cell's size, the upward cell input, the ASPP output in the decoder, the logits. Odd
    sizes (45×61), where aligned and unaligned resizes differ everywhere but at the corners."""
    torch.manual_seed(0)
    net = tiny_net(PAPER).eval()
    x = torch.randn(1, 3, 45, 61)
    seen: dict[str, torch.Tensor] = {}
    hooks = [net.stem.register_forward_hook(lambda m, i, o: seen.update(stem_minus1=o[0], stem0=o[1]))]
    hooks.append(net.aspp.register_forward_hook(lambda m, i, o: seen.update(aspp=o)))
    hooks.append(net.decoder.fuse.register_forward_pre_hook(lambda m, i: seen.update(fuse_in=i[0])))
    hooks.append(net.decoder.register_forward_hook(lambda m, i, o: seen.update(decoder=o)))
    for k, cell in enumerate(net.cells):
        hooks.append(cell.register_forward_hook(lambda m, i, o, k=k: seen.update({f"out{k}": o})))
        hooks.append(
            cell.pre_prev.register_forward_pre_hook(lambda m, i, k=k: seen.update({f"prev{k}": i[0]}))
        )
        hooks.append(
            cell.pre_prev_prev.register_forward_pre_hook(lambda m, i, k=k: seen.update({f"pp{k}": i[0]}))
        )
    with torch.no_grad():
        logits = net(x)
    for hook in hooks:
        hook.remove()

    outputs = [seen["stem_minus1"], seen["stem0"]] + [seen[f"out{k}"] for k in range(len(net.cells))]
    resized_pp = going_up = 0
    previous_level = 0
    for k, level in enumerate(PAPER.network_path):
        raw_prev_prev, raw_prev = outputs[k], outputs[k + 1]  # h^{l-2}, h^{l-1} before any resize
        if raw_prev_prev.shape[2:] != seen[f"prev{k}"].shape[2:]:
            _check_aligned(seen[f"pp{k}"], raw_prev_prev, f"h^(l-2) of cell {k}")
            resized_pp += 1
        if level < previous_level:
            _check_aligned(seen[f"prev{k}"], raw_prev, f"upward input of cell {k}")
            going_up += 1
        previous_level = level
    assert resized_pp >= 5 and going_up == 3  # the paper's path goes up three times
    aspp_channels = TINY["aspp_channels"]
    _check_aligned(seen["fuse_in"][:, :aspp_channels], seen["aspp"], "ASPP output in the decoder")
    _check_aligned(logits, seen["decoder"], "logits")


# --- volumes -------------------------------------------------------------------------------------------


def test_volumetric_network_trains() -> None:
    """``spatial_dims=3``: every layer is 3D and a 1-channel volume goes forward and backward (odd sizes,
    a path that goes down and up, every primitive)."""
    torch.manual_seed(0)
    genotype = Genotype(network_path=(0, 1, 2, 1), cell=ALL_OPS_CELL)
    net = tiny_net(genotype, in_channels=1, spatial_dims=3).train()
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in net.modules())
    assert any(isinstance(m, nn.Conv3d) for m in net.modules())
    x = torch.randn(1, 1, 19, 24, 29)
    logits = net(x)
    assert logits.shape == (1, TINY["num_classes"], 19, 24, 29)
    target = torch.randint(0, TINY["num_classes"], (1, 19, 24, 29))
    F.cross_entropy(logits, target).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    with torch.no_grad():
        assert torch.isfinite(net.eval()(x)).all()


def test_volumetric_network_round_trips_through_model_pt(tmp_path) -> None:
    torch.manual_seed(0)
    net = tiny_net(Genotype(network_path=(0, 1), cell=PAPER.cell), in_channels=2, spatial_dims=3).eval()
    classes = [f"c{i}" for i in range(TINY["num_classes"])]
    save_trained(tmp_path / "model.pt", net, TrainedInfo("volumes", classes, [[0, 0, 0]] * len(classes), 255))
    loaded, _ = load_model(tmp_path / "model.pt")
    assert loaded.config == net.config and loaded.config.spatial_dims == 3
    x = torch.randn(1, 2, 9, 12, 15)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
