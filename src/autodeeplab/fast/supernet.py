"""The search supernet evaluated as :class:`autodeeplab.fast.execution.ExecutionConfig` says (exact).

:class:`FastSearchNetwork` is the reference :class:`autodeeplab.space.autodeeplab.supernet.SearchNetwork`
(the same modules, parameters and ``state_dict`` keys, so checkpoints load either way) with another
``forward``: the same paper Eq. 6, node by node, but

- a node's up to three incoming resolutions as one batch through its cell, and the cell's edges fused
  or edge by edge (:mod:`autodeeplab.fast.cell`), when any of the cell switches is on; with every one of
  them off, each node is the reference :meth:`SearchNetwork._node` itself;
- channels-last activations (``memory_format``);
- the BatchNorm running-statistics updates of a training forward applied together at its end
  (``batch_running_stats``, :mod:`autodeeplab.fast.running_stats`);
- activation checkpointing per node (``checkpoint_cells``, ``checkpoint_levels``).

Outputs, gradients and running statistics equal the reference for every combination of switches, up to
float rounding (``tests/test_perf_exactness.py``). :func:`build_supernet` is the one place a supernet is
built for a search.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from autodeeplab.fast.cell import StateAlpha, cell_blocks, lay_out_filters, run_sequence
from autodeeplab.fast.channel_groups import uses_channel_groups
from autodeeplab.fast.execution import ExecutionConfig
from autodeeplab.fast.grouped_bn import running_stats_frozen
from autodeeplab.fast.memory import note_held
from autodeeplab.fast.pointwise import from_rows
from autodeeplab.fast.running_stats import batched_running_stats
from autodeeplab.ops.primitives import resize
from autodeeplab.space.autodeeplab.supernet import Resample, SearchNetwork, SearchSpaceConfig
from autodeeplab.space.autodeeplab.topology import incoming_edges, nearest_level, node_levels

_CELL_SWITCHES = (
    "batch_node_inputs",
    "fuse_edges",
    "share_edge_relu",
    "pool_without_indices",
    "fold_alpha_into_bn",
    "pointwise_as_matmul",
    "depthwise_flipped_grad",
)
"""The switches of :mod:`autodeeplab.fast.cell`: with all of them off a node is evaluated as the
reference does it (``batch_running_stats`` then has nothing to batch; ``flat_edge_weights`` acts only within
``fuse_edges``)."""

_Node = Callable[..., torch.Tensor]


def uses_fast_cells(execution: ExecutionConfig) -> bool:
    """Whether ``execution`` evaluates the nodes with :mod:`autodeeplab.fast.cell` (else as the reference)."""
    return any(getattr(execution, name) for name in _CELL_SWITCHES)


class FastSearchNetwork(SearchNetwork):
    """The supernet evaluated the way ``execution`` says; see the module docstring.

    ``forward``: image ``[N, in_channels, *S]`` → logits ``[N, num_classes, *S]``, equal to
    :meth:`SearchNetwork.forward`'s. ``execution`` may be replaced between forwards (it is checked
    against the levels when set).
    """

    def __init__(
        self,
        config: SearchSpaceConfig,
        num_classes: int,
        in_channels: int = 3,
        execution: ExecutionConfig | None = None,
    ) -> None:
        super().__init__(config, num_classes, in_channels)
        self.execution = execution if execution is not None else ExecutionConfig()

    @property
    def execution(self) -> ExecutionConfig:
        """The switches this supernet's ``forward`` follows."""
        return self._execution

    @execution.setter
    def execution(self, execution: ExecutionConfig) -> None:
        execution.check_levels(self.config.num_levels)  # a level that does not exist is a user error
        self._execution = execution
        self.lay_out_filters()

    def lay_out_filters(self) -> None:
        """With ``fuse_edges`` and ``flat_edge_weights``: each state's edge filters in one tensor per
        primitive from now on (done again after anything that gives the parameters new storage, e.g.
        ``.to()``; the fused calls check it anyway)."""
        if self.execution.fuse_edges and self.execution.flat_edge_weights:
            for cell in self.cells.values():
                lay_out_filters(cell, self.execution)

    def _apply(self, fn, *args, **kwargs):
        # .to(), .double(), .cuda() ... give every parameter its own new storage: lay the filters out again
        out = super()._apply(fn, *args, **kwargs)
        if hasattr(self, "_execution"):
            self.lay_out_filters()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``[N, in_channels, *S]`` → logits ``[N, num_classes, *S]``: the reference's layer loop,
        each node the fast way or the reference's (chosen here, once per forward), optionally checkpointed."""
        c, ex = self.config, self.execution
        if ex.uses_channels_last(x.device.type, x.dim() - 2):
            x = x.contiguous(memory_format=torch.channels_last)  # the whole net follows its input's layout
        stem = self.stem(x)
        sizes = self.level_sizes(stem.shape[2:])
        alpha, beta = self.alpha_weights(), self.beta_weights()
        node = self._fast_node if uses_fast_cells(ex) else self._node
        if uses_fast_cells(ex):  # β's scalars and α's per-state cuts, made once for every cell
            beta = BetaItems(beta)
            if ex.fuse_edges:
                alpha = StateAlpha(alpha, c.num_blocks)
        prev_prev: dict[int, torch.Tensor] = {0: stem}  # layer -1 is represented by the stem
        prev: dict[int, torch.Tensor] = {0: stem}
        recompute = torch.is_grad_enabled()  # under no_grad there is no backward to recompute for
        batched = ex.batch_running_stats and self.training
        with batched_running_stats() if batched else contextlib.nullcontext():
            for layer in range(1, c.num_layers + 1):
                current = {}
                for level in node_levels(layer, c.num_levels):
                    args = (layer, level, prev_prev, prev, sizes, alpha, beta)
                    if recompute and ex.checkpoints_level(level):
                        current[level] = self._checkpointed(node, *args)
                    else:
                        current[level] = node(*args)
                prev_prev, prev = prev, current
        return self.head_logits(prev, x.shape[2:])

    def _fast_node(
        self,
        layer: int,
        level: int,
        prev_prev: dict[int, torch.Tensor],
        prev: dict[int, torch.Tensor],
        sizes: list[tuple[int, ...]],
        alpha: torch.Tensor | StateAlpha,
        beta: BetaItems,
    ) -> torch.Tensor:
        """:meth:`SearchNetwork._node` (Eq. 6), the cell through :mod:`autodeeplab.fast.cell`
        → ``[N, B·F·2^level, *sizes[level]]``; ``alpha`` as :func:`~autodeeplab.fast.cell.cell_blocks`
        takes it."""
        ex = self.execution
        cell = self.cells[f"{layer}_{level}"]
        h_pp = resize(prev_prev[nearest_level(layer - 2, level, self.config.num_levels)], sizes[level])
        sources = incoming_edges(layer, level, self.config.num_levels)
        weights = [beta[layer - 1, s, d] for s, d in sources]
        resampled = [
            _resample(self.resamplers[f"{layer}_{s}_{level}"], prev[s], sizes[level], ex) for s, _ in sources
        ]
        s0 = run_sequence(cell.preprocess0, h_pp, ex)  # shared by the three incoming resolutions
        if not ex.batch_node_inputs:  # one resolution at a time
            out = None
            for h_prev, weight in zip(resampled, weights, strict=True):
                s1 = run_sequence(cell.preprocess1, h_prev, ex)
                term = weight * torch.cat(cell_blocks(cell, s0, s1, alpha, 1, ex), dim=1)
                out = term if out is None else out + term
            return out
        groups, n = len(sources), h_pp.shape[0]
        if uses_channel_groups(ex, cell.edges[0].partial_channels, groups):
            # the G resolutions side by side in the channels (autodeeplab.fast.channel_groups)
            s1 = run_sequence(cell.preprocess1, torch.cat(resampled, dim=1), ex, channel_groups=groups)
            rows = cell_blocks(cell, s0, s1, alpha, groups, ex, as_rows=True)  # [N, *S, G, C] each
            factors = torch.stack(weights).to(s1.dtype).view(groups, 1)  # [G, 1], the activations' dtype
            return torch.cat([_group_weighted_sum(r, factors) for r in rows], dim=1)
        s1 = torch.cat(resampled, dim=0) if groups > 1 else resampled[0]
        s1 = run_sequence(cell.preprocess1, s1, ex, groups)
        blocks = cell_blocks(cell, s0, s1, alpha, groups, ex)
        # Σ_g β_g · concat(blocks_g) = concat(Σ_g β_g · blocks_g): weigh each block, then concatenate.
        # Elementwise sums, not a reduction over the group axis: those keep the channels-last layout.
        return torch.cat(
            [_weighted_sum(weights, b.unflatten(0, (groups, n)).unbind(0)) for b in blocks], dim=1
        )

    def _checkpointed(self, node: _Node, layer: int, level: int, prev_prev, prev, sizes, alpha, beta):
        """``node(...)`` under activation checkpointing: its activations are recomputed in the backward.

        The recomputation runs in training mode again and must not update the BatchNorm running
        statistics a second time: the fast path freezes them during the recomputation (its batch norms
        consult :func:`running_stats_frozen`), the reference node's modules get their buffers saved and
        restored. Random state is restored by ``checkpoint`` itself (the cells draw none anyway).
        """
        levels = self.config.num_levels
        sources = [s for s, _ in incoming_edges(layer, level, levels)]
        if uses_fast_cells(self.execution):
            recompute_context = running_stats_frozen
        else:
            modules = [self.cells[f"{layer}_{level}"]]
            modules += [self.resamplers[f"{layer}_{s}_{level}"] for s in sources]
            recompute_context = partial(_running_stats_kept, modules)
        note_held([prev_prev[nearest_level(layer - 2, level, levels)], *(prev[s] for s in sources)])
        return checkpoint(
            node,
            layer,
            level,
            prev_prev,
            prev,
            sizes,
            alpha,
            beta,
            use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(), recompute_context()),
        )


