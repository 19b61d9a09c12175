"""Where a search iteration's CPU time goes, by operator: one weight step + one architecture step, profiled.

    python benchmarks/profile_ops.py --size 129 --threads 1            # the paper's F=8, L=12, 19 classes
    python benchmarks/profile_ops.py --size 129 --threads 1 --top 40 --callers aten::copy_ aten::mul

Prints the iteration's plain wall time (unprofiled), then the self time of each operator and of each
autograd function's Python code (``torch.profiler``, CPU), grouped into classes (convolutions, matrix
products, batch norm, copies, element-wise, ...), then the top operators. ``--callers OP ...``: for each
named operator, which top-level call and which direct parent its time comes from (e.g. a ``copy_`` inside
a ``clone`` inside an autograd function's backward). Nothing is recorded: the figures go into
benchmarks/README.md by hand, with this command. Uses ``bench_search.py``'s set-up (random data, the
default ``exact`` switches).
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
from bench_search import _setup  # benchmarks/bench_search.py (this script's folder)
from torch import nn
from torch.profiler import ProfilerActivity, profile

from autodeeplab.search.loop import arch_step, make_optimizers, weight_step

CLASSES = (  # (class, operator-name fragments; "=name": that name exactly), first match wins
    ("optimizer", ("sgd", "adam", "foreach")),
    ("convolutions", ("convolution", "mkldnn_conv", "_convolution", "conv2d", "conv3d")),
    ("matrix products", ("bmm", "aten::mm", "addmm", "matmul")),
    ("batch norm", ("batch_norm",)),
    ("pooling and resizing", ("pool", "upsample")),
    # the backward of a select or slice writes a zero-filled tensor: kernels, not views
    ("copies and layout", ("copy", "clone", "contiguous", "repeat", "cat", "stack")),
    ("copies and layout", ("select_backward", "slice_backward")),
    ("allocation", ("empty", "zeros", "fill_", "resize_")),
    ("views and metadata", ("view", "as_strided", "select", "slice", "permute", "unbind", "split", "expand")),
    ("views and metadata", ("=aten::t", "transpose", "squeeze", "=aten::detach", "=aten::alias")),
    ("element-wise and reductions", ("add", "mul", "sum", "relu", "clamp", "threshold", "div", "sub")),
    ("element-wise and reductions", ("norm", "pow", "exp", "log", "softmax", "nll")),
)


def op_class(name: str) -> str:
    """The class of an operator or autograd function name (``CLASSES``), else ``other``."""
    low = name.lower()
    if not low.startswith("aten::"):  # Python code of autograd functions, the engine's bookkeeping
        return "autograd functions' Python and engine"
    for label, fragments in CLASSES:
        if any(low == f[1:] if f.startswith("=") else f in low for f in fragments):
            return label
    return "other operators"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=129)
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--callers", nargs="*", default=[], metavar="OP")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = {
        "variant": "exact",
        "size": args.size,
        "filters": args.filters,
        "layers": args.layers,
        "batch": 2,
        "classes": 19,
        "device": "cpu",
        "threads": args.threads,
    }
    _, model, images, masks, config, _ = _setup(spec)
    weight_opt, arch_opt, _ = make_optimizers(model, config)
    criterion = nn.CrossEntropyLoss()

    def iteration() -> None:
        weight_step(model, images, masks, weight_opt, criterion, config.grad_clip, "fp32")
        arch_step(model, images, masks, arch_opt, criterion, "fp32")

    for _ in range(2):  # optimizer state, caches
        iteration()
    t0 = time.perf_counter()
    iteration()
    print(f"iteration (not profiled): {time.perf_counter() - t0:.2f} s, {args.threads} thread(s)")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        iteration()
    self_us, calls = collections.Counter(), collections.Counter()
    for e in prof.key_averages():
        self_us[e.key] += e.self_cpu_time_total
        calls[e.key] += e.count
    total = sum(self_us.values())
    by_class = collections.Counter()
    for name, us in self_us.items():
        by_class[op_class(name)] += us
    print(f"profiled: {total / 1e6:.2f} s of self time\n\nby class:")
    for label, us in by_class.most_common():
        print(f"  {us / 1e6:7.3f} s  {100 * us / total:5.1f}%  {label}")
    print(f"\ntop {args.top} operators by self time:")
    for name, us in self_us.most_common(args.top):
        print(f"  {us / 1e6:7.3f} s  {calls[name]:8d} calls  {name}")
    for wanted in args.callers:
        where, spent = collections.Counter(), collections.Counter()
        for e in prof.events():
            if e.name != wanted:
                continue
            chain, p = [], e.cpu_parent
            while p is not None:
                chain.append(p.name)
                p = p.cpu_parent
            key = (chain[-1] if chain else "(top level)", chain[0] if chain else "-")
            where[key] += 1
            spent[key] += e.self_cpu_time_total
        print(f"\n{wanted}: by top-level call / direct parent")
        for key, us in spent.most_common(8):
            print(f"  {us / 1e6:7.3f} s  {where[key]:8d} calls  {key[0][:70]}  /  {key[1][:50]}")


if __name__ == "__main__":
    main()
