"""All the mixed ops that read one cell state, evaluated together (exact).

In a search cell, a state (h^{l-2}, h^{l-1} or a block output) feeds one mixed op in every later block: up
to B edges with the same input and their own weights. Evaluated one by one they cost 10 convolutions and 8
batch norms each, mostly tiny calls whose fixed cost dominates at search sizes. Evaluated together:

- the ReLU that starts each conv op, both pools and the identity are computed once: pools have no weights,
  and in training mode the BN after a pool normalises with batch statistics, the same for every edge
  (each edge's BN still records them in its running statistics);
- each conv primitive is one convolution for all E edges: the atrous convs and the depthwise convs stack
  their filters; the first depthwise conv of a sep conv reads the input repeated once per edge
  (``repeat_separable_input``; off: a depthwise conv with E outputs per channel, whose block-diagonal
  pointwise conv then reorders the channels from (channel, edge) to (edge, channel)), and the pointwise
  convs are grouped convs;
- the E batch norms after a conv are one call over E·C channels.

That is 10 convolutions per state instead of 10 per edge. Outputs, gradients and running statistics
equal the edge-by-edge evaluation (tested). The filters are the edges' own parameters, stacked at every call
by ``torch.cat``, or with ``flat_edge_weights`` kept side by side in one tensor per primitive so that the
stack is that tensor (:mod:`autodeeplab.fast.flat_weights`); either way the parameters' names,
``state_dict`` and optimizers are those of the edge-by-edge modules.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from autodeeplab.fast.channel_groups import convs_on_the_batch_axis, repeat_filters
from autodeeplab.fast.depthwise import repeated_depthwise_convs
from autodeeplab.fast.execution import ExecutionConfig
from autodeeplab.fast.flat_weights import flat_weights
from autodeeplab.fast.grouped_bn import multi_batch_norm, shared_batch_norm
from autodeeplab.fast.pointwise import from_rows, pointwise_conv, to_rows
from autodeeplab.fast.pooling import max_pool_saving_input
from autodeeplab.ops.depthwise import depthwise_conv
from autodeeplab.ops.primitives import PRIMITIVES, conv_function

_ATROUS = ("atr_conv_3x3", "atr_conv_5x5")
_SEPARABLE = ("sep_conv_3x3", "sep_conv_5x5")
_POOLS = ("max_pool_3x3", "avg_pool_3x3")
_FIRST_CONV = PRIMITIVES.index(_SEPARABLE[0])
_CONVS = PRIMITIVES[_FIRST_CONV:]
"""The conv primitives are α's last columns (:data:`PRIMITIVES`), so one split separates them."""
assert set(_CONVS) == set(_ATROUS + _SEPARABLE)


def folds_alpha(weights: torch.Tensor, execution: ExecutionConfig) -> bool:
    """Whether α scales each conv op's last BN inside it (a constant α, or by choice a learned one, see
    :mod:`autodeeplab.fast.grouped_bn`) rather than as a product after it."""
    return execution.fold_alpha_into_bn or not weights.requires_grad


def alpha_columns(
    weights: torch.Tensor, dtype: torch.dtype, channels: int, fold: bool, k: int = 1
) -> dict[str, torch.Tensor]:
    """α of ``weights`` ``[E, P]`` as ``dtype`` (the activations': a dimensioned fp32 factor would promote
    bf16 activations to fp32) by primitive: ``[E, 1]`` (broadcasts over the ``[…, E, C]`` rows of the sum),
    and with ``fold`` each conv primitive's as one factor per channel of its fused ``[G·N, E·C, *S]``
    output instead, ``[E·C]`` (edge i's weight repeated over its C channels), or ``[K·E·C]`` for
    ``[N, K·E·C, *S]`` (K channel groups).

    Views of one transposed tensor: the backward is one ``stack`` and one ``cat``, where a column per
    primitive would cost a ``select`` and its backward each. The per-channel factors are one copy for the
    four conv primitives (a repeat each would cost four, and four in the backward).
    """
    e = weights.shape[0]
    weights = weights.to(dtype)
    head, convs = weights.t().split([_FIRST_CONV, len(_CONVS)])  # [4, E] each
    columns = dict(zip(PRIMITIVES[:_FIRST_CONV], head.unsqueeze(-1).unbind(0), strict=True))
    n = len(_CONVS)
    if not fold:
        return columns | dict(zip(_CONVS, convs.unsqueeze(-1).unbind(0), strict=True))
    if k == 1:
        table = convs.unsqueeze(-1).expand(n, e, channels).reshape(n, e * channels)
    else:
        table = convs.view(n, 1, e, 1).expand(n, k, e, channels).reshape(n, k * e * channels)
    return columns | dict(zip(_CONVS, table.unbind(0), strict=True))


