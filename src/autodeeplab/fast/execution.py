"""How the supernet is executed: speed and memory switches that do not change what is computed.

Every switch here is exact (the same outputs, gradients and BatchNorm running statistics as the reference
evaluation, :class:`autodeeplab.space.autodeeplab.supernet.SearchNetwork`, up to float rounding), alone
and in any combination (``tests/test_perf_exactness.py``), except ``precision`` (reduced-precision
arithmetic, by choice). The switches are read, under these names, where they act:
:func:`autodeeplab.fast.supernet.build_supernet` builds the supernet that follows them. The approximation
that does change the model, partial channels (PC-DARTS), is part of the search space
(:class:`autodeeplab.space.autodeeplab.supernet.SearchSpaceConfig`). Measured effects:
``benchmarks/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, get_args

from autodeeplab.config.checks import dotted
from autodeeplab.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]
MemoryFormat = Literal["auto", "channels_last", "contiguous"]


@dataclass
class ExecutionConfig:
    """Execution switches of the search supernet (defaults: the exact ones that are faster here)."""

    batch_node_inputs: bool = True
    """Run the up to three incoming resolutions of a node through its cell as one batch (per-group BN
    statistics), and the edges reading the shared h^{l-2} once instead of once per resolution."""
    fuse_edges: bool = True
    """Run all the edges that read one cell state as one call per primitive (10 convolutions per state
    instead of per edge; pools and ReLU once per state; :mod:`autodeeplab.fast.fused_edges`)."""
    flat_edge_weights: bool = True
    """With ``fuse_edges``: the filters of the edges that read one state live side by side in one tensor
    (each parameter a slice of it, :mod:`autodeeplab.fast.flat_weights`), so the fused convolutions read
    them without a copy and their gradients come back without one, handed to the parameters by a hook
    (``.grad`` as usual; ``torch.autograd.grad`` with respect to these parameters needs it off)."""
    share_edge_relu: bool = True
    """One ReLU per edge feeds its four conv ops (each starts with a ReLU of the same input); the fused
    edges share one ReLU per state anyway."""
    pool_without_indices: bool = True
    """Max pools recompute their argmax in the backward instead of keeping int64 indices."""
    fold_alpha_into_bn: bool = True
    """Each op's α weight is folded into its final BN's affine transform, so that α's gradient comes out
    of the BN's own backward and the BN output is not kept (one activation per op less in architecture
    steps)."""
    pointwise_as_matmul: bool = True
    """1×1 convolutions (stride 1) of channels-last activations run as matrix products over the channel
    axis (:mod:`autodeeplab.fast.pointwise`): the same products without the convolution library's per-call
    cost. Contiguous activations keep the convolution."""
    depthwise_flipped_grad: bool = True
    """The fused separable convs' depthwise convs compute their gradients as forward convolutions where
    the convolution library's backward is slow on CPU (:mod:`autodeeplab.fast.depthwise`): with E filters
    per channel (``repeat_separable_input`` off) the input gradient, as a depthwise conv with flipped
    filters; with one filter per channel, on the CPU, both gradients, for every stride-1 "same" depthwise
    conv but 2D ones of at most 3×3 undilated (:mod:`autodeeplab.fast.conv_grads`; the filter gradient of
    a 5×5 one 3–13× faster, a volume's 5–20×). The name is kept from when it did only the first."""
    repeat_separable_input: bool = True
    """The fused separable convs' first depthwise conv reads its input repeated once per edge (edge-major
    channels ``[G·N, E·C, *S]``, one copy), so that it is a plain depthwise conv over the edges' filters as
    they lie and the pointwise conv after it a grouped one: no filter reordering per call, no
    block-diagonal pointwise (E× its products). The repeat is not kept for the backward, which makes it
    again (:func:`autodeeplab.fast.depthwise.repeated_depthwise_conv`). Measured −2…−7% per search
    iteration and −3% peak memory on CPU (benchmarks/README.md). Off: the depthwise conv with E filters
    per channel (``depthwise_flipped_grad`` applies there). Acts only within ``fuse_edges``."""
    groups_in_channels: bool = True
    """With ``batch_node_inputs``, ``fuse_edges`` and ``repeat_separable_input``: a node's G incoming
    resolutions run side by side in the channels (``[N, G·C, *S]``) instead of stacked on the batch axis,
    so that each batch norm is one native call for all the groups (its statistics are per channel) instead
    of G calls and a ``cat``, and the 1×1 convs are one matmul over G times the rows
    (:mod:`autodeeplab.fast.channel_groups`). Measured −16% kernels and −2…−4% CPU time per search
    iteration (benchmarks/README.md). Not with partial channels (their channel split would cut across the
    groups: those cells stay on the batch axis), nor without the other three switches (it does nothing)."""
    batch_running_stats: bool = True
    """The fast path's BatchNorm running-statistics updates of a forward are applied together at its end,
    in closed form (:mod:`autodeeplab.fast.running_stats`), instead of a few tiny calls per batch norm.
    Acts only with one of the switches above on (with all of them off the cells run as the reference)."""
    memory_format: MemoryFormat = "auto"
    """``auto``: channels-last on CPU and under CUDA mixed precision (measured/known faster there),
    contiguous for CUDA fp32."""
    checkpoint_cells: bool = False
    """Recompute each node's cell in the backward instead of keeping its activations (less memory,
    about one extra forward of time). BatchNorm running statistics are not updated twice."""
    checkpoint_levels: tuple[int, ...] | None = None
    """With ``checkpoint_cells``: the levels whose nodes are checkpointed (None: all). A level-s node
    keeps about 2^-s of level 0's activations for the same compute, so (0, 1) keeps most of the saving
    for about half the recomputation. Levels that do not exist are refused (:meth:`check_levels`)."""
    capture_steps: bool = False
    """Replay each weight step and architecture step from a CUDA graph (:mod:`autodeeplab.fast.capture`):
    one launch instead of tens of thousands per step; captured again at every epoch start (the learning
    rate moves), after three eager warm-up steps. Static shapes: a batch of another size captures again.
    Not with ``precision: fp16`` (its loss scaler reads the device every step). On a CPU the same
    static-buffer path runs without a graph (identical results, tested)."""
    precision: Precision = "fp32"
    """``bf16``: autocast to bfloat16 (CPU and GPU); ``fp16``: autocast to float16 with a gradient
    scaler (GPU only)."""

    def __post_init__(self) -> None:
        if self.checkpoint_levels is not None:
            self.checkpoint_levels = tuple(self.checkpoint_levels)  # YAML gives lists

    def validate(self, where: str = "execution") -> None:
        """Raise :class:`ConfigError` naming ``{where}.{field}`` for the first value that cannot work on any
        supernet or device. What depends on the supernet's level count is :meth:`check_levels` (the parent
        ``SearchConfig`` calls it with ``space.num_levels``); what depends on the device is
        :meth:`check_device` (called once the device is known)."""
        for name, allowed in (("precision", get_args(Precision)), ("memory_format", get_args(MemoryFormat))):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(
                    f"{dotted(where, name)}: must be one of {', '.join(allowed)}, got {value!r}"
                )
        self._check_level_list(where)
        self.check_capture(where)

    def check_capture(self, where: str = "execution") -> None:
        """Reject a capture of steps that cannot be replayed (called by :meth:`validate`)."""
        if self.capture_steps and self.precision == "fp16":
            raise ConfigError(
                f"{dotted(where, 'capture_steps')}: cannot capture fp16 steps (the loss scaler reads the "
                "device every step); use precision bf16 or turn capture_steps off"
            )

    def check_device(self, device_type: str, where: str = "execution") -> None:
        """Reject settings that cannot run on ``device_type`` (``cpu``, ``cuda``, ...), naming the field."""
        if self.precision == "fp16" and device_type != "cuda":
            raise ConfigError(
                f"{dotted(where, 'precision')}: fp16 needs a CUDA device (running on {device_type}); use bf16"
            )

    def check_levels(self, num_levels: int, where: str = "execution") -> None:
        """Reject ``checkpoint_levels`` that name no level of a supernet with ``num_levels`` levels.

        A level that does not exist would silently checkpoint nothing there (the user asked for a
        memory saving and would not get it), so it is an error, not a no-op.
        """
        if self.checkpoint_levels is None:
            return
        valid = f"levels are 0..{num_levels - 1} with space.num_levels={num_levels}"
        for level in self.checkpoint_levels:
            if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < num_levels:
                key = dotted(where, "checkpoint_levels")
                raise ConfigError(f"{key}: level {level!r} does not exist ({valid})")
        self._check_level_list(where, f" ({valid})")

    def _check_level_list(self, where: str, valid: str = "") -> None:
        """The checks of ``checkpoint_levels`` that do not need the level count: no repeats, not empty."""
        levels, key = self.checkpoint_levels, dotted(where, "checkpoint_levels")
        if levels is None:
            return
        if len(set(levels)) != len(levels):
            raise ConfigError(f"{key}: {list(levels)} lists a level twice")
        if self.checkpoint_cells and not levels:
            raise ConfigError(f"{key}: empty, so checkpoint_cells would checkpoint nothing{valid}")

    def checkpoints_level(self, level: int) -> bool:
        """Whether the nodes at ``level`` are checkpointed."""
        if not self.checkpoint_cells:
            return False
        return self.checkpoint_levels is None or level in self.checkpoint_levels

    def uses_channels_last(self, device_type: str, spatial_dims: int) -> bool:
        """Whether 2D activations should be channels-last on ``device_type``."""
        if spatial_dims != 2 or self.memory_format == "contiguous":
            return False
        if self.memory_format == "channels_last":
            return True
        return device_type == "cpu" or self.precision != "fp32"


def reference_switches() -> dict[str, bool | str]:
    """Every switch that is on by default turned off, and contiguous activations: a supernet built with
    ``ExecutionConfig(**reference_switches())`` evaluates exactly as the reference
    :class:`~autodeeplab.space.autodeeplab.supernet.SearchNetwork` (each op module called as it is, one
    incoming resolution at a time), what the tests and ``benchmarks/`` compare the fast path with."""
    off: dict[str, bool | str] = {f.name: False for f in fields(ExecutionConfig) if f.default is True}
    return {**off, "memory_format": "contiguous"}
