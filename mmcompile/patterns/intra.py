"""Intra-modality patterns reduced to BlockSets (index_builder.py), vectorized over batch and heads.

A-shape and Dense are static. Vertical-Slash reads top-k columns and diagonals off the last-query
estimate (MInference: 30 forced sink columns, the 100 nearest diagonals forced). Grid finds stride
and phase per head, then works in the residue-major order that makes grid lines contiguous:
vertical lines are the last band of key slots, periodic slashes are the key blocks just before the
diagonal, horizontal lines the last query blocks; the first ``sink`` tokens are added as columns.
"""

from __future__ import annotations

import torch

from mmcompile.kernels.index_factories import grid_order

from . import estimate
from .index_builder import FAR, INVALID, BlockSets
from .specs import AShape, BlockSparse, Dense, Grid, VerticalSlash

FORCED_SINK_COLUMNS = 30
FORCED_LOCAL_DIAGONALS = 100


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def a_shape_sets(pattern: AShape, batch, heads, n, block_n, device) -> BlockSets:
    local = torch.arange(-_ceil_div(pattern.local, block_n), 0, device=device)  # blocks before the diagonal
    sink = torch.arange(_ceil_div(pattern.sink, block_n), device=device)
    return BlockSets(local.expand(batch, heads, -1), sink.expand(batch, heads, -1),
                     torch.empty(batch, heads, 0, dtype=torch.long, device=device))