def build_supernet(
    config: SearchSpaceConfig,
    num_classes: int,
    *,
    in_channels: int = 3,
    execution: ExecutionConfig | None = None,
) -> SearchNetwork:
    """The Auto-DeepLab supernet of ``config`` for ``num_classes`` classes, evaluated as ``execution`` says.

    ``execution`` None: the defaults (the exact fast path). The result has an ``.execution`` attribute;
    with ``ExecutionConfig(**reference_switches())`` it evaluates exactly as :class:`SearchNetwork` does.
    Raises :class:`autodeeplab.errors.ConfigError` for partial channels that do not divide F and for
    checkpoint levels that do not exist.
    """
    return FastSearchNetwork(config, num_classes, in_channels, execution)


def _resample(resampler: Resample, x: torch.Tensor, size: tuple[int, ...], execution: ExecutionConfig):
    """``resampler(x, size)`` ``[N, c_in, *S_src]`` → ``[N, c_out, *size]`` with the fast path's batch norm
    (which honours frozen running statistics) and ``pointwise_as_matmul``."""
    if resampler.direction > 0:
        x = resize(x, size)
    if not isinstance(resampler.conv, nn.Sequential):
        return x
    return run_sequence(resampler.conv, x, execution)


class BetaItems:
    """β ``[L, levels, 3]`` as its scalars, cut once per forward for every node: one ``unbind`` (its backward
    one ``stack``), where indexing ``beta[l, s, d]`` in each node costs a ``select`` per scalar, and in the
    backward a β-sized zero-filled gradient per ``select``. Indexed like β."""

    def __init__(self, beta: torch.Tensor) -> None:
        self.shape = beta.shape
        self.items = beta.reshape(-1).unbind(0)

    def __getitem__(self, index: tuple[int, int, int]) -> torch.Tensor:
        layer, source, direction = index
        return self.items[(layer * self.shape[1] + source) * self.shape[2] + direction]


