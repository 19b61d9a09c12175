"""Which line of this package issues the operator dispatches of a search step (issue 16): a
``TorchDispatchMode`` records, for the operators named, the innermost ``autodeeplab`` source line on the
Python stack of each call (a backward's own operators show as the line that called ``backward``, or as
"autograd engine" with none of ours above them). Prints the most frequent (operator, line) pairs; records
nothing.

    python benchmarks/attribute_dispatches.py select view --step weight --size 65
"""

from __future__ import annotations

import argparse
import collections
import traceback

from bench_search import _setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ops", nargs="+", help="operator names, e.g. select view permute")
    parser.add_argument("--step", choices=["weight", "arch"], default="weight")
    parser.add_argument("--size", type=int, default=65)
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--variant", default="exact")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    spec = dict(
        variant=args.variant, filters=args.filters, layers=args.layers, classes=19, threads=1,
        device="cpu", size=args.size, batch=2,
    )  # fmt: skip
    from torch.utils._python_dispatch import TorchDispatchMode

    from autodeeplab.ops.losses import make_loss
    from autodeeplab.search.loop import arch_step, make_optimizers, weight_step

    _, model, images, masks, config, _ = _setup(spec)
    weight_opt, arch_opt, _ = make_optimizers(model, config)
    criterion = make_loss("ce", 255)

    def w_step() -> None:
        weight_step(model, images, masks, weight_opt, criterion, config.grad_clip)

    def a_step() -> None:
        arch_step(model, images, masks, arch_opt, criterion)

    w_step(), a_step()  # the optimizers' state exists from the second step on
    wanted, sites = set(args.ops), collections.Counter()

    class Attribute(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, op_args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in wanted:
                ours = [f for f in traceback.extract_stack() if "/autodeeplab/" in f.filename]
                where = "autograd engine"
                if ours:
                    frame = ours[-1]
                    where = f"{frame.filename.split('autodeeplab/')[-1]}:{frame.lineno} {frame.line}"
                sites[(name, where)] += 1
            return func(*op_args, **(kwargs or {}))

    with Attribute():
        w_step() if args.step == "weight" else a_step()
    for (name, where), count in sites.most_common(args.top):
        print(f"{count:7d}  {name:12s} {where[:140]}")


if __name__ == "__main__":
    main()
