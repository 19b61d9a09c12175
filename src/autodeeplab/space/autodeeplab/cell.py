"""The search cell of Auto-DeepLab (paper §3.1): a DAG of B blocks whose edges are mixed ops.

Inputs and edges are numbered as in :mod:`autodeeplab.space.autodeeplab.topology`. The cell output is the
concatenation of the B block outputs: ``[N, B·C, *S]``.

This is the reference evaluation, the definition: every op module called as it is. The exact fast path
(:mod:`autodeeplab.fast.cell`) evaluates the same modules in fewer, larger calls and is tested equal to it.

Partial-channel connections (PC-DARTS, ``partial_channels`` K > 1, an approximation that is part of the
search space): each mixed op sees only the first C/K channels; the others bypass it, and a channel shuffle
mixes the two parts so that every channel is searched over in some layer.

The found network's fixed cell lives with the network (:mod:`autodeeplab.nets.cell`); both build their
ops from the one table in :mod:`autodeeplab.ops.primitives`.
"""

from __future__ import annotations

import torch
from torch import nn

from autodeeplab.ops.primitives import POOL_PRIMITIVES, PRIMITIVES, ReLUConvBN, batch_norm_nd, build_op
from autodeeplab.space.autodeeplab.topology import edge_offset, num_edges


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[N, C, *S]`` → ``[N, C, *S]`` with channel ``g·(C/groups) + i`` moved to ``i·groups + g``."""
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


class MixedOp(nn.Module):
    """Σ_p w_p · op_p(x) over the primitives (paper Eq. 2).

    ``none`` is never evaluated: its output is zero, so dropping the term is exact and saves a
    full-size zero tensor per edge. Pools get a BN without affine parameters during search so that
    their scale is comparable with the convolutions (DARTS convention). With ``partial_channels`` K > 1
    the ops have C/K channels (PC-DARTS).
    """

    def __init__(self, channels: int, affine: bool = False, dims: int = 2, partial_channels: int = 1) -> None:
        super().__init__()
        if partial_channels < 1 or channels % partial_channels:
            raise ValueError(f"partial_channels {partial_channels} must divide the {channels} channels")
        self.partial_channels = partial_channels
        width = channels // partial_channels
        ops, indices = [], []
        for index, name in enumerate(PRIMITIVES):
            if name == "none":
                continue
            op = build_op(name, width, 1, affine, dims)
            if name in POOL_PRIMITIVES:
                op = nn.Sequential(op, batch_norm_nd(dims)(width, affine=False))
            ops.append(op)
            indices.append(index)
        self.ops = nn.ModuleList(ops)
        self.op_indices: tuple[int, ...] = tuple(indices)
        """Each module's primitive: its column of the α weights."""
        # ModuleList's keys are the positions as strings; the fast path asks for a module by name some 30k
        # times an iteration, and ``self.ops[i]`` costs several µs of Python each time
        self._keys: dict[str, str] = {PRIMITIVES[index]: str(k) for k, index in enumerate(indices)}

    def op(self, name: str) -> nn.Module:
        """The module of primitive ``name`` (not ``none``, which has none): ``self.ops``' entry, read from
        its registry (always the module that is there now)."""
        return self.ops._modules[self._keys[name]]  # type: ignore[return-value]

    def parts(self, name: str) -> tuple[nn.Module, ...]:
        """The submodules of primitive ``name``'s sequence in order (e.g. ReLU, conv, BN), as ``op(name)[i]``
        gives them but without ``nn.Sequential``'s indexing, which walks the sequence."""
        return tuple(self.op(name)._modules.values())  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``x``: ``[N, C, *S]``, ``weights``: ``[P]`` softmax weights → ``[N, C, *S]``."""
        x, bypass = self.split(x)
        out = None
        for index, op in zip(self.op_indices, self.ops, strict=True):
            term = weights[index] * op(x)
            out = term if out is None else out + term
        return self.merge(out, bypass)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[N, C, *S]`` → (the C/K channels the ops see, the bypassing rest or None when K = 1)."""
        k = self.partial_channels
        if k == 1:
            return x, None
        width = x.shape[1] // k
        return x[:, :width], x[:, width:]

    def merge(self, out: torch.Tensor, bypass: torch.Tensor | None) -> torch.Tensor:
        """The ops' output ``[N, C/K, *S]`` and the bypass → ``[N, C, *S]`` (concatenated, shuffled)."""
        if bypass is None:
            return out
        return channel_shuffle(torch.cat([out, bypass], dim=1), self.partial_channels)


class SearchCell(nn.Module):
    """One node's cell in the supernet: two preprocessed inputs, B blocks of mixed ops, concat output.

    Args:
        c_prev_prev: channels of h^{l-2} as it arrives (after resizing to this node's resolution).
        c_prev: channels of h^{l-1} as it arrives (after the network-level resampling).
        channels: F·2^level, the width of every block.
        num_blocks: B.
        affine: whether the BNs inside the mixed ops learn a scale and shift.
        dims: number of spatial dimensions (2 for images, 3 for volumes).
        partial_channels: K of PC-DARTS (1: every channel goes through the mixed ops).
    """

    def __init__(
        self,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        num_blocks: int,
        affine: bool = False,
        dims: int = 2,
        partial_channels: int = 1,
    ) -> None:
        super().__init__()
        self.num_blocks = num_blocks
        self.channels = channels
        self.preprocess0 = ReLUConvBN(c_prev_prev, channels, 1, dims=dims)
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, dims=dims)
        self.edges = nn.ModuleList(
            MixedOp(channels, affine, dims, partial_channels) for _ in range(num_edges(num_blocks))
        )

    @property
    def out_channels(self) -> int:
        return self.num_blocks * self.channels

    def forward(self, h_prev_prev: torch.Tensor, h_prev: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """``h_prev_prev``: ``[N, c_prev_prev, *S]``, ``h_prev``: ``[N, c_prev, *S]``, ``alpha``: ``[E, P]``
        softmax weights → ``[N, B·channels, *S]``."""
        return self.blocks(self.preprocess0(h_prev_prev), self.preprocess1(h_prev), alpha)

    def blocks(self, s0: torch.Tensor, s1: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The DAG on already preprocessed inputs ``[N, channels, *S]`` each → ``[N, B·channels, *S]``.

        Block b sums one mixed op of every earlier state. Split out of :meth:`forward` so that the
        supernet preprocesses h^{l-2} once for the up to three incoming resolutions of a node.
        """
        states = [s0, s1]
        for block in range(self.num_blocks):
            first = edge_offset(block)
            out = None
            for j, state in enumerate(states):
                term = self.edges[first + j](state, alpha[first + j])
                out = term if out is None else out + term
            states.append(out)
        return torch.cat(states[2:], dim=1)
