"""The search cell evaluated the fast way: the same modules as the reference, fewer and larger calls (exact).

The reference (:mod:`autodeeplab.space.autodeeplab.cell`) calls every op module of every edge as it is, one
incoming resolution at a time. Here, following :class:`autodeeplab.fast.execution.ExecutionConfig`:

- ``batch_node_inputs``: the G inputs h^{l-1} of a node run as one batch ``[G·N, C, *S]`` with per-group
  batch norm (:mod:`autodeeplab.fast.grouped_bn`), and the edges that read the shared h^{l-2} run once for
  all groups (their BNs record the statistics G times, as the G reference calls would);
- ``fuse_edges``: all the edges that read one state run as one call per primitive
  (:mod:`autodeeplab.fast.fused_edges`); otherwise edge by edge (:func:`mixed_op`), with
  ``share_edge_relu`` one ReLU per edge for all of its conv ops;
- ``pool_without_indices``, ``fold_alpha_into_bn``, ``pointwise_as_matmul``, ``depthwise_flipped_grad``: see
  their fields.

Every batch norm goes through :mod:`autodeeplab.fast.grouped_bn`, so that checkpoint recomputations move
no running statistic and the updates can be batched (:mod:`autodeeplab.fast.running_stats`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from autodeeplab.fast.channel_groups import shared_module_conv, uses_channel_groups
from autodeeplab.fast.execution import ExecutionConfig
from autodeeplab.fast.fused_edges import alpha_columns, folds_alpha, fused_mixed_ops, stacked_filters
from autodeeplab.fast.grouped_bn import batch_norm
from autodeeplab.fast.pointwise import apply_conv, from_rows
from autodeeplab.fast.pooling import max_pool_saving_input
from autodeeplab.space.autodeeplab.cell import MixedOp, SearchCell
from autodeeplab.space.autodeeplab.topology import edge_offset

_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def run_sequence(
    modules: nn.Sequential | list[nn.Module],
    x: torch.Tensor,
    execution: ExecutionConfig,
    groups: int = 1,
    repeats: int = 1,
    relu_x: torch.Tensor | None = None,
    channel_groups: int = 1,
) -> torch.Tensor:
    """Apply ``modules`` in order to ``x`` ``[G·N, C, *S]`` the way the fast path needs it.

    BatchNorms normalise each of the ``groups`` batch chunks on its own (and update their running
    statistics ``repeats`` times per group, see :func:`autodeeplab.fast.grouped_bn.batch_norm`); a leading
    ReLU is replaced by ``relu_x`` when given (the edge's shared ReLU of ``x``); max pools and 1×1 convs
    follow ``execution.pool_without_indices`` and ``execution.pointwise_as_matmul``. ``channel_groups`` K:
    ``x`` is ``[N, K·C, *S]``, K inputs side by side in the channels, each through the same modules
    (:mod:`autodeeplab.fast.channel_groups`).
    """
    k = channel_groups
    for position, module in enumerate(modules):
        if position == 0 and relu_x is not None and isinstance(module, nn.ReLU):
            x = relu_x
        elif isinstance(module, _BatchNorm):
            x = batch_norm(x, module, groups, repeats, channel_groups=k)
        elif execution.pool_without_indices and isinstance(module, _MAX_POOLS):
            x = max_pool_saving_input(x, module)
        elif k > 1 and isinstance(module, nn.modules.conv._ConvNd):
            x = shared_module_conv(module, x, k, execution.pointwise_as_matmul)
        elif k > 1 and any(True for _ in module.parameters()):
            raise ValueError(f"channel groups: {type(module).__name__} is not supported")
        else:  # a plain 1×1 conv of a channels-last x runs as a matmul with pointwise_as_matmul
            x = apply_conv(module, x, pointwise_as_matmul=execution.pointwise_as_matmul)
    return x


def mixed_op(
    op: MixedOp,
    x: torch.Tensor,
    weights: torch.Tensor,
    execution: ExecutionConfig,
    groups: int = 1,
    repeats: int = 1,
) -> torch.Tensor:
    """``op(x, weights)`` with BN statistics per group of the batch: ``x`` ``[G·N, C, *S]``, ``weights``
    ``[P]`` → ``[G·N, C, *S]``.

    With ``share_edge_relu`` one ReLU of ``x`` feeds every op that starts with one; with
    ``fold_alpha_into_bn`` (and always for a constant α, as in weight steps) each op's weight is folded
    into its final BN's affine transform, so that the BN output is not kept for α's gradient
    (:func:`autodeeplab.fast.grouped_bn.multi_batch_norm`).
    """
    x, bypass = op.split(x)
    relu_x = F.relu(x) if execution.share_edge_relu else None
    fold = execution.fold_alpha_into_bn or not weights.requires_grad
    out = None
    for index, module in zip(op.op_indices, op.ops, strict=True):
        modules = list(module) if isinstance(module, nn.Sequential) else [module]
        relu_first = isinstance(modules[0], nn.ReLU)
        last_bn = fold and isinstance(modules[-1], _BatchNorm)
        y = run_sequence(
            modules[:-1] if last_bn else modules,
            x,
            execution,
            groups,
            repeats,
            relu_x if relu_first else None,
        )
        if last_bn:
            term = batch_norm(y, modules[-1], groups, repeats, scale=weights[index])
        else:
            term = weights[index] * y
        out = term if out is None else out + term
    return op.merge(out, bypass)


def cell_blocks(
    cell: SearchCell,
    s0: torch.Tensor,
    s1: torch.Tensor,
    alpha: torch.Tensor | StateAlpha,
    groups: int,
    execution: ExecutionConfig,
    as_rows: bool = False,
) -> list[torch.Tensor]:
    """The B block outputs of ``cell`` for ``groups`` inputs h^{l-1} at once.

    ``s0``: preprocessed h^{l-2} ``[N, C, *S]``, shared by every group; ``s1``: the preprocessed
    h^{l-1} of each group stacked on the batch axis, ``[G·N, C, *S]``, or side by side in the channels,
    ``[N, G·C, *S]``, where :func:`autodeeplab.fast.channel_groups.uses_channel_groups` says so;
    ``alpha``: ``[E, P]`` softmax weights, or the :class:`StateAlpha` of them that the supernet made once
    for every cell of its forward. Returns B tensors laid out as ``s1``; group g of each equals
    the reference ``cell.blocks(s0, s1[g], alpha)``'s block.

    An edge reading ``s0`` gives the same output for every group, so it runs once (its BNs update
    their running statistics G times, as the G reference calls would) and is broadcast.

    ``as_rows`` (groups side by side in the channels only): each block as its ``[N, *S, G, C]`` rows
    instead, the layout it is summed in.
    """
    if execution.fuse_edges:
        return _fused_blocks(cell, s0, s1, alpha, groups, execution, as_rows)
    if as_rows:
        raise ValueError("cell_blocks: as_rows needs fuse_edges and the groups in the channels")
    if isinstance(alpha, StateAlpha):
        alpha = alpha.alpha
    n = s0.shape[0]
    states = [s1]
    outputs = []
    for block in range(cell.num_blocks):
        first = edge_offset(block)
        shared = mixed_op(cell.edges[first], s0, alpha[first], execution, repeats=groups)
        out = None
        for j, state in enumerate(states, start=1):
            term = mixed_op(cell.edges[first + j], state, alpha[first + j], execution, groups=groups)
            out = term if out is None else out + term
        out = (out.unflatten(0, (groups, n)) + shared).flatten(0, 1)
        states.append(out)
        outputs.append(out)
    return outputs


_ORDERS: dict[tuple[int, torch.device], torch.Tensor] = {}


def _state_major_order(num_blocks: int, device: torch.device) -> torch.Tensor:
    """α's edge indices grouped by the state they read (state j: the edges of blocks max(0, j-1)..B-1 that
    read it), made once per block count and device: a normal tensor even when first made under inference
    mode (the gather saves it for its backward in the training steps that follow)."""
    key = (num_blocks, device)
    if key not in _ORDERS:
        order = [edge_offset(b) + j for j in range(num_blocks + 1) for b in range(max(0, j - 1), num_blocks)]
        with torch.inference_mode(False):
            _ORDERS[key] = torch.tensor(order, device=device)
    return _ORDERS[key]


class StateAlpha:
    """α ``[E, P]`` cut by the cell state its edges read, for every cell of one forward.

    α is one tensor shared by all the supernet's cells, so the rows of state j (``[E_j, P]``) and their
    per-primitive columns (:func:`autodeeplab.fast.fused_edges.alpha_columns`) are the same in every cell:
    made once — the rows at construction (one gather, and one scatter in the backward), the columns at the
    first request for a (state, channels, channel groups, dtype) — instead of once per cell and state.
    Making columns takes only views and copies, which save nothing for the backward, so a first request
    inside an activation checkpoint and its recomputation, which finds them made, save the same tensors.
    """

    def __init__(self, alpha: torch.Tensor, num_blocks: int) -> None:
        self.alpha = alpha
        sizes = [num_blocks - max(0, j - 1) for j in range(num_blocks + 1)]
        self.rows = alpha[_state_major_order(num_blocks, alpha.device)].split(sizes)
        self._columns: dict[tuple, dict[str, torch.Tensor]] = {}

    def columns(
        self, j: int, dtype: torch.dtype, channels: int, fold: bool, k: int
    ) -> dict[str, torch.Tensor]:
        """State ``j``'s columns, as :func:`~autodeeplab.fast.fused_edges.alpha_columns` makes them."""
        key = (j, dtype, channels, fold, k)
        made = self._columns.get(key)
        if made is None:
            made = alpha_columns(self.rows[j], dtype, channels, fold, k)
            self._columns[key] = made
        return made