def _group_weighted_sum(rows: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Σ_g factors[g] · group g of a block's ``[N, *S, G, C]`` rows, ``factors`` ``[G, 1]`` → ``[N, C, *S]``.

    On the CPU with the rows in memory order (channels-last activations): one product and one sum over the
    group axis (G products and G − 1 sums would cost four times the calls); the result and the gradient
    that comes back stay channels-last. Elsewhere a product and a sum per group: on CUDA the one-product
    form gave wrong gradients further back in an audit (H200, torch 2.11, float64; outputs exact, the
    per-group form and the CPU exact), and the cause was not found on the machine's time; for contiguous
    activations it would turn the node's output channels-last."""
    if rows.device.type == "cpu" and rows.is_contiguous():
        return from_rows((rows * factors).sum(-2))
    return from_rows(sum(factors[g] * rows[..., g, :] for g in range(rows.shape[-2])))


def _weighted_sum(weights: list[torch.Tensor], tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    out = None
    for w, t in zip(weights, tensors, strict=True):
        out = w * t if out is None else out + w * t
    return out


@contextlib.contextmanager
def _running_stats_kept(modules: list[nn.Module]) -> Iterator[None]:
    """Undo any change to the BatchNorm buffers of ``modules`` made inside the block."""
    buffers = [
        b for m in modules for name, b in m.named_buffers() if name.rsplit(".", 1)[-1] in _BN_STAT_BUFFERS
    ]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in zip(buffers, saved, strict=True):
                b.copy_(value)


_BN_STAT_BUFFERS = frozenset({"running_mean", "running_var", "num_batches_tracked"})
