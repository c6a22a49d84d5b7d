"""The estimate's GPU time per layer (``estimate.line_scores`` on the kernel path: all query heads,
the last 64 rows, per-block sums as the policy asks for them): every sum (columns, key blocks,
consecutive rows' slashes) in the probabilities pass, against probabilities written to memory and
read again (a skewed matrix-vector product and a block sum); pass 1 alone for scale. Measured once
and dropped: a finer pass-1 key split (1024 keys: 2.90 against 2.78 ms) and several key tiles per
pass-2 program, q loaded once for them (2-32 tiles: 5.98-6.27 ms against 3.07 ms for one).
``estimate_pass2_parts.py`` times pass 2's parts apart.

Usage: python benchmarks/bench_estimate.py [--tokens 131072] [--reps 20]
Prints one line per variant: median ms (CUDA events) and the largest difference from the first
variant's scores (they must agree to fp32 rounding).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from mmcompile.patterns import estimate, line_scores_kernel


def timed(fn, reps: int) -> tuple[float, object]:
    out = fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    n = args.tokens
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 28, n, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, 4, n, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    pos, valid = estimate.last_queries(None, n, 1, device="cuda")

    def run():
        return estimate.line_scores(q, k, pos, valid, 128 ** -0.5, start=int(n - 64), consecutive=True,
                                    use_kernel=True, block_n=64)

    fuses = line_scores_kernel.fuses_block_sums
    variants = {  # without fused block sums the probabilities are written and read (the path before)
        "probs in memory (before)": lambda b: False,
        "all sums in the kernel (now)": fuses,
    }
    first = None
    print(f"line_scores, {n} tokens, 28/4 heads, 64 rows, bf16, {torch.cuda.get_device_name()}")
    ms, _ = timed(lambda: line_scores_kernel.row_lse(q, k, pos, valid, 128 ** -0.5, None, slice(0, 28)), args.reps)
    print(f"{'pass 1 alone (row log-sum-exp)':45s} {ms:7.3f} ms")
    for name, fuse in variants.items():
        line_scores_kernel.fuses_block_sums = fuse
        ms, lines = timed(run, args.reps)
        first = first or lines
        diff = max((getattr(lines, f) - getattr(first, f)).abs().max().item() for f in ("vertical", "slash", "blocks"))
        print(f"{name:45s} {ms:7.3f} ms   max diff {diff:.2e}")
    line_scores_kernel.fuses_block_sums = fuses


if __name__ == "__main__":
    main()
