"""Scale-out on torch.distributed (issue 15): what a rank needs to take part in a search or a training.

Launched by ``torchrun`` (one process per device; ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous in the environment), a run is the single-process run with a global batch of ``b · world``:

- :func:`rank_order`: every rank walks the same global order (the single process's, for the same seed and
  position) and takes its own ``b`` samples of each global batch, so that every sample is used once per
  epoch over all ranks and the result depends on the global batch, not on how it is split;
- :func:`average_gradients`: the gradients of the parameters that have one (the frozen group has none) are
  averaged over the ranks in one flat all-reduce: the gradient of the global batch's mean loss;
- :func:`check_identical`: a cheap fingerprint of α and β (or any tensors) compared over the ranks, so
  that a divergence stops the run with one line instead of giving each rank its own architecture.

A single process (no ``WORLD_SIZE`` or a world of 1) uses none of this and is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import distributed as dist

from autodeeplab.errors import AutoDeepLabError


class DistributedError(AutoDeepLabError):
    """The ranks of a distributed run disagree, or the launch is not usable."""


@dataclass(frozen=True)
class RankInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files, decodes and draws pictures."""
        return self.rank == 0


def rank_info_from_env(env: dict[str, str] | None = None) -> RankInfo:
    """The rank, world size and local rank ``torchrun`` put in the environment (a single process without)."""
    env = dict(os.environ if env is None else env)
    try:
        rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise DistributedError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedError(f"RANK {rank} / WORLD_SIZE {world} / LOCAL_RANK {local} do not fit together")
    return RankInfo(rank, world, local)


def rank_order(order: Sequence[int], global_batch: int, rank: int, world: int) -> list[int]:
    """Rank ``rank``'s samples of an epoch ``order`` cut into global batches of ``global_batch``: the
    ``global_batch // world`` samples at offset ``rank · global_batch // world`` of each complete global
    batch (the incomplete last one is dropped, as in a single process)."""
    if global_batch % world:
        raise DistributedError(
            f"batch_size {global_batch} (the global batch) is not divisible by the {world} processes"
        )
    share = global_batch // world
    usable = len(order) // global_batch * global_batch
    return [order[start + rank * share + i] for start in range(0, usable, global_batch) for i in range(share)]


def average_gradients(parameters: Iterable[torch.nn.Parameter], world: int) -> None:
    """Average the gradients of ``parameters`` that have one over the ranks (one flat all-reduce).

    Every rank must pass the same parameters with gradients in the same order (the frozen group of a search
    step has none on every rank)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def fingerprint(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """``[3]`` float64: the sum, the sum of squares and an index-weighted sum of every value (differs
    when any value or its position differs, short of a deliberate collision)."""
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    position = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
    return torch.stack([flat.sum(), (flat * flat).sum(), (flat * position.sqrt()).sum()])


def collective_device() -> torch.device | None:
    """Where a small tensor must be for a collective: the current GPU under NCCL (it reduces only CUDA
    tensors), else None (the CPU)."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def check_identical(tensors: Sequence[torch.Tensor], what: str, world: int) -> None:
    """Raise :class:`DistributedError` on every rank when ``tensors`` differ between ranks."""
    if world == 1:
        return
    mine = fingerprint(tensors)
    device = collective_device()
    if device is not None:
        mine = mine.to(device)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    differing = [r for r, other in enumerate(every) if not torch.equal(other, every[0])]
    if differing:
        raise DistributedError(
            f"{what} differ between ranks (rank {differing[0]} against rank 0): the run stops rather than "
            "give each rank its own architecture"
        )


def setup(device: str) -> RankInfo:
    """This process's rank; in a world of several, the process group joined (NCCL for CUDA devices, gloo
    otherwise) and, on CUDA, the device of the local rank made current."""
    info = rank_info_from_env()
    if info.world > 1 and not dist.is_initialized():
        cuda = device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(info.local_rank)
        backend = "nccl" if cuda else "gloo"
        store = restart_store()
        if store is None:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=store, rank=info.rank, world_size=info.world)
    return info