def _state_readers(cell: SearchCell, j: int) -> tuple[range, list[nn.Module]]:
    """The blocks that read state ``j`` (0: h^{l-2}, 1: h^{l-1}, j ≥ 2: block j-2) and their edges."""
    readers = range(max(0, j - 1), cell.num_blocks)
    return readers, [cell.edges[edge_offset(b) + j] for b in readers]


def lay_out_filters(cell: SearchCell, execution: ExecutionConfig) -> None:
    """Lay the filters of each state's edges out in one tensor per primitive now (``flat_edge_weights``;
    :mod:`autodeeplab.fast.flat_weights`), as the first fused call would: the parameters' storage is then
    settled before anything records it (e.g. a count of saved tensors that leaves the parameters out)."""
    with torch.no_grad():
        for j in range(cell.num_blocks + 1):
            stacked_filters(_state_readers(cell, j)[1], execution)


def _fused_blocks(
    cell: SearchCell,
    s0: torch.Tensor,
    s1: torch.Tensor,
    alpha: torch.Tensor | StateAlpha,
    groups: int,
    execution: ExecutionConfig,
    as_rows: bool = False,
) -> list[torch.Tensor]:
    """:func:`cell_blocks` state by state: every state's outgoing edges run as one fused call.

    State j (0: h^{l-2}, 1: h^{l-1}, j ≥ 2: block j-2) feeds blocks max(0, j-1)..B-1; block b is
    complete once state b+1 has been processed. Partial sums are kept as ``[G, N, C, *S]`` (groups on the
    batch axis) or as ``[N, *S, G, C]`` rows (side by side in the channels: the layout of the fused edges'
    outputs, :func:`autodeeplab.fast.fused_edges.fused_mixed_ops`; an edge reading ``s0`` adds its
    ``[N, *S, 1, C]`` term to every group by broadcasting).
    """
    in_channels = uses_channel_groups(execution, cell.edges[0].partial_channels, groups)
    if as_rows and not in_channels:
        raise ValueError("cell_blocks: as_rows needs the groups in the channels")
    state_terms = _channel_group_terms if in_channels else _batch_group_terms
    pending: list[torch.Tensor | None] = [None] * cell.num_blocks
    states, outputs = [s0, s1], []
    if not isinstance(alpha, StateAlpha):
        alpha = StateAlpha(alpha, cell.num_blocks)
    for j in range(cell.num_blocks + 1):
        readers, edges = _state_readers(cell, j)
        terms = state_terms(states[j], j, edges, alpha, groups, execution)
        for b, term in zip(readers, terms, strict=True):
            pending[b] = term if pending[b] is None else pending[b] + term
        if j >= 1:  # block j-1 has all its inputs
            rows, pending[j - 1] = pending[j - 1], None
            block = None
            if not as_rows or j < cell.num_blocks:  # [N, (G·)C, *S]; the last one only as an output
                block = from_rows(rows.flatten(-2)) if in_channels else rows.flatten(0, 1)
            states.append(block)
            outputs.append(rows if as_rows else block)
    return outputs


