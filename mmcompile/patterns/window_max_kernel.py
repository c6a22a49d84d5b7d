"""``intra.window_max`` (the max of x[o : o + width] for every o) in one Triton pass.

The PyTorch path takes log2(width) + 1 elementwise maxima over [B, H, N] (four calls of the choice:
68 kernels, 0.70 ms of its 6.2 ms at 128K video on the H100, BENCHMARKS.md 2026-12-08). Here, as
van Herk and Gil-Werman do it, one program per run of ``width`` keys starting at s: a window from
o = s + i ends in the next run, so its max is that of the run's suffix from o (a reversed max
scan) and of the next run's first i keys (a max scan of them, loaded one key earlier so element i
holds i of them). Two loads and two scans per key, whatever the width. Exact (a max of the same
values); x >= 0, and keys past the end count as 0, as in the PyTorch path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_WIDTH = 4096  # widths beyond this take the PyTorch path (a run must fit in one program's registers)


@triton.jit
def _larger(a, b):
    return tl.maximum(a, b)


@triton.jit
def _window_max_kernel(X, Out, n, width, BLOCK: tl.constexpr):
    row = tl.program_id(1).to(tl.int64)
    start = tl.program_id(0).to(tl.int64) * width
    i = tl.arange(0, BLOCK)
    inside = i < width
    here = start + i
    run = tl.load(X + row * n + here, mask=inside & (here < n), other=0.0)
    suffix = tl.associative_scan(run, 0, _larger, reverse=True)  # max x[o .. start + width - 1]
    after = start + width - 1 + i  # element i >= 1: key start + width + i - 1 of the next run
    ahead = tl.load(X + row * n + after, mask=inside & (i >= 1) & (after < n), other=0.0)
    prefix = tl.associative_scan(ahead, 0, _larger)  # max x[start + width .. o + width - 1]
    tl.store(Out + row * n + here, tl.maximum(suffix, prefix), mask=inside & (here < n))


def window_max(x: torch.Tensor, width: int) -> torch.Tensor:
    """[..., N]: the max of x[..., o : o + width] for every o (keys past the end count as 0; x >= 0)."""
    if not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"window widths 1..{MAX_WIDTH} run here, got {width}")
    n = x.shape[-1]
    flat = x.reshape(-1, n).contiguous()
    out = torch.empty_like(flat)
    if flat.numel():
        _window_max_kernel[(triton.cdiv(n, width), flat.shape[0])](flat, out, n, width,
                                                                  BLOCK=triton.next_power_of_2(width))
    return out.view(x.shape)
