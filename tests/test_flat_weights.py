"""The edges' filters kept in one tensor (``execution.flat_edge_weights``, issue 16): the same values and
gradients as ``torch.cat`` of the parameters, ordinary parameters, and a search that ends bit-identical to
one without it (the fused SGD updates the slices in place)."""

from __future__ import annotations

import torch
from torch import nn

from autodeeplab.checkpoint_io import load_checkpoint, save_checkpoint
from autodeeplab.fast.execution import ExecutionConfig
from autodeeplab.fast.flat_weights import flat_weight
from autodeeplab.fast.supernet import build_supernet
from autodeeplab.ops.losses import make_loss
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.steps import arch_step, make_optimizers, weight_step
from autodeeplab.space.autodeeplab.supernet import SearchSpaceConfig


def test_value_and_gradient_equal_the_concatenation_and_parameters_stay_leaves():
    torch.manual_seed(0)
    flat = [nn.Parameter(torch.randn(4, 3, 3, 3)) for _ in range(3)]
    plain = [nn.Parameter(p.detach().clone()) for p in flat]
    x = torch.randn(2, 3, 8, 8)
    for _ in range(2):  # the second call reuses the layout
        y = nn.functional.conv2d(x, flat_weight(flat))
        (y * y).sum().backward()
        z = nn.functional.conv2d(x, torch.cat(plain))
        (z * z).sum().backward()
        assert torch.equal(y, z)
        for p, q in zip(flat, plain, strict=True):
            assert p.is_leaf and p.is_contiguous() and p.grad.is_contiguous()
            assert torch.equal(p.grad, q.grad)
            p.grad = q.grad = None
    # the parameters are the consecutive slices of the one tensor returned
    fused = flat_weight(flat)
    assert fused.data_ptr() == flat[0].data_ptr()
    assert flat[1].data_ptr() == flat[0].data_ptr() + flat[0].numel() * flat[0].element_size()
    # new storage (here a dtype change) is noticed and laid out again
    holder = nn.ParameterList(flat).double()
    again = flat_weight(list(holder))
    assert again.dtype == torch.float64 and again.data_ptr() == holder[0].data_ptr()
    assert torch.equal(again, torch.cat([p.detach() for p in holder]))


def _search_pair(space: SearchSpaceConfig) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    on = build_supernet(space, 3, execution=ExecutionConfig(flat_edge_weights=True))
    off = build_supernet(space, 3, execution=ExecutionConfig(flat_edge_weights=False))
    with torch.no_grad():  # away from the near-uniform start
        on.alpha.normal_()
        on.beta.normal_()
    off.load_state_dict(on.state_dict())
    return on, off


def _steps(model: nn.Module, config: SearchConfig, batches) -> list[float]:
    weight_opt, arch_opt, _ = make_optimizers(model, config)
    criterion, losses = make_loss("ce", 255), []
    for images, masks in batches:
        losses.append(float(weight_step(model, images, masks, weight_opt, criterion, config.grad_clip)))
        losses.append(float(arch_step(model, images, masks, arch_opt, criterion)))
    return losses


def test_a_search_with_flat_weights_ends_bit_identical_to_one_without():
    space = SearchSpaceConfig(
        filter_multiplier=2, num_layers=3, num_levels=3, num_blocks=3, stem_channels=(2, 2, 4)
    )
    config = SearchConfig(space=space)
    on, off = _search_pair(space)
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(2, 3, 19, 23, generator=g), torch.randint(0, 3, (2, 19, 23), generator=g))
        for _ in range(3)
    ]
    assert _steps(on, config, batches) == _steps(off, config, batches)
    state_on, state_off = on.state_dict(), off.state_dict()
    assert list(state_on) == list(state_off)  # the same names: checkpoints do not change
    for name, value in state_on.items():
        assert torch.equal(value, state_off[name]), name
    # some parameters really do live in one tensor
    edges = on.cells["1_0"].edges
    a, b = edges[1].op("atr_conv_3x3")[1].weight, edges[3].op("atr_conv_3x3")[1].weight
    assert b.data_ptr() == a.data_ptr() + a.numel() * a.element_size()