def restart_store(env: dict[str, str] | None = None) -> dist.Store | None:
    """The rendezvous store for this attempt of a ``torchrun`` job, or ``None`` to let torch build it.

    By default torchrun's agent keeps one store for the whole job and every attempt's workers connect to it
    (``TORCHELASTIC_USE_AGENT_STORE=True``), while ``init_process_group`` writes its keys under the same names
    in every attempt. After a restart the old attempt's keys are still there, so a new rank may read a killed
    rank's address and hang in gloo's connect or fail with "Connection refused" (8 restarts in 10 here, in a
    small loop). Keys under a prefix of the restart count keep each attempt's rendezvous to itself."""
    env = dict(os.environ if env is None else env)
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    try:
        host, port = env["MASTER_ADDR"], int(env["MASTER_PORT"])
        attempt = int(env.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except (KeyError, ValueError):
        raise DistributedError("MASTER_ADDR, MASTER_PORT or TORCHELASTIC_RESTART_COUNT unusable") from None
    run_id = env.get("TORCHELASTIC_RUN_ID", "none")
    client = dist.TCPStore(host, port, is_master=False)  # the agent's store; a client needs no world size
    return dist.PrefixStore(f"autodeeplab/{run_id}/attempt{attempt}", client)


def rank_device(device: torch.device, info: RankInfo) -> torch.device:
    """The local rank's GPU when ``device`` is CUDA in a world of several, else ``device``."""
    if info.world > 1 and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def mean_over_ranks(tensor: torch.Tensor, world: int) -> torch.Tensor:
    """``tensor`` averaged over the ranks (in place; itself in a world of one)."""
    if world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= world
    return tensor


def sum_over_ranks(tensor: torch.Tensor, world: int) -> torch.Tensor:
    """``tensor`` summed over the ranks (in place; itself in a world of one). Integer tensors (confusion
    matrices, counts) add exactly. Under NCCL the sum runs on the current GPU and comes back."""
    if world > 1:
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
            on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
            tensor.copy_(on_gpu)
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj: object, world: int) -> list[object]:
    """Every rank's ``obj`` in rank order, on every rank (``[obj]`` in a world of one). For small results
    exchanged between the ranks of one run (pickled between our own processes, never read from a file)."""
    if world == 1:
        return [obj]
    every: list[object] = [None] * world
    dist.all_gather_object(every, obj)
    return every


def shard_indices(total: int, rank: int, world: int) -> range:
    """Rank ``rank``'s share of ``total`` evaluation samples: every ``world``-th from ``rank``. Every sample
    is scored exactly once over the ranks; the shares differ by at most one (no padding, no repeats)."""
    return range(rank, total, world)


def seed_rank_step(seed: int, step: int, rank: int) -> None:
    """Seed torch's random streams for ``(seed, step, rank)``: dropout and drop path then draw different
    masks on each rank (one seed everywhere would give sample k of every rank's share the same mask), and a
    distributed run resumed at any step draws what it would have drawn (no RNG state to carry per rank)."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2)
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))


def agree(values: Sequence[float], what: str, world: int) -> None:
    """Raise :class:`DistributedError` on every rank unless ``values`` (a decision, a step) are the same on
    every rank: e.g. whether to resume, which a rank decides from its own view of the run directory."""
    if world > 1:
        check_identical([torch.tensor([float(v) for v in values], dtype=torch.float64)], what, world)


def any_rank(flag: bool, world: int) -> bool:
    """Whether ``flag`` is true on some rank (every rank gets the same answer)."""
    if world == 1:
        return flag
    value = torch.tensor([int(flag)], device=collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_ok(ok: bool, world: int) -> bool:
    """Whether ``ok`` holds on every rank (a collective: every rank must call it; a single process: ``ok``).
    Lets ranks that wait for one that failed (e.g. rank 0 could not create the run directory) stop too
    instead of waiting forever."""
    return not any_rank(not ok, world)


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if dist.is_initialized():
        dist.barrier()