def _edge_rows(t: torch.Tensor, edges: int, k: int = 1) -> torch.Tensor:
    """``[G·N, E·C, *S]`` (edge-major channels) → the ``[G·N, *S, E, C]`` view; ``[N, K·E·C, *S]`` → the
    ``[N, *S, K, E, C]`` view."""
    c = t.shape[1] // (edges * k)
    return to_rows(t).unflatten(-1, (edges, c) if k == 1 else (k, edges, c))


def _conv(
    x: torch.Tensor, weight: torch.Tensor, like: nn.Module, groups: int, k: int = 1, cheap_grad: bool = False
) -> torch.Tensor:
    """``like``'s convolution of ``x`` with ``weight``, the same filters for each of ``x``'s K channel
    groups; ``cheap_grad``: a stride-1 depthwise one with the cheaper backward where one applies
    (:func:`autodeeplab.ops.depthwise.depthwise_conv`)."""
    weight = repeat_filters(weight, k)
    if cheap_grad and groups * k == x.shape[1] and all(s == 1 for s in like.stride):
        return depthwise_conv(x, weight, like.padding, like.dilation)
    conv = conv_function(x.dim() - 2)
    return conv(x, weight, None, like.stride, like.padding, like.dilation, groups * k)


_FILTERS = {name: (1,) for name in _ATROUS} | {name: (1, 2, 5, 6) for name in _SEPARABLE}
"""The positions of the filters in each conv primitive's sequence: ReLU → conv → BN, and
[ReLU → depthwise → pointwise → BN] × 2."""


def stacked_filters(edges: list[nn.Module], execution: ExecutionConfig) -> dict[str, list[torch.Tensor]]:
    """Each conv primitive's filters, every edge's concatenated along the output channels ``[E·rows, *K]``:
    views of the one tensor each group lives in (``flat_edge_weights``, one call for the state), or copies
    made by ``torch.cat``."""
    parts = {name: [edge.parts(name) for edge in edges] for name in _FILTERS}
    groups = [[p[i].weight for p in parts[name]] for name, at in _FILTERS.items() for i in at]
    if execution.flat_edge_weights:
        stacked = flat_weights(groups)
    else:
        stacked = [group[0] if len(group) == 1 else torch.cat(group) for group in groups]
    out, start = {}, 0
    for name, at in _FILTERS.items():
        out[name], start = stacked[start : start + len(at)], start + len(at)
    return out


def _atrous(relu_x, edges, name, groups, repeats, scale, filters, k, z=None):
    """``z``: the convolution's result when already made (K > 1 channel groups: by
    :func:`autodeeplab.fast.channel_groups.convs_on_the_batch_axis`, for both atrous convs at once)."""
    ops = [e.parts(name) for e in edges]  # ReLU → conv → BN
    if z is None:
        z = _conv(relu_x, filters[0], ops[0][1], 1)
    return multi_batch_norm(z, [op[2] for op in ops], groups, repeats, scale, k)


def _pointwise(z, weight, like, groups, k, matmul):
    """A (grouped) 1×1 conv of each of ``z``'s K channel groups."""
    if matmul:
        return pointwise_conv(z, weight, groups=groups, channel_groups=k)
    return _conv(z, weight, like, groups, k)


