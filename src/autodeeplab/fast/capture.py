"""A search step replayed from a CUDA graph: one launch for its ~50,000 kernels (``execution.capture_steps``).

A weight step or an architecture step of the supernet is tens of thousands of small kernels
(``benchmarks/bench_dispatch.py``); on a GPU each launch costs microseconds of host time, whatever the
batch. A CUDA graph records the whole step once (forward, backward, clipping, optimizer) and replays it
with one launch. What that needs, and how this module provides it:

- static inputs: each call copies the batch into buffers made at capture time (a batch of another shape
  captures again);
- nothing the graph would bake in may change between replays: the learning rate and the ramps of a
  space's extra terms move once per epoch, so the loop calls :meth:`StepGraph.reset` at every epoch start
  and the step is captured again (after ``warmup`` eager steps the first time, which create the
  optimizers' state and let cuDNN choose its algorithms);
- no host synchronisation and no tensor made from Python data inside the step: the loop reads losses in
  batches (``search.loop.SYNC_EVERY``), the running-statistics update caches its coefficients, Adam is made
  ``capturable`` (its step counters on the device), and fp16's loss scaler (which reads the device) is
  refused by the settings;
- every warm-up step and the step of each capture is a real step on its own batch (a capture records
  without running, so the captured step is replayed at once): the sequence of updates is the one of the
  eager loop.

On a CPU there is no graph: the same static-buffer path runs eagerly, so that the tests check, bit for
bit, that the plumbing (buffers, loss copies, recaptures) changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

StepFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class StepGraph:
    """``step(images, masks) -> loss`` (0-dim) made replayable; ``pool`` shares the memory pool of another
    :class:`StepGraph` whose graph is always replayed before this one (the loop's weight, then arch order)."""

    def __init__(self, step: StepFunction, warmup: int = 3, pool: StepGraph | None = None) -> None:
        self.step, self.warmup, self.share = step, warmup, pool
        self.side: torch.cuda.Stream | None = None  # the warm-up steps' stream, made once (see below)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.loss: torch.Tensor | None = None
        self.eager_steps = 0
        self.captures = 0

    def reset(self) -> None:
        """Capture again at the next call (what the graph baked in, e.g. the learning rate, moved)."""
        self.graph = None

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """One step on ``images [N, C, *S]`` / ``masks [N, *S]``; returns its loss, a fresh 0-dim tensor."""
        if images.device.type != "cuda":  # no graph: the static-buffer discipline alone
            return self._static(images, masks).clone()
        if self.eager_steps < self.warmup:
            self.eager_steps += 1
            return self._eager_on_side_stream(images, masks)
        if self.graph is None or self._shape_changed(images, masks):
            self._capture(images, masks)
        assert self.inputs is not None and self.graph is not None and self.loss is not None
        self.inputs[0].copy_(images, non_blocking=True)
        self.inputs[1].copy_(masks, non_blocking=True)
        self.graph.replay()
        return self.loss.clone()

    def pool(self):
        return None if self.graph is None else self.graph.pool()

    def _shape_changed(self, images: torch.Tensor, masks: torch.Tensor) -> bool:
        return self.inputs is None or (self.inputs[0].shape, self.inputs[1].shape) != (
            images.shape,
            masks.shape,
        )

    def _static(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if self._shape_changed(images, masks):
            self.inputs = (torch.empty_like(images), torch.empty_like(masks))
        assert self.inputs is not None
        self.inputs[0].copy_(images)
        self.inputs[1].copy_(masks)
        return self.step(*self.inputs)

    def _side_stream(self, device: torch.device) -> torch.cuda.Stream:
        """One side stream for every warm-up step, shared with the graph whose pool this one shares: the
        caching allocator keeps freed blocks for the stream that used them, so a new stream per step
        (torch hands them out round-robin from a pool) left each step's memory cached apart, and on an
        H200 the process reserved 32.6 GiB for 6.2 GiB allocated (fp32, 2x321²)."""
        if self.share is not None:
            return self.share._side_stream(device)
        if self.side is None:
            self.side = torch.cuda.Stream(device)
        return self.side

    def _eager_on_side_stream(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        side = self._side_stream(images.device)
        side.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(side):
            loss = self.step(images, masks)
        torch.cuda.current_stream(images.device).wait_stream(side)
        return loss

    def _capture(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        self.graph = None  # the old graph's memory goes back before the new one takes its own
        self.inputs = (images.clone(), masks.clone())
        graph = torch.cuda.CUDAGraph()
        pool = self.share.pool() if self.share is not None else None
        with torch.cuda.graph(graph, pool=pool):
            self.loss = self.step(*self.inputs)
        self.graph = graph
        self.captures += 1
