"""The recall, on the estimation rows, of the original-order candidates the policy weighs (A-shape
and vertical-slash at every size it tries), computed from exactly the keys the index builder would
list: issue 11's "honest estimates".

Every row of a query block visits the same key blocks and columns (``index_builder``), and a row
puts no mass on its future keys. So a candidate's recall on a row is that row's probability mass
over its query block's key blocks (``LineScores.blocks``: each estimation row's mass per key
block) plus its probabilities at the columns that lie outside those blocks
(``estimate.column_probs``), with nothing counted twice. Curves over the number of blocks are
cumulative sums along the order in which the builder adds blocks, so every size costs one
tensor op, not one pass. Averaged over the valid rows of each sample like the policy's other
predictions; one choice per head for the batch is made from their mean over samples.

A Q-boundary head's query block holding rows of two modalities visits both modalities' sets, so
there the built index keeps at least what is predicted here. Grid (its own order) is not covered.
"""

from __future__ import annotations

import torch

from .estimate import LineScores
from .index_builder import device_list


def _diagonal_start(lines: LineScores, block_m: int, block_n: int) -> torch.Tensor:
    """int64 [B, L]: the first key block of each estimation row's diagonal (query block m visits
    key blocks m R .. m R + R - 1 as its diagonal, R = block_m / block_n)."""
    return lines.pos // block_m * (block_m // block_n)


def _row_mean(per_row: torch.Tensor, lines: LineScores) -> torch.Tensor:
    """[B, H, L, ...] -> [B, H, ...]: the mean over each sample's valid rows (at least one)."""
    weight = lines.valid.float()
    weight = weight / weight.sum(-1, keepdim=True).clamp(min=1)
    return torch.einsum("bhl...,bl->bh...", per_row, weight)


def a_shape_curve(lines: LineScores, sink_blocks: int, cap_blocks: int, block_m: int, block_n: int) -> torch.Tensor:
    """fp32 [B, H, cap_blocks]: the recall of A-shape with the first ``sink_blocks`` key blocks,
    the diagonal and t = 1 .. cap_blocks key blocks before it (``intra.a_shape_sets``)."""
    blocks, first = lines.blocks, _diagonal_start(lines, block_m, block_n)
    key_block = torch.arange(blocks.shape[-1], device=blocks.device)
    base = (key_block < sink_blocks) | ((key_block >= first[..., None]) &
                                        (key_block < first[..., None] + block_m // block_n))  # [B, L, K]
    base_mass = torch.where(base[:, None], blocks, 0.0).sum(-1)  # [B, H, L]
    before = first[..., None] - torch.arange(1, cap_blocks + 1, device=blocks.device)  # [B, L, cap]
    taken = (before >= sink_blocks)[:, None].expand(-1, blocks.shape[1], -1, -1)  # not a sink block again
    local = torch.where(taken, blocks.gather(-1, before.clamp(min=0)[:, None].expand_as(taken)), 0.0)
    return _row_mean(base_mass[..., None] + local.cumsum(-1), lines)


def vs_curves(lines: LineScores, order: torch.Tensor, column_probs: torch.Tensor, columns: torch.Tensor,
              steps: list[int], width: int, forced: int, block_m: int, block_n: int) -> torch.Tensor:
    """fp32 [B, H, len(steps), width]: the recall of vertical-slash with the first ``steps[i]`` of
    ``columns`` (int64 [B, H, C], ranked; ``column_probs`` [B, H, L, C] their probabilities) and
    the diagonal plus the first max(j + 1, ``forced``) relative blocks of ``order`` (int64
    [B, H, T]: every distance t - 1 before the diagonal, in the order the builder takes them)."""
    blocks, first = lines.blocks, _diagonal_start(lines, block_m, block_n)
    batch, heads, rows, key_blocks = blocks.shape
    ratio = block_m // block_n
    key_block = torch.arange(key_blocks, device=blocks.device)
    diagonal = (key_block >= first[..., None]) & (key_block < first[..., None] + ratio)
    diagonal_mass = torch.where(diagonal[:, None], blocks, 0.0).sum(-1)  # [B, H, L]
    span = max(width, forced)  # blocks the curves may take
    # Curve j takes taken[j] + 1 blocks: at least the forced ones, at most all there are (the builder's rule).
    taken = torch.arange(width, device=blocks.device).clamp(min=forced - 1).clamp(max=order.shape[-1] - 1)
    before = first[:, None, :, None] - 1 - order[..., :span][:, :, None, :]  # [B, H, L, span]: key blocks in order
    block_mass = torch.where(before >= 0, blocks.gather(-1, before.clamp(min=0)), 0.0).cumsum(-1)
    block_curve = diagonal_mass[..., None] + block_mass.index_select(-1, taken)  # [B, H, L, W]
    # Each column's place in the order for each row's query block (-1: on the diagonal or later,
    # always visited or never seen; ``span``: not among the blocks the curves take).
    place = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device)
                                             .expand_as(order))  # distance - 1 -> its place in the order
    distance = first[:, None, :, None] - 1 - columns.clamp(min=0)[:, :, None, :] // block_n  # [B, H, L, C]
    rank = torch.where(distance < 0, -1, place.gather(-1, distance.clamp(min=0).flatten(2)).view_as(distance))
    bins = rank.clamp(max=span) + 1  # 0: always visited; p + 1: visited once the first p + 1 blocks are
    # One histogram per group of columns (those the step adds to the one before), summed up the steps.
    width_c = bins.shape[-1]
    group = torch.bucketize(torch.arange(width_c, device=bins.device),
                            device_list(steps, bins.device), right=True)  # [C]; past the last step: dropped
    hist = torch.zeros(batch, heads, rows, (len(steps) + 1) * (span + 2), device=blocks.device)
    hist.scatter_add_(-1, group * (span + 2) + bins, column_probs)
    hist = hist.view(batch, heads, rows, len(steps) + 1, span + 2)[..., :len(steps), :].cumsum(3)
    outside = hist.sum(-1, keepdim=True) - hist.cumsum(-1)  # [..., step, b]: column mass outside the first b blocks
    return _row_mean(block_curve[..., None, :] + outside.index_select(-1, taken + 1), lines)  # [B, H, steps, W]
