"""Which part of the estimate's pass 2 (``line_scores_kernel._probs_kernel``) costs its time at 128K.

Usage: python benchmarks/estimate_pass2_parts.py   (TRITON_INTERPRET=1: a dry run at 1024 tokens, no times)

A stripped copy of pass 2 (consecutive rows, no padding keys, 28/4 heads, 64 rows, bf16) with each
output switchable: the column sums (``vert``), the per-block sums (``blocks``) and the skewed slash
sums (``skew``: 1 the [rows, 256] gather pass 2 used before 2026-12-06, 2 the same in two halves,
3 one rotation of the tile, what pass 2 does now). Prints the product kernel (both passes) and pass
1 alone for scale, then one line per variant: median ms (CUDA events) and, for the skew variants,
the largest difference of their sums from variant 1's.
"""
import os
import statistics

import torch
import triton
import triton.language as tl

from mmcompile.patterns import estimate
from mmcompile.patterns import line_scores_kernel as lsk


@triton.jit
def _p2(Q, K, Pos, Lse, Vertical, Blocks, ByKey, n, scale, heads, group, stride_qh, stride_qn, stride_kh, stride_kn,
        HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
        SKEW: tl.constexpr, VERT: tl.constexpr, BLOCKS: tl.constexpr):
    """Pass 2 for one key tile of one head (batch 1), its outputs as the switches say."""
    tile = tl.program_id(0)
    h = tl.program_id(1)
    offs_l = tl.arange(0, ROWS)
    offs_d = tl.arange(0, HEAD_DIM)
    pos = tl.load(Pos + offs_l)
    q = tl.load(Q + h * stride_qh + pos[:, None] * stride_qn + offs_d[None, :])
    lse = tl.load(Lse + h * ROWS + offs_l)
    keys = tile * BLOCK_K + tl.arange(0, BLOCK_K)
    k = tl.load(K + (h // group) * stride_kh + keys[:, None] * stride_kn + offs_d[None, :], mask=keys[:, None] < n, other=0.0)
    s = tl.dot(q, tl.trans(k))
    ok = (keys[None, :] <= pos[:, None]) & (keys[None, :] < n)
    s = tl.where(ok, s * scale, float("-inf"))
    p = tl.where(s == float("-inf"), 0.0, tl.exp(s - lse[:, None]))
    if SKEW == 1:
        j = tl.arange(0, 2 * BLOCK_K)
        shift = j[None, :] - offs_l[:, None]
        inside = (shift >= 0) & (shift < BLOCK_K)
        part = tl.sum(tl.where(inside, tl.gather(p, tl.where(inside, shift, 0), 1), 0.0), 0)
        c = tile * BLOCK_K + j
        tl.atomic_add(ByKey + h * (n + 2 * BLOCK_K) + c, part, mask=(j < BLOCK_K + ROWS - 1) & (c < n), sem="relaxed")
    if SKEW == 2:  # two halves of the output window, each [ROWS, BLOCK_K]
        for half in tl.static_range(2):
            j = half * BLOCK_K + tl.arange(0, BLOCK_K)
            shift = j[None, :] - offs_l[:, None]
            inside = (shift >= 0) & (shift < BLOCK_K)
            part = tl.sum(tl.where(inside, tl.gather(p, tl.where(inside, shift, 0), 1), 0.0), 0)
            c = tile * BLOCK_K + j
            tl.atomic_add(ByKey + h * (n + 2 * BLOCK_K) + c, part, mask=(j < BLOCK_K + ROWS - 1) & (c < n), sem="relaxed")
    if SKEW == 3:  # one [ROWS, BLOCK_K] gather: row l rotated by l; columns m >= l land on key m, the rest on m + BLOCK_K
        m = tl.arange(0, BLOCK_K)
        rot = tl.gather(p, (m[None, :] - offs_l[:, None] + BLOCK_K) % BLOCK_K, 1)
        low = m[None, :] >= offs_l[:, None]
        part_lo = tl.sum(tl.where(low, rot, 0.0), 0)
        part_hi = tl.sum(tl.where(low, 0.0, rot), 0)
        c = tile * BLOCK_K + m
        base = ByKey + h * (n + 2 * BLOCK_K)
        tl.atomic_add(base + c, part_lo, mask=c < n, sem="relaxed")
        tl.atomic_add(base + c + BLOCK_K, part_hi, mask=(m < ROWS - 1) & (c + BLOCK_K < n), sem="relaxed")
    if VERT:
        tl.store(Vertical + h * n + keys, tl.sum(p, 0), mask=keys < n)
    if BLOCKS:
        PER_TILE: tl.constexpr = BLOCK_K // BLOCK_N
        sums = tl.sum(tl.reshape(p, (ROWS, PER_TILE, BLOCK_N)), 2)
        kb = tile * PER_TILE + tl.arange(0, PER_TILE)
        tl.store(Blocks + (h * ROWS + offs_l[:, None]) * (n // BLOCK_N) + kb[None, :], sums)


VARIANTS = [(0, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1), (1, 0, 0), (1, 1, 1), (2, 0, 0), (2, 1, 1), (3, 0, 0),
            (3, 1, 1)]  # (skew, vert, blocks)


def timed(fn, dry: bool, reps: int = 20) -> float:
    """Median ms of ``fn`` by CUDA events after a warm call; NaN in a dry run (once, untimed)."""
    fn()
    if dry:
        return float("nan")
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    dry = os.environ.get("TRITON_INTERPRET") == "1"
    n, dev, dtype = (1024, "cpu", torch.float32) if dry else (131072, "cuda", torch.bfloat16)
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(1, 28, n, 128, device=dev, dtype=dtype, generator=g)
    k = torch.randn(1, 4, n, 128, device=dev, dtype=dtype, generator=g)
    pos, valid = estimate.last_queries(None, n, 1, device=dev)
    scale = 128 ** -0.5
    lse = lsk.row_lse(q, k, pos, valid, scale, None, slice(0, 28))
    pos32 = pos[0].to(torch.int32).contiguous()
    vert = torch.empty(28, n, device=dev)
    blocks = torch.empty(28, 64, n // 64, device=dev)

    def launch(skew, v, b, warps, by_key):
        _p2[(n // 128, 28)](q, k, pos32, lse, vert, blocks, by_key, n, scale, 28, 7, q.stride(1), q.stride(2),
                            k.stride(1), k.stride(2), HEAD_DIM=128, ROWS=64, BLOCK_K=128, BLOCK_N=64,
                            SKEW=skew, VERT=v, BLOCKS=b, num_warps=warps)

    def product():
        lsk.line_skew_sums(q, k, pos, valid, scale, None, slice(0, 28), torch.empty(1, 28, n, device=dev),
                           torch.empty(1, 28, 64, n // 64, device=dev), 64)

    ref = torch.zeros(28, n + 256, device=dev)
    launch(1, 1, 1, 4, ref)
    print(f"product line_skew_sums (pass 1 + 2): {timed(product, dry):.3f} ms")
    print(f"pass 1 alone: {timed(lambda: lsk.row_lse(q, k, pos, valid, scale, None, slice(0, 28)), dry):.3f} ms")
    for warps in (4,) if dry else (4, 8):
        for skew, v, b in VARIANTS:
            by_key = torch.zeros(28, n + 256, device=dev)
            ms = timed(lambda: launch(skew, v, b, warps, by_key.zero_()), dry)
            same = "" if skew == 0 else f" by_key diff {(by_key - ref).abs().max().item():.1e}"
            print(f"warps {warps} skew {skew} vert {v} blocks {b}: {ms:.3f} ms{same}")


if __name__ == "__main__":
    main()
