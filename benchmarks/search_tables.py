"""Markdown tables and a plot of the search benchmark records (``bench_search.py table`` / ``plot``).

Each table shows the latest record of each setting; records marked ``smoke_test`` (a check that a command
runs, not a figure) are left out.
"""

from __future__ import annotations

import json
from pathlib import Path

GIB = 2**30


def latest_records(path: Path) -> dict[tuple, dict]:
    """The latest record of each setting in ``path`` (benchmark, variant, sizes, threads, device, how
    counted, series), in the order the settings first appear. Smoke tests are left out."""
    latest: dict[tuple, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r.get("smoke_test"):
            continue
        key = (r["benchmark"], r["variant"], r["size"], r["filters"], r["layers"], r["threads"], r["device"])
        latest[(*key, r.get("scaled_from"), r.get("series"), r.get("preload"))] = r
    return latest


def markdown_tables(path: Path) -> str:
    """The latest figure of each setting in ``path`` as markdown tables (for benchmarks/README.md)."""
    latest = {k: r for k, r in latest_records(path).items() if r.get("series") is None}
    rows = {"search_time": [], "search_memory": []}
    for (bench, variant, size, f, layers, threads, device, _, _, preload), r in latest.items():
        where = f"{device}, {threads} thr" + (f", {Path(preload).name}" if preload else "")
        setting = f"| {variant} | {size} | {f} | {layers} | {where} |"
        if bench == "search_time":
            rows[bench].append(
                f"{setting} {r['iteration_s']:.2f} | {r['weight_step_s']:.2f} | {r['arch_step_s']:.2f} "
                f"| {r['peak_rss_bytes'] / GIB:.2f} | {r['load_average_1min_before']} |"
            )
        elif bench == "search_memory":
            how = f"scaled from {r['scaled_from']}" if r.get("scaled_from") else "direct"
            weight, arch = r["saved_bytes_weight_step"] / GIB, r["saved_bytes_arch_step"] / GIB
            rows[bench].append(f"{setting} {weight:.3f} | {arch:.3f} | {how} |")
    head = "| variant | crop | F | L | device |"
    return "\n".join(
        [
            head + " iteration s | weight step s | arch step s | peak RSS GiB | load before |",
            "|---" * 10 + "|",
            *rows["search_time"],
            "",
            head + " saved GiB, weight step | saved GiB, arch step | counted |",
            "|---" * 8 + "|",
            *rows["search_memory"],
        ]
    )


def scaling_tables(path: Path) -> str:
    """The ``scaling`` series as two pivot tables (rows: F, L, crop; columns: variants): saved GiB of
    the larger step, and iteration seconds where timed."""
    latest = [r for r in latest_records(path).values() if r.get("series") == "scaling"]
    out = []
    for bench, title, value in (
        ("search_memory", "saved GiB (larger step)", lambda r: f"{r['saved_gib_max']:.3f}"),
        ("search_time", "iteration s", lambda r: f"{r['iteration_s']:.2f}"),
    ):
        records = [r for r in latest if r["benchmark"] == bench]
        if not records:
            continue
        variants = list(dict.fromkeys(r["variant"] for r in records))
        cells: dict[tuple, dict[str, str]] = {}
        for r in records:
            cells.setdefault((r["filters"], r["layers"], r["size"]), {})[r["variant"]] = value(r)
        out += [
            f"| F | L | crop | {' | '.join(f'{v}: {title}' for v in variants)} |",
            "|---" * (3 + len(variants)) + "|",
        ]
        for (f, layers, size), row in sorted(cells.items()):
            out.append(f"| {f} | {layers} | {size} | {' | '.join(row.get(v, '') for v in variants)} |")
        out.append("")
    return "\n".join(out)


def scaling_plot(path: Path, png: Path) -> str:
    """Saved GiB of the ``scaling`` series against crop side (one line per variant at F=8, L=12), and
    against F at 321 for each L, written to ``png``; returns what it wrote."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [
        r
        for r in latest_records(path).values()
        if r.get("series") == "scaling" and r["benchmark"] == "search_memory"
    ]
    fig, (by_crop, by_f) = plt.subplots(1, 2, figsize=(10, 4))
    for variant in dict.fromkeys(r["variant"] for r in records):
        points = sorted(
            (r["size"], r["saved_gib_max"])
            for r in records
            if r["variant"] == variant and (r["filters"], r["layers"]) == (8, 12)
        )
        if points:
            by_crop.plot(*zip(*points, strict=True), marker="o", label=variant)
    by_crop.set(xlabel="crop side (px), batch 2", ylabel="saved for backward (GiB)", title="F=8, L=12")
    by_crop.legend()
    for layers in sorted({r["layers"] for r in records}):
        points = sorted(
            (r["filters"], r["saved_gib_max"])
            for r in records
            if r["variant"] == "exact" and r["size"] == 321 and r["layers"] == layers
        )
        if points:
            by_f.plot(*zip(*points, strict=True), marker="o", label=f"L={layers}")
    by_f.set(xlabel="F", ylabel="saved for backward (GiB)", title="exact, 321x321, batch 2")
    by_f.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return f"wrote {png}"
