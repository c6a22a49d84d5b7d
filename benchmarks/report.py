"""Render a kernel benchmark JSON (bench_kernel.py) as the Markdown tables of BENCHMARKS.md.

Usage: python benchmarks/report.py benchmarks/results/kernel_h100.json [more.json ...]
"""

from __future__ import annotations

import json
import sys


def fmt(x, digits=4):
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"
    return "" if x is None else str(x)


def table(rows, columns):
    out = ["| " + " | ".join(title for title, _ in columns) + " |",
           "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(key)) for _, key in columns) + " |")
    return "\n".join(out)


def render(path: str) -> str:
    data = json.load(open(path))
    env, results = data["env"], data["results"]
    parts = [f"Source: `{path}`; {env['gpu']}, driver {env['driver']}, torch {env['torch']}, "
             f"triton {env['triton']}, CUDA {env['cuda']}, {env['date']}; args {data['args']}"]
    by = lambda s: [r for r in results if r["section"] == s]  # noqa: E731
    if by("accuracy"):
        parts.append(table(by("accuracy"), [("case", "case"), ("N", "n"), ("ours rel err", "ours_rel_err"),
                                            ("SDPA bf16 rel err", "sdpa_bf16_rel_err"), ("ratio", "ratio"),
                                            ("NaN", "nan")]))
    if by("dense"):
        parts.append(table(by("dense"), [("N", "n"), ("heads q/kv", "heads"), ("impl", "impl"), ("ms", "ms"),
                                         ("TFLOP/s (causal)", "tflops_effective"), ("density", "density")]))
    if by("sparse"):
        parts.append(table(by("sparse"), [
            ("N", "n"), ("pattern", "pattern"), ("density", "density"), ("ours ms", "ms"),
            ("TFLOP/s computed", "tflops_computed"), ("x SDPA flash", "speedup_vs_flash"),
            ("x cuDNN", "speedup_vs_cudnn"), ("flex ms", "flex_ms"), ("x flex", "speedup_vs_flex"),
            ("flex on permuted copies ms", "flex_permuted_ms"), ("flex mask build ms", "flex_mask_build_ms")]))
    if by("linearity"):
        parts.append(table(by("linearity"), [("N", "n"), ("density", "density"), ("ms", "ms"),
                                             ("ms / density", "ms_per_density")]))
    if by("sweep") or by("probe"):
        parts.append(table(by("sweep") + by("probe"), [
            ("N", "n"), ("case", "pattern"), ("block", "block"), ("config", "config"), ("density", "density"), ("ms", "ms"),
            ("TFLOP/s", "tflops"), ("TFLOP/s computed", "tflops_computed"), ("error", "error")]))
    if by("error"):
        parts.append(table(by("error"), [("where", "where"), ("error", "error")]))
    return "\n\n".join(parts)


if __name__ == "__main__":
    print("\n\n".join(render(p) for p in sys.argv[1:]))
