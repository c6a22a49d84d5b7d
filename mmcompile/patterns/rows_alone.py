"""Launches over some rows alone, each row against every causal key (exact there): the rows the
held-out check sends dense, and a banded grid's rows in query blocks shared with other rows. Also
which rows a grid's band covers. Both are the same for every layer of a forward (cached in the
``ForwardContext``).
"""

from __future__ import annotations

import torch

from mmcompile.kernels import SparseIndex

from .context import ForwardContext, in_pure_blocks, modality_id


def dense_rows_index(heads: int, rows: str, ctx: ForwardContext) -> SparseIndex:
    """One launch of ``heads`` heads over the rows of modality ``rows`` alone, each against every
    causal key (``_rows_alone_index``)."""
    if rows not in ctx.dense_rows:  # the same for every layer of the forward
        ctx.dense_rows[rows] = _rows_alone(ctx.rows_of(rows), ctx.row_counts[rows], ctx)
    return _rows_alone_index(heads, *ctx.dense_rows[rows], ctx)


def band_gap_index(heads: int, rows: str, ctx: ForwardContext) -> SparseIndex | None:
    """For a Q-boundary Grid with a band over modality ``rows``: one launch computing, against
    every causal key, that modality's rows in query blocks shared with other rows (None if there
    are none). Those rows get no band (``grid_band_rows``), and the grid alone misses their own frame
    and the keys of the segment before them: a grid-temporal head's video rows at segment edges
    lost a third of their mass, 2 rows in 100 that held most of its output error (CPU, 32K)."""
    if not ctx.shared_rows.get(rows):
        return None
    key = ("band gap", rows)
    if key not in ctx.dense_rows:  # the same for every layer of the forward
        gap = (ctx.modality == modality_id(rows)) & (grid_band_rows(ctx, rows) == 0)
        ctx.dense_rows[key] = _rows_alone(gap, ctx.shared_rows[rows], ctx)
    return _rows_alone_index(heads, *ctx.dense_rows[key], ctx)


def _rows_alone(mask: torch.Tensor, slots: int, ctx: ForwardContext) -> tuple:
    """(q_order int32 [B, slots], span int32 [B, M, 2]) of a launch over the rows ``mask`` [B, N]
    alone (``slots``: the most any sample has, from ``forward_context``: no host sync here; they
    come ascending, and a sample with fewer also lists its first other rows, which it then computes
    exactly too), each query block's span from key 0 to its last row."""
    batch, n, block_m = ctx.batch, ctx.n, ctx.block_m
    pos = torch.arange(n, device=mask.device)
    q_order = torch.where(mask, pos, n + pos).sort(-1).values[:, :slots] % n  # [B, slots]: the rows, ascending
    num_m = -(-slots // block_m)
    last = torch.nn.functional.pad(q_order, (0, num_m * block_m - slots), value=-1).view(batch, num_m, block_m)
    span = torch.stack([torch.zeros_like(last[..., 0]), last.amax(-1) + 1], -1)  # [B, M, 2]
    return q_order.to(torch.int32), span.to(torch.int32)


def _rows_alone_index(heads: int, q_order: torch.Tensor, span: torch.Tensor, ctx: ForwardContext) -> SparseIndex:
    """The launch of ``_rows_alone``'s rows for ``heads`` heads: ``q_order`` lists them, keys stay
    in original order and are all visited (a span to each block's last row, and its diagonal
    block), masked causally, so it writes those rows, exactly, and no other."""
    zeros = torch.zeros(ctx.batch, heads, span.shape[1], dtype=torch.int32, device=span.device)
    return SparseIndex(zeros, zeros[..., None], zeros.clone(), zeros[..., None].clone(), ctx.block_m, ctx.block_n,
                       q_order=q_order[:, None, :].expand(-1, heads, -1).contiguous(),
                       span=span[:, None].expand(-1, heads, -1, -1).contiguous())


def grid_band_rows(ctx: ForwardContext, rows: str | None) -> torch.Tensor:
    """int32 [B, N]: the rows whose original-order launch visited their Grid band alone: all
    (``rows`` None: that launch is the band), or the rows of modality ``rows`` in query blocks
    holding no other rows (a shared block's rows also get the other modality's sets there: they
    run exactly in a launch of their own after the grid's, ``band_gap_index``, rather than count
    a key twice). Once per forward (``ctx.band_rows``)."""
    if rows not in ctx.band_rows:
        if rows is None:
            ctx.band_rows[rows] = torch.ones(ctx.batch, ctx.n, dtype=torch.int32, device=ctx.frame_stride.device)
        else:
            mine = ctx.modality == modality_id(rows)  # [B, N]
            ctx.band_rows[rows] = (in_pure_blocks(mine, ctx.block_m) & mine).to(torch.int32)
    return ctx.band_rows[rows]