def _batch_group_terms(x, j, edges, alpha: StateAlpha, groups, execution) -> list[torch.Tensor]:
    """State ``j`` ``x`` (``[N, C, *S]`` for j = 0, else ``[G·N, C, *S]``) through its edges → one
    ``[1 or G, N, C, *S]`` term per edge, partial channels split off and merged back per edge."""
    k = edges[0].partial_channels
    n = x.shape[0] if j == 0 else x.shape[0] // groups
    width = x.shape[1] // k  # MixedOp.split's, once for all the edges reading x
    weights = alpha.rows[j]
    fused = fused_mixed_ops(
        x[:, :width] if k > 1 else x,
        edges,
        weights,
        execution,
        1 if j == 0 else groups,
        groups if j == 0 else 1,
        columns=alpha.columns(j, x.dtype, width, folds_alpha(weights, execution), 1),
    )
    terms = []
    for edge, term in zip(edges, fused, strict=True):
        # The bypass is sliced per edge, as each reference edge slices its own: one slice shared by the
        # edges would sum their gradients in another order (equal only up to rounding).
        term = edge.merge(term, x[:, width:] if k > 1 else None)
        terms.append(term.unsqueeze(0) if j == 0 else term.unflatten(0, (groups, n)))
    return terms


def _channel_group_terms(x, j, edges, alpha: StateAlpha, groups, execution) -> list[torch.Tensor]:
    """State ``j`` ``x`` (``[N, C, *S]`` for j = 0, else ``[N, G·C, *S]``) through its edges → one
    ``[N, *S, 1 or G, C]`` term per edge; the shared h^{l-2} runs once for all the groups, recorded G
    times."""
    weights, fold = alpha.rows[j], folds_alpha(alpha.rows[j], execution)
    if j == 0:
        columns = alpha.columns(j, x.dtype, x.shape[1], fold, 1)
        return fused_mixed_ops(x, edges, weights, execution, repeats=groups, columns=columns, group_rows=True)
    columns = alpha.columns(j, x.dtype, x.shape[1] // groups, fold, groups)
    return fused_mixed_ops(x, edges, weights, execution, channel_groups=groups, columns=columns)