def test_a_checkpoint_of_a_flat_supernet_round_trips(tmp_path):
    space = SearchSpaceConfig(
        filter_multiplier=2, num_layers=2, num_levels=2, num_blocks=2, stem_channels=(2, 2, 4)
    )
    on, _ = _search_pair(space)
    on.train()
    on(torch.randn(2, 3, 17, 17))  # lays the filters out
    save_checkpoint(tmp_path / "c.pt", {"model": on.state_dict()})
    torch.manual_seed(5)
    other = build_supernet(space, 3)
    other(torch.randn(2, 3, 17, 17))  # laid out too, with other values
    other.load_state_dict(load_checkpoint(tmp_path / "c.pt")["model"])
    for (name, p), q in zip(on.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    on.eval(), other.eval()
    x = torch.randn(1, 3, 17, 17)
    with torch.no_grad():
        assert torch.equal(on(x), other(x))  # the loaded values are the ones the fused calls read


def test_the_layout_is_made_with_the_supernet_and_again_after_a_conversion():
    space = SearchSpaceConfig(
        filter_multiplier=2, num_layers=2, num_levels=2, num_blocks=2, stem_channels=(2, 2, 4)
    )
    net = build_supernet(space, 3)
    edges = net.cells["1_0"].edges

    def shared() -> bool:  # edges 1 and 3 both read state 1: their filters are neighbours
        a, b = edges[1].op("sep_conv_3x3")[6].weight, edges[3].op("sep_conv_3x3")[6].weight
        return b.data_ptr() == a.data_ptr() + a.numel() * a.element_size()

    assert shared()  # before any forward: a count of saved tensors sees the final storage
    net.double()
    assert shared() and edges[1].op("sep_conv_3x3")[6].weight.dtype == torch.float64
    off = build_supernet(space, 3, execution=ExecutionConfig(flat_edge_weights=False))
    assert all(p.is_contiguous() and p.storage_offset() == 0 for p in off.parameters())  # each its own


def test_an_unused_group_gets_no_gradient_as_with_cat():
    from autodeeplab.fast.flat_weights import flat_weights

    groups = [[nn.Parameter(torch.randn(2, 3, 3, 3)) for _ in range(2)] for _ in range(2)]
    used, _ = flat_weights(groups)
    nn.functional.conv2d(torch.randn(1, 3, 5, 5), used).sum().backward()
    assert all(p.grad is not None for p in groups[0])
    assert all(p.grad is None for p in groups[1])  # zeros would still move them by weight decay


def test_a_flat_supernet_pickles_swaps_shares_memory_and_trains_after_inference_mode(tmp_path):
    import io

    space = SearchSpaceConfig(
        filter_multiplier=2, num_layers=2, num_levels=2, num_blocks=2, stem_channels=(2, 2, 4)
    )
    net = build_supernet(space, 3)
    buffer = io.BytesIO()
    torch.save(net, buffer)  # the whole module, as some users do (no weak references in the way)
    assert len(buffer.getvalue()) > 0
    swapped = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        net.double()  # torch.utils.swap_tensors refuses tensors that have weak references
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swapped)
    net.float().share_memory()
    assert all(p.is_shared() for p in net.parameters())  # laid out again, in shared memory
    fresh = build_supernet(space, 3)
    fresh.load_state_dict(net.state_dict(), assign=True)  # new storage: laid out at the next call
    fresh.train()
    with torch.inference_mode():
        fresh(torch.randn(2, 3, 17, 17))
    assert not any(p.is_inference() for p in fresh.parameters())
    loss = fresh(torch.randn(2, 3, 17, 17)).sum()
    loss.backward()  # trainable after a layout made under inference mode


def test_gradients_accumulate_over_backwards_and_skip_frozen_parameters_as_autograd_does():
    """The group's gradient reaches the parameters through a hook (one leaf per group): a second backward
    adds to the parameters' gradients, ``zero_grad`` in either mode starts again, and a frozen parameter of
    a partly frozen group gets none — as with ``torch.cat`` of the parameters."""
    torch.manual_seed(0)
    flat = [nn.Parameter(torch.randn(2, 3, 3, 3)) for _ in range(3)]
    plain = [nn.Parameter(p.detach().clone()) for p in flat]
    flat[1].requires_grad_(False)
    plain[1].requires_grad_(False)
    x = torch.randn(2, 3, 6, 6)

    def both(backwards: int) -> None:
        for _ in range(backwards):
            nn.functional.conv2d(x, flat_weight(flat)).square().sum().backward()
            nn.functional.conv2d(x, torch.cat(plain)).square().sum().backward()

    both(2)
    for p, q in zip(flat, plain, strict=True):
        assert (p.grad is None) == (q.grad is None) and (q.grad is None) == (not q.requires_grad)
        if q.grad is not None:
            assert torch.equal(p.grad, q.grad)
    for set_to_none in (False, True):
        for p in flat + plain:
            if p.grad is not None:
                p.grad = None if set_to_none else p.grad.zero_()
        both(1)
        for p, q in zip(flat[::2], plain[::2], strict=True):
            assert torch.equal(p.grad, q.grad)


def test_calls_without_gradients_read_an_alias_outside_the_graph():
    flat = [nn.Parameter(torch.randn(2, 3, 1, 1)) for _ in range(2)]
    with torch.no_grad():
        assert not flat_weight(flat).requires_grad
    for p in flat:
        p.requires_grad_(False)
    alias = flat_weight(flat)
    assert not alias.requires_grad and alias.data_ptr() == flat[0].data_ptr()


def test_a_deep_copy_trains_its_own_parameters():
    import copy

    space = SearchSpaceConfig(
        filter_multiplier=2, num_layers=2, num_levels=2, num_blocks=2, stem_channels=(2, 2, 4)
    )
    torch.manual_seed(0)
    net = build_supernet(space, 3).train()
    twin = copy.deepcopy(net)
    twin(torch.randn(2, 3, 17, 17)).sum().backward()
    assert all(p.grad is None for p in net.parameters())
    edge = twin.cells["1_0"].edges[1].op("atr_conv_3x3")[1].weight
    assert edge.grad is not None and edge.grad.abs().sum() > 0


def test_a_dropped_flat_supernet_frees_its_grouped_parameters():
    """The gradient hook reaches its group through a weak reference: with a strong one the cycle
    parameter → group → tensor → hook → parameters ran through C++, where the collector cannot see it, and
    every dropped supernet's filters (and gradients) stayed allocated."""
    import gc
    import weakref

    space = SearchSpaceConfig(
        filter_multiplier=2, num_layers=2, num_levels=2, num_blocks=2, stem_channels=(2, 2, 4)
    )
    net = build_supernet(space, 3).train()
    net(torch.randn(2, 3, 17, 17)).sum().backward()
    weight = net.cells["1_0"].edges[1].op("atr_conv_3x3")[1].weight  # lives in a group of two
    assert weight.grad is not None
    alive = weakref.ref(weight)
    del net, weight
    gc.collect()
    assert alive() is None
