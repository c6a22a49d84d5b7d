"""The two plots of BENCHMARKS.md, as SVG (no plotting library needed), from the kernel benchmark
JSON files: the sparse kernel's speed-up over SDPA cuDNN against length at ~10% density, and
kernel time against density at 128K.

Usage: python benchmarks/plots.py [--results benchmarks/results] [--out docs]
Each point is a measured run; each file's own cuDNN time is the baseline of its points.
"""

from __future__ import annotations

import argparse
import json
import math
import os

W, H, PAD = 560, 340, 56
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def _rows(results: str, names):
    for name in names:
        path = os.path.join(results, name)
        if os.path.exists(path):
            yield from json.load(open(path))["results"]


def speedup_by_length(results: str) -> dict:
    """pattern -> [(n, speed-up over cuDNN)] for the ~10% density targets."""
    out, cudnn = {}, {}
    for name in ("kernel_h100.json", "kernel_h100_probe_1m.json"):
        rows = list(_rows(results, [name]))
        base = {r["n"]: r["ms"] for r in rows if r["section"] == "dense" and r["impl"].startswith("sdpa-default")}
        cudnn.update(base)
        for r in rows:
            if r["section"] == "sparse" and r.get("target") == 0.1 and r["n"] in base:
                out.setdefault(r["pattern"], []).append((r["n"], base[r["n"]] / r["ms"]))
    return {k: sorted(v) for k, v in out.items()}


def time_by_density(results: str) -> dict:
    """series -> [(density, ms)] at 128K."""
    out = {}
    for r in _rows(results, ["kernel_h100_sweep.json"]):
        if r["section"] == "linearity":
            out.setdefault("random blocks (sweep)", []).append((r["density"], r["ms"]))
    for r in _rows(results, ["kernel_h100.json"]):
        if r["section"] == "sparse" and r["n"] == 131072:
            out.setdefault(r["pattern"], []).append((r["density"], r["ms"]))
    return {k: sorted(v) for k, v in out.items()}


def svg(series: dict, title: str, xlabel: str, ylabel: str, logx: bool = False) -> str:
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    fx = (lambda v: math.log2(v)) if logx else (lambda v: v)
    x0, x1 = fx(min(xs)), fx(max(xs))
    y1 = max(ys) * 1.1
    px = lambda v: PAD + (fx(v) - x0) / max(x1 - x0, 1e-9) * (W - 2 * PAD)  # noqa: E731
    py = lambda v: H - PAD - v / y1 * (H - 2 * PAD)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="13">{title}</text>',
             f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="black"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="black"/>',
             f'<text x="{W / 2}" y="{H - 14}" text-anchor="middle">{xlabel}</text>',
             f'<text x="14" y="{H / 2}" text-anchor="middle" transform="rotate(-90 14 {H / 2})">{ylabel}</text>']
    for t in sorted(set(xs)):
        label = f"{t // 1024}K" if logx else f"{t:.2f}"
        parts.append(f'<text x="{px(t):.1f}" y="{H - PAD + 14}" text-anchor="middle">{label}</text>')
    for i in range(6):
        v = y1 * i / 5
        parts.append(f'<text x="{PAD - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>' for x, y in pts]
        parts.append(f'<text x="{PAD + 10}" y="{PAD + 14 * i}" fill="{color}">{name}</text>')
    return "\n".join(parts + ["</svg>"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    plots = {"plot_speedup_by_length.svg": svg(speedup_by_length(args.results),
                                               "Sparse kernel at ~10% density over SDPA cuDNN (H100)",
                                               "tokens", "speed-up over cuDNN", logx=True),
             "plot_time_by_density.svg": svg(time_by_density(args.results), "Kernel time against density, 128K (H100)",
                                             "density (computed / causal area)", "ms")}
    for name, text in plots.items():
        with open(os.path.join(args.out, name), "w") as f:
            f.write(text)
        print(os.path.join(args.out, name))


if __name__ == "__main__":
    main()