def _separable(relu_x, edges, name, groups, repeats, scale, execution: ExecutionConfig, filters, k, z=None):
    """``z``: the first depthwise conv's result when already made (``repeat_separable_input``: by
    :func:`autodeeplab.fast.depthwise.repeated_depthwise_convs`, for both sep convs at once)."""
    ops = [e.parts(name) for e in edges]  # [ReLU → dw → pw → BN] × 2
    e, c = len(ops), relu_x.shape[1] // k
    spatial = (1,) * (relu_x.dim() - 2)
    matmul, cheap = execution.pointwise_as_matmul, execution.depthwise_flipped_grad
    dw, pw, dw2, pw2 = filters  # [E·C, 1, *K], [E·C, C, 1…], [E·C, 1, *K], [E·C, C, 1…]
    if z is not None:
        z = _pointwise(z, pw, ops[0][2], e, k, matmul)
        return _separable_rest(z, ops, groups, repeats, scale, matmul, cheap, dw2, pw2, k)
    # depthwise with E outputs per input channel: output channel c·E + i is edge i's filter on channel c
    kernel = dw.shape[2:]
    dw = dw.reshape(e, c, *kernel).transpose(0, 1).reshape(c * e, 1, *kernel)
    like = ops[0][1]
    z = _conv(relu_x, dw, like, c, cheap_grad=cheap)
    # block-diagonal pointwise, columns permuted from (edge, channel) to the (channel, edge) input order
    pw = torch.block_diag(*pw.reshape(e, c, c).unbind(0)) if e > 1 else pw
    pw = pw.reshape(e * c, e, c).transpose(1, 2).reshape(e * c, c * e, *spatial)
    z = pointwise_conv(z, pw) if matmul else _conv(z, pw, ops[0][2], 1)
    return _separable_rest(z, ops, groups, repeats, scale, matmul, cheap, dw2, pw2, 1)