def dense_sets(pattern: Dense, batch, heads, n, block_n, device) -> BlockSets:
    every = torch.arange(-(-n // block_n), device=device)
    return BlockSets(torch.empty(batch, heads, 0, dtype=torch.long, device=device),
                     every.expand(batch, heads, -1), torch.empty(batch, heads, 0, dtype=torch.long, device=device))


def vertical_slash_sets(pattern: VerticalSlash, probs, pos, valid, n, block_m, block_n) -> BlockSets:
    """probs: [B, H, L, N] last-query softmax of these heads; pos, valid: [B, L] their rows."""
    vertical = estimate.vertical_scores(probs, valid)
    slash = estimate.slash_scores(probs, pos, valid)
    vertical[..., :FORCED_SINK_COLUMNS] = float("inf")
    slash[..., :FORCED_LOCAL_DIAGONALS] = float("inf")
    k_v = min(n, max(pattern.vertical, FORCED_SINK_COLUMNS))
    k_s = min(n, max(pattern.slash, 50))
    columns = vertical.topk(k_v, dim=-1).indices
    offsets = slash.topk(k_s, dim=-1).indices  # diagonal offsets o: key = query - o
    # Rows [m*BM, m*BM + BM) on diagonal o touch key blocks m*R + d, d in [-ceil(o/BN), (BM-1-o)//BN].
    lo = -((offsets + block_n - 1) // block_n)
    hi = torch.div(block_m - 1 - offsets, block_n, rounding_mode="floor")
    steps = torch.arange(block_m // block_n + 1, device=probs.device)
    rel = lo[..., None] + steps
    rel = torch.where(rel <= hi[..., None], rel, FAR).flatten(2)
    return BlockSets(_unique_sorted(rel), torch.empty_like(columns[..., :0]), columns)


def _unique_sorted(values: torch.Tensor) -> torch.Tensor:
    """Sorted, duplicates replaced by FAR (which sorts last)."""
    srt = values.sort(dim=-1).values
    dup = torch.zeros_like(srt, dtype=torch.bool)
    dup[..., 1:] = srt[..., 1:] == srt[..., :-1]
    return torch.where(dup, FAR, srt).sort(dim=-1).values


def grid_sets(pattern: Grid, probs, valid, frame_stride: torch.Tensor, max_frame: int, n, block_m, block_n):
    """Returns (order int32 [B, H, N], BlockSets in slot space). ``max_frame``: the largest frame
    stride of the batch as a Python int (known once per forward: no per-layer sync)."""
    batch, heads = probs.shape[:2]
    device = probs.device
    vertical = estimate.vertical_scores(probs, valid)
    if pattern.stride_kind == "frame":
        frame = frame_stride.clamp(min=1).long()
        stride = frame[:, None].expand(batch, heads)
        residue = torch.arange(n, device=device)[None, None, :] % stride[..., None]
        mass = torch.zeros(batch, heads, max(max_frame, 1), device=device).scatter_add_(
            2, residue, vertical)  # per-phase mass at the frame stride
        phase = mass.argmax(-1)
    else:
        # At least 8 periods: with fewer, one heavy key makes any long stride look like a grid.
        candidates = estimate.stride_candidates(max_frame, min(pattern.max_stride, n // 8))
        stride, phase = estimate.grid_stride_phase(vertical, candidates)
    order = grid_order(n, stride, phase)
    nkb = -(-n // block_n)
    line_count = (n - 1 - phase) // stride + 1  # tokens in the phase class
    band_start = n - line_count  # first slot of the vertical-line band
    empty = torch.empty(batch, heads, 0, dtype=torch.long, device=device)
    absolute = empty
    if pattern.vline:
        band = torch.arange(nkb, device=device).expand(batch, heads, nkb)
        absolute = torch.where(band >= (band_start // block_n)[..., None], band, INVALID)
    relative = empty
    if pattern.slash:
        relative = torch.arange(-_ceil_div(pattern.local_frames, block_n), 0, device=device).expand(batch, heads, -1)
    full_rows = None
    if pattern.hline:
        m_end = (torch.arange(-(-n // block_m), device=device) + 1) * block_m
        full_rows = m_end[None, None, :] > band_start[..., None]
    slots_of = order.long().argsort(dim=-1)  # inverse order: slot of each position
    columns = slots_of[..., :min(pattern.sink, n)] if pattern.sink else empty
    return order, BlockSets(relative, absolute, columns, full_rows)


def block_sparse_sets(pattern: BlockSparse, q, k, kv_heads, n, block_m, block_n) -> BlockSets:
    """MInference's block-sparse estimate: mean-pooled queries per query block against mean-pooled
    keys per key block (no scaling or softmax: only the ranking matters), block-causal, and the
    top ``top_k`` earlier key blocks of every query block (per query block: absolute ids [B,H,M,K]).
    q: the heads to index [B, Hs, N, D]; k: all KV heads; kv_heads: int64 [Hs], each head's KV head."""
    batch, heads_q = q.shape[:2]
    num_m, nkb = -(-n // block_m), -(-n // block_n)
    qp = _pool(q, num_m, block_m)  # [B, Hs, M, D]
    kp = _pool(k, nkb, block_n)[:, kv_heads]  # pooled once per KV head, then picked: [B, Hs, NKB, D]
    scores = qp @ kp.transpose(-1, -2)
    earlier = torch.arange(nkb, device=q.device)[None, :] < (torch.arange(num_m, device=q.device) *
                                                              (block_m // block_n))[:, None]
    scores = scores.masked_fill(~earlier, float("-inf"))
    top, ids = scores.topk(min(pattern.top_k, nkb), dim=-1)
    ids = torch.where(torch.isinf(top), INVALID, ids)
    empty = torch.empty(batch, heads_q, 0, dtype=torch.long, device=q.device)
    return BlockSets(empty, ids, empty.clone())


def _pool(t, blocks, size):
    """Mean over blocks of ``size`` tokens along dim 2 (the last block may be short), in fp32."""
    n = t.shape[2]
    padded = torch.nn.functional.pad(t.float(), (0, 0, 0, blocks * size - n))
    sums = padded.view(*t.shape[:2], blocks, size, t.shape[-1]).sum(3)
    counts = (n - torch.arange(blocks, device=t.device) * size).clamp(max=size).to(sums.dtype)
    return sums / counts[:, None]
