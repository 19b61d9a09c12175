"""Does ``torch.compile`` work on the search supernet's weight step? (a check: it records nothing)

    python benchmarks/try_compile.py --size 97 --steps 3
    python benchmarks/try_compile.py --size 65 --steps 4 --static --plain-flags --recompile-limit 64

Compiles the default supernet (F=8, L=12, exact execution switches), runs ``--steps`` weight steps (α, β
frozen, SGD as in the search) on one random batch, prints each step's loss and seconds (the first includes
compilation) and Dynamo's graph and graph-break counts. See benchmarks/README.md, "torch.compile".
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from autodeeplab.fast.supernet import build_supernet
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.loop import frozen, make_optimizers
from autodeeplab.space.autodeeplab.supernet import SearchSpaceConfig


class _PlainVar:
    """What the fast path uses of a ``contextvars.ContextVar`` (get, set, reset), as a plain attribute."""

    def __init__(self, value) -> None:
        self.value = value

    def get(self):
        return self.value

    def set(self, value):
        old, self.value = self.value, value
        return old

    def reset(self, token) -> None:
        self.value = token


def _plain_flags() -> None:
    from autodeeplab.fast import grouped_bn, running_stats

    grouped_bn._FROZEN = _PlainVar(False)
    running_stats._PENDING = _PlainVar(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=97, help="square crop side")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--static", action="store_true", help="torch.compile(dynamic=False)")
    parser.add_argument("--recompile-limit", type=int, default=None, help="Dynamo's recompile_limit")
    parser.add_argument(
        "--plain-flags",
        action="store_true",
        help="replace the fast path's two context variables (frozen BN statistics, pending running-statistics"
        " updates) by plain attributes, which Dynamo can read (ContextVar.get is a graph break)",
    )
    args = parser.parse_args(argv)
    if args.plain_flags:
        _plain_flags()
    if args.recompile_limit is not None:
        torch._dynamo.config.recompile_limit = args.recompile_limit
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build_supernet(SearchSpaceConfig(), 19).train()
    optimizer, _, _ = make_optimizers(net, SearchConfig())
    images = torch.randn(2, 3, args.size, args.size)
    masks = torch.randint(0, 19, (2, args.size, args.size))
    criterion = nn.CrossEntropyLoss()
    compiled = torch.compile(net, dynamic=False if args.static else None)
    for step in range(args.steps):
        start = time.perf_counter()
        with frozen(net.arch_parameters()):
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(compiled(images), masks)
            loss.backward()
            optimizer.step()
        print(f"step {step}: loss {loss.item():.4f}, {time.perf_counter() - start:.1f} s", flush=True)
    counters = torch._dynamo.utils.counters
    print("dynamo:", dict(counters["stats"]), "graph breaks:", sum(counters["graph_break"].values()))
    for reason, count in counters["graph_break"].items():
        print(f"  {count} x {reason.splitlines()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