def _separable_rest(z, ops, groups, repeats, scale, matmul, cheap, dw2, pw2, k):
    """From the first pointwise conv's output ``[G·N, (K·)E·C, *S]`` (edge-major) on: BN → ReLU → the
    second depthwise and (grouped) pointwise conv → BN."""
    e = len(ops)
    z = F.relu(multi_batch_norm(z, [op[3] for op in ops], groups, repeats, channel_groups=k))
    z = _conv(z, dw2, ops[0][5], z.shape[1] // k, k, cheap_grad=cheap)
    # grouped: edge i's C outputs read its C inputs
    z = _pointwise(z, pw2, ops[0][6], e, k, matmul)
    return multi_batch_norm(z, [op[7] for op in ops], groups, repeats, scale, k)


def fused_mixed_ops(
    x: torch.Tensor,
    edges: list[nn.Module],
    weights: torch.Tensor,
    execution: ExecutionConfig,
    groups: int = 1,
    repeats: int = 1,
    channel_groups: int = 1,
    columns: dict[str, torch.Tensor] | None = None,
    group_rows: bool = False,
) -> list[torch.Tensor]:
    """Σ_p w_ip · op_ip(x) for every edge i reading ``x`` ``[G·N, C, *S]`` → E tensors ``[G·N, C, *S]``.

    ``edges``: E :class:`autodeeplab.space.autodeeplab.cell.MixedOp` of C channels (no partial channels
    here: the caller slices); ``weights``: ``[E, P]`` softmax weights. ``groups``/``repeats`` as in
    :mod:`autodeeplab.fast.grouped_bn`. ``channel_groups`` K > 1: ``x`` is ``[N, K·C, *S]``, K inputs side
    by side in the channels (:mod:`autodeeplab.fast.channel_groups`), and each edge's result comes as the
    ``[N, *S, K, C]`` rows view. Of ``execution``: ``pool_without_indices``; ``fold_alpha_into_bn``
    (the conv ops' weights fold into their last BN's affine transform, as a constant α always does, so no BN
    output is kept for α's gradient); ``pointwise_as_matmul`` (the 1×1 convs of channels-last ``x`` as
    matmuls, :mod:`autodeeplab.fast.pointwise`); ``depthwise_flipped_grad`` (the multiplier depthwise
    convs' input gradient as a flipped-filter depthwise conv, :mod:`autodeeplab.fast.depthwise`). The
    ReLU is shared whatever ``share_edge_relu`` says. ``columns``: :func:`alpha_columns` of ``weights``
    for this call, when the caller has them already (α is shared by every cell,
    :class:`autodeeplab.fast.cell.StateAlpha`). ``group_rows`` (K = 1): each edge's result as the
    ``[G·N, *S, 1, C]`` rows view instead, a term that broadcasts over a node's channel groups.
    """
    e, k = len(edges), channel_groups
    c = x.shape[1] // k
    fold = folds_alpha(weights, execution)
    column = alpha_columns(weights, x.dtype, c, fold, k) if columns is None else columns
    relu_x = F.relu(x)
    # The conv terms are summed as the fused convs' [G·N, (K·)E·C, *S] outputs (with α folded into their BNs,
    # as they are; else as [G·N, (K,) E, C, *S] views times α), the weightless terms added to the sum's
    # [G·N, *S, (K,) E, C] rows, broadcast over E, and each edge's result cut from those rows. For
    # channels-last activations the rows are the memory order: every gradient that comes back (the
    # convs' BNs', the pools' BNs', the state's through the skip) is channels-last with canonical strides.
    # Broadcast over E in any other order, the weightless terms' gradients came back contiguous (the
    # pools' BN backward 2-4x slower), and with a batch of one in a stride that torch 2.13's CPU batch-norm
    # backward misreads (wrong gradients; tests/test_state_alpha.py).
    weightless = []  # (α column [E, 1], [G·N, *S, (K,) 1 or E, C] term)
    for name in _POOLS:  # the pools first: the max pool keeps x for its backward as [G·N, C, *S]
        seq = edges[0].parts(name)  # pool → affine-free BN
        no_indices = execution.pool_without_indices and name == _POOLS[0]
        pooled = max_pool_saving_input(x, seq[0]) if no_indices else seq[0](x)
        y = shared_batch_norm(pooled, [edge.parts(name)[1] for edge in edges], groups, repeats, k)
        # training: one [G·N, K·C, *S] for every edge; evaluation: [E, G·N, K·C, *S] (running statistics)
        if y.dim() == x.dim():
            y = _edge_rows(y, 1, k)
        elif k == 1:
            y = y.permute(1, *range(3, y.dim()), 0, 2)
        else:
            y = y.unflatten(2, (k, c)).permute(1, *range(4, y.dim() + 1), 2, 0, 3)
        weightless.append((column[name], y))
    weightless.append((column["skip_connect"], _edge_rows(x, 1, k)))
    filters = stacked_filters(edges, execution)
    out = None
    dense: dict[str, torch.Tensor] = {}
    if k > 1:  # the dense convs through the batch axis, both at once (autodeeplab.fast.channel_groups)
        likes = [edges[0].parts(name)[1] for name in _ATROUS]
        made = convs_on_the_batch_axis(relu_x, k, [filters[name][0] for name in _ATROUS], likes)
        dense = dict(zip(_ATROUS, made, strict=True))
    first: dict[str, torch.Tensor] = {}
    if execution.repeat_separable_input:  # both sep convs' first depthwise convs on one repeat of relu_x
        likes = [edges[0].parts(name)[1] for name in _SEPARABLE]
        dws = [repeat_filters(filters[name][0], k) for name in _SEPARABLE]
        made = repeated_depthwise_convs(relu_x, dws, likes, k, execution.depthwise_flipped_grad)
        first = dict(zip(_SEPARABLE, made, strict=True))
    for name in _ATROUS + _SEPARABLE:
        scale = column[name] if fold else None
        if name in _ATROUS:
            y = _atrous(relu_x, edges, name, groups, repeats, scale, filters[name], k, dense.get(name))
        else:
            y = _separable(
                relu_x, edges, name, groups, repeats, scale, execution, filters[name], k, first.get(name)
            )
        if fold:  # α inside the BNs: the terms add as they are
            out = y if out is None else out + y
        else:  # each term's rows times α's [E, 1] column
            y = _edge_rows(y, e, k)
            out = y * column[name] if out is None else torch.addcmul(out, column[name], y)
    rows = _edge_rows(out, e, k) if fold else out  # [G·N, *S, (K,) E, C]
    for factor, y in weightless:
        rows = torch.addcmul(rows, factor, y)
    # one tensor per edge; unbind (not indexing) so that the backward stacks the E gradients once
    if k > 1:
        return list(rows.unbind(-2))
    if group_rows:
        return list(rows.unsqueeze(-3).unbind(-2))
    return [from_rows(t) for t in rows.unbind(-2)]
