"""Benchmark and check the sparse-attention kernel on a GPU (issue 2).

Usage: python benchmarks/bench_kernel.py [--out DIR] [--sweep] [--skip-flex] [--lengths 32768,131072]

Checks bf16 error against a float32 reference next to SDPA's bf16 error, then times, on random
inputs of the standard shape (28 query / 4 key-value heads, D=128, bf16; 1M with 2 heads):
SDPA flash, SDPA default (cuDNN), our dense path, our sparse path at full density, and at ~5/10/20%
density (A-shape, random blocks, permuted grid) against compiled FlexAttention on the same mask.
Writes ``kernel.json`` under --out and prints a table last.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import (causal_flops, environment, rel_error, sdpa_default, sdpa_flash, tflops, timed,  # noqa: E402
                    write_json)

from mmcompile.kernels import dense_attention_forward, sparse_attention_forward  # noqa: E402
from mmcompile.kernels.index_factories import (a_shape_index, causal_index, grid_index,  # noqa: E402
                                               random_index)
from mmcompile.kernels.reference import index_to_mask, masked_attention  # noqa: E402

FRAME = 256  # tokens per frame of the standard video layout


def computed_tiles(index, n_q: int, n_k: int) -> float:
    """Tiles [block_m x block_n] the kernel computes, summed over batch and heads."""
    bm, bn = index.block_m, index.block_n
    m = torch.arange(index.num_query_blocks, device=index.block_count.device)
    lo = (m * bm).clamp(max=n_k)
    hi = ((m + 1) * bm).clamp(max=n_k)
    diag = ((hi - lo + bn - 1) // bn).sum() * index.block_count.shape[0] * index.block_count.shape[1]
    cols = ((index.column_count.long() + bn - 1) // bn).sum()
    return float(diag + index.block_count.long().sum() + cols)


def density(index, n: int) -> float:
    """Computed area over the causal area N(N+1)/2, per head."""
    heads = index.block_count.shape[0] * index.block_count.shape[1]
    return computed_tiles(index, n, n) * index.block_m * index.block_n / heads / (n * (n + 1) / 2)


def make_inputs(n, heads_q, heads_kv, head_dim=128, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    shape_q, shape_kv = (1, heads_q, n, head_dim), (1, heads_kv, n, head_dim)
    return (torch.randn(shape_q, generator=g, device="cuda", dtype=dtype),
            torch.randn(shape_kv, generator=g, device="cuda", dtype=dtype),
            torch.randn(shape_kv, generator=g, device="cuda", dtype=dtype))


def pattern_index(kind: str, target: float, n: int, heads: int, block_m: int, block_n: int):
    """An index of ``kind`` at about ``target`` density of the causal area."""
    dev = "cuda"
    if kind == "a-shape":
        sink = 1024
        local = max(block_n, int(target * n / 2) - sink - block_m)
        return a_shape_index(1, heads, n, sink, local, block_m, block_n, device=dev)
    if kind == "random":
        g = torch.Generator(device=dev).manual_seed(1)
        return random_index(1, heads, n, n, target, 0, block_m, block_n, generator=g, device=dev)
    if kind == "grid":
        local_blocks = max(0, round((target * n / 2 - n / FRAME / 2) / block_n) - 1)
        return grid_index(1, heads, n, FRAME, 37, local_blocks, block_m, block_n, device=dev)
    raise ValueError(kind)


def check_accuracy(results: list, n: int = 8192) -> None:
    """bf16 error of our kernel and of SDPA (same mask), both against a float32 reference."""
    q, k, v = make_inputs(n, 28, 4)
    for name, index in [("dense", None),
                        ("full-index", causal_index(1, 28, n, n, 64, 64, device="cuda")),
                        ("random-10%+cols", random_index(1, 28, n, n, 0.1, 128, 64, 64, unaligned=True,
                                                         device="cuda")),
                        ("grid", grid_index(1, 28, n, FRAME, 37, 2, 64, 64, device="cuda"))]:
        if index is None:
            out, _ = dense_attention_forward(q, k, v)
            mask = torch.ones(n, n, dtype=torch.bool, device="cuda").tril()
        else:
            out, _ = sparse_attention_forward(q, k, v, index, check_values=True)
            mask = index_to_mask(index, n, n)
        ref, _ = masked_attention(q.float(), k.float(), v.float(), mask)
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask if mask.dim() == 4 else mask[None, None], enable_gqa=True)
        ours, theirs = rel_error(out, ref), rel_error(sdpa, ref)
        results.append(dict(section="accuracy", case=name, n=n, ours_rel_err=ours, sdpa_bf16_rel_err=theirs,
                            ratio=ours / theirs, nan=bool(out.isnan().any())))
        del mask, ref, sdpa
        torch.cuda.empty_cache()
    for head_dim in (64, 80, 96):  # other head dims, GQA 7, a length that is not a block multiple
        q, k, v = make_inputs(1000, 7, 1, head_dim)
        index = random_index(1, 7, 1000, 1000, 0.3, 32, 64, 64, unaligned=True, device="cuda")
        out, _ = sparse_attention_forward(q, k, v, index, check_values=True)
        ref, _ = masked_attention(q.float(), k.float(), v.float(), index_to_mask(index, 1000, 1000))
        results.append(dict(section="accuracy", case=f"D={head_dim} N=1000 GQA7", n=1000,
                            ours_rel_err=rel_error(out, ref), nan=bool(out.isnan().any())))


def sweep_dense(results: list, n: int) -> None:
    q, k, v = make_inputs(n, 28, 4)
    for bm, bn, warps, stages in [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2),
                                  (128, 64, 8, 4), (64, 64, 4, 3)]:
        cfg = dict(num_warps=warps, num_stages=stages)
        try:
            t = timed(lambda: dense_attention_forward(q, k, v, block_m=bm, block_n=bn, config=cfg))
        except Exception as e:  # noqa: BLE001  (out of resources for some configs)
            results.append(dict(section="sweep", n=n, config=f"{bm}x{bn} w{warps} s{stages}", error=str(e)[:200]))
            continue
        results.append(dict(section="sweep", n=n, config=f"{bm}x{bn} w{warps} s{stages}", ms=t["ms"],
                            tflops=tflops(causal_flops(n, 28, 128), t["ms"])))


def sweep_sparse(results: list, n: int) -> None:
    """Index block sizes and launch configs of the sparse path, random blocks at ~10% density."""
    q, k, v = make_inputs(n, 28, 4)
    for (bm, bn), warps, stages in [((64, 64), 4, 3), ((64, 64), 4, 4), ((64, 64), 8, 3),
                                    ((128, 64), 8, 3), ((128, 64), 4, 3), ((128, 128), 8, 3)]:
        index = pattern_index("random", 0.1, n, 28, bm, bn)
        cfg = dict(num_warps=warps, num_stages=stages)
        name = f"sparse {bm}x{bn} w{warps} s{stages}"
        try:
            t = timed(lambda: sparse_attention_forward(q, k, v, index, config=cfg))
        except Exception as e:  # noqa: BLE001  (out of resources for some configs)
            results.append(dict(section="sweep", n=n, config=name, error=str(e)[:200]))
            continue
        tiles_flops = 4.0 * computed_tiles(index, n, n) * bm * bn * 128
        results.append(dict(section="sweep", n=n, config=name, density=density(index, n), ms=t["ms"],
                            tflops_computed=tflops(tiles_flops, t["ms"])))


def probe_sparse(results: list, n: int) -> None:
    """Where ordered (permuted) tiles lose time: the random index with identity orders, and the grid,
    under a few launch configs, next to the random index without orders."""
    q, k, v = make_inputs(n, 28, 4)
    index = pattern_index("random", 0.1, n, 28, 128, 64)
    ident = torch.arange(n, device="cuda", dtype=torch.int32).expand(1, 28, n).contiguous()
    cases = [("random", index), ("random+identity-orders", dataclasses.replace(index, q_order=ident, k_order=ident)),
             ("grid", pattern_index("grid", 0.1, n, 28, 128, 64))]
    for name, idx in cases:
        for warps, stages in ((8, 3), (8, 2), (8, 4), (4, 3)):
            cfg = dict(num_warps=warps, num_stages=stages)
            t = timed(lambda: sparse_attention_forward(q, k, v, idx, config=cfg))
            tiles_flops = 4.0 * computed_tiles(idx, n, n) * 128 * 64 * 128
            results.append(dict(section="probe", n=n, pattern=name, config=f"w{warps} s{stages}",
                                density=density(idx, n), ms=t["ms"], tflops_computed=tflops(tiles_flops, t["ms"])))


def bench_length(results: list, n: int, heads_q: int, heads_kv: int, densities, skip_flex: bool,
                 block: tuple[int, int]) -> None:
    q, k, v = make_inputs(n, heads_q, heads_kv)
    flops = causal_flops(n, heads_q, 128)
    row = dict(section="dense", n=n, heads=f"{heads_q}/{heads_kv}")

    def record(name, fn, **extra):
        t = timed(fn)
        results.append(dict(row, impl=name, ms=t["ms"], tflops_effective=tflops(flops, t["ms"]), **extra))
        return t["ms"]

    flash_ms = record("sdpa-flash", lambda: sdpa_flash(q, k, v))
    cudnn_ms = record("sdpa-default(cudnn)", lambda: sdpa_default(q, k, v))
    record("ours-dense", lambda: dense_attention_forward(q, k, v))
    full = causal_index(1, heads_q, n, n, block[0], block[1], device="cuda")
    record("ours-sparse-full-index", lambda: sparse_attention_forward(q, k, v, full), density=density(full, n))
    del full
    if not skip_flex and n <= 131072:
        from flex_baseline import flex_causal
        record("flex-causal", flex_causal(q, k, v))

    for kind in ("a-shape", "random", "grid"):
        for target in densities:
            index = pattern_index(kind, target, n, heads_q, *block)
            dens = density(index, n)
            t = timed(lambda: sparse_attention_forward(q, k, v, index))
            tiles_flops = 4.0 * computed_tiles(index, n, n) * index.block_m * index.block_n * 128
            entry = dict(section="sparse", n=n, heads=f"{heads_q}/{heads_kv}", pattern=kind, target=target,
                         density=dens, ms=t["ms"], tflops_computed=tflops(tiles_flops, t["ms"]),
                         tflops_effective=tflops(flops, t["ms"]), speedup_vs_flash=flash_ms / t["ms"],
                         speedup_vs_cudnn=cudnn_ms / t["ms"])
            if not skip_flex and n <= 131072:
                from flex_baseline import flex_for_index
                try:
                    call, build_ms = flex_for_index(q, k, v, index)
                    entry.update(flex_ms=timed(call)["ms"], flex_mask_build_ms=build_ms)
                    entry["speedup_vs_flex"] = entry["flex_ms"] / t["ms"]
                    if kind == "grid":
                        call, _ = flex_for_index(q, k, v, index, permuted=True)
                        entry["flex_permuted_ms"] = timed(call)["ms"]
                except Exception as e:  # noqa: BLE001  (record, do not hide, a flex failure)
                    entry["flex_error"] = f"{type(e).__name__}: {str(e)[:200]}"
            results.append(entry)
            del index
            torch.cuda.empty_cache()


def linearity(results: list, n: int, block) -> None:
    q, k, v = make_inputs(n, 28, 4)
    for target in (0.05, 0.1, 0.2, 0.3, 0.5):
        index = pattern_index("random", target, n, 28, *block)
        dens = density(index, n)
        t = timed(lambda: sparse_attention_forward(q, k, v, index))
        results.append(dict(section="linearity", n=n, density=dens, ms=t["ms"], ms_per_density=t["ms"] / dens))


def print_table(results: list) -> None:
    print("\n=== results ===")
    for r in results:
        keys = [k for k in r if k != "section"]
        print(r["section"].ljust(10), " ".join(
            f"{k}={r[k]:.4g}" if isinstance(r[k], float) else f"{k}={r[k]}" for k in keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    parser.add_argument("--sweep", action="store_true", help="time dense launch configs first")
    parser.add_argument("--skip-flex", action="store_true")
    parser.add_argument("--lengths", default="32768,131072")
    parser.add_argument("--probe", action="store_true", help="tile sizes and gather cost at 128K")
    parser.add_argument("--million", action="store_true", help="also 1M tokens with 2 heads")
    parser.add_argument("--block", default="64,64", help="index block_m,block_n of the sparse cases")
    args = parser.parse_args()
    block = tuple(int(x) for x in args.block.split(","))
    env = environment()
    print(env)
    results: list = []
    sections = [("accuracy", lambda: check_accuracy(results))]
    if args.sweep:
        sections += [(f"sweep {n}", lambda n=n: sweep_dense(results, n)) for n in (32768, 131072)]
        sections.append(("sweep sparse", lambda: sweep_sparse(results, 131072)))
    if args.probe:
        sections.append(("probe", lambda: probe_sparse(results, 131072)))
    for n in (int(x) for x in args.lengths.split(",") if x):
        sections.append((f"length {n}", lambda n=n: bench_length(results, n, 28, 4, (0.05, 0.1, 0.2),
                                                                   args.skip_flex, block)))
    if 131072 in [int(x) for x in args.lengths.split(",") if x]:
        sections.append(("linearity", lambda: linearity(results, 131072, block)))
    if args.million:
        sections.append(("1M", lambda: bench_length(results, 1 << 20, 2, 2, (0.05, 0.1), True, block)))
    for name, run in sections:
        try:
            run()
        except Exception as e:  # noqa: BLE001  (keep the other sections' numbers)
            results.append(dict(section="error", where=name, error=f"{type(e).__name__}: {str(e)[:300]}"))
        write_json(os.path.join(args.out, "kernel.json"), dict(env=env, args=vars(args), results=results))
        torch.cuda.empty_cache()
    print_table(results)


if __name__ == "__main__":
    main()
