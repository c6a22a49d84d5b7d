"""Where the attend phase of one layer spends its GPU time, launch by launch: the op's own launch
groups (dense heads, original-order heads with fixed sets, with estimated sets, grid row sets) on
the planted input of ``bench_prefill_op.py``, each timed alone, with its density and the TFLOP/s
it computes; beside them, A-shape indexes of the same heads and density (the kernel's best case:
``bench_kernel.py``), so a launch's gap to A-shape is the time a faster kernel could win.

Usage: python benchmarks/attend_launches.py [--tokens 131072] [--layout video|mixed] [--out F.json]

Why: the attend phase is ~14.6 ms of a ~25 ms layer at 128K (one planted dense head ~7.2 ms, the
sparse launches the rest), and the sparse launches' share of that is what a kernel change can cut.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import environment, tflops, timed, write_json  # noqa: E402


def describe(head_ids, patterns, index) -> str:
    """The pattern types of a launch's heads, counted."""
    from collections import Counter
    kinds = Counter("/".join(f"{m}:{type(p).__name__}" for m, p in patterns[h].intra) for h in head_ids)
    grid = " grid-order" if index is not None and index.q_order is not None else ""
    return ", ".join(f"{c}x {k}" for k, c in kinds.most_common()) + grid


def a_shape_like(heads: int, n: int, density: float, block_m: int, block_n: int, device):
    """An A-shape index (sink 128) of about ``density``: its local window sized for that density."""
    from mmcompile.kernels.index_factories import a_shape_index
    local = max(block_n, int(density * n / 2 / block_n) * block_n)
    return a_shape_index(1, heads, n, 128, local, block_m, block_n, device=device)


def once_ms(fn) -> dict:
    """One call's wall time (the CPU dry run: no CUDA events)."""
    import time
    start = time.perf_counter()
    fn()
    return dict(ms=(time.perf_counter() - start) * 1e3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--layout", default="video", choices=("video", "mixed"))
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the code paths (TRITON_INTERPRET=1, "
                        "one untimed-quality call each)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    time_ms = timed if args.device == "cuda" else once_ms
    from mmcompile.kernels import sparse_attention_forward
    from mmcompile.patterns import forward_context, launch, layer
    from mmcompile.patterns.index_builder import device_list
    from mmcompile.patterns.planted import planted_qkv, standard_layout

    n, d = args.tokens, 128
    layout = standard_layout(args.layout, n)
    q, k, v, _ = planted_qkv(layout, 28, 4, d, args.device, torch.bfloat16 if args.device == "cuda" else torch.float32,
                             seed=0)
    scale = d ** -0.5
    ctx = forward_context(layout, n, 1, args.device, 128, 64)
    _, patterns, _, groups = layer.prepare_layer(q, k, ctx, scale=scale)
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    rows = []
    for head_ids, index in groups:
        run = lambda: launch.attend(q, k, v, [(head_ids, index)], scale, out=out, lse=lse)  # noqa: E731
        row = dict(heads=len(head_ids), what=describe(head_ids, patterns, index), ms=time_ms(run)["ms"],
                   mean_density=1.0, columns_per_block=None, blocks_per_block=None, a_shape_ms=None,
                   a_shape_tflops=None, ms_at_a_shape_rate=None)
        pairs = n * (n + 1) / 2 * len(head_ids)
        if index is not None:
            per_head = index.density(n)[0].double()
            row.update(mean_density=float(per_head.mean()), columns_per_block=float(index.column_count.float().mean()),
                       blocks_per_block=float(index.block_count.float().mean()))
            pairs = float(per_head.sum()) * n * (n + 1) / 2
            ref = a_shape_like(len(head_ids), n, row["mean_density"], index.block_m, index.block_n, q.device)
            ids = device_list(head_ids, q.device, torch.int32)
            ref_pairs = float(ref.density(n)[0].double().sum()) * n * (n + 1) / 2
            row["a_shape_ms"] = time_ms(lambda: sparse_attention_forward(q, k, v, ref, scale, head_ids=ids,
                                                                         out=out, lse=lse))["ms"]
            row["a_shape_tflops"] = tflops(4 * d * ref_pairs, row["a_shape_ms"])
        row["tflops"] = tflops(4 * d * pairs, row["ms"])
        if row["a_shape_ms"]:
            row["ms_at_a_shape_rate"] = row["ms"] * row["tflops"] / row["a_shape_tflops"]
        rows.append(row)
    env = environment()
    print(f"{args.layout} {n} tokens, 28/4 heads, D={d}, {str(q.dtype)[6:]}, {env.get('gpu', '')}: the attend phase's "
          "launches")
    print("heads | what | ms | density | TFLOP/s | blocks/qblock | columns/qblock | A-shape same density: ms, "
          "TFLOP/s | this launch at A-shape's rate")
    for r in rows:
        ref = (f"{r['a_shape_ms']:.3f}, {r['a_shape_tflops']:.0f} | {r['ms_at_a_shape_rate']:.3f}"
               if r["a_shape_ms"] else "- | -")
        extra = (f"{r['blocks_per_block']:.1f} | {r['columns_per_block']:.1f}" if r["blocks_per_block"] is not None
                 else "- | -")
        print(f"{r['heads']} | {r['what']} | {r['ms']:.3f} | {r['mean_density']:.4f} | {r['tflops']:.0f} | {extra} "
              f"| {ref}")
    sparse = [r for r in rows if r["a_shape_ms"]]
    dense_ms = sum(r["ms"] for r in rows if not r["a_shape_ms"])
    print(f"sparse launches {sum(r['ms'] for r in sparse):.3f} ms, at A-shape's rate "
          f"{sum(r['ms_at_a_shape_rate'] for r in sparse):.3f} ms; dense {dense_ms:.3f} ms")
    if args.out:
        write_json(args.out, dict(env=env, tokens=n, layout=args.layout, launches=rows))


if __name__ == "__main__":
    main()
