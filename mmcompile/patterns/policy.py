"""Default head policy, used when no searched plan exists: per head and query modality, online.

From the last-query line scores (``estimate.LineScores``) it predicts, for each pattern family
and size, the share of the estimation rows' attention mass the index would keep, and gives each
head the cheapest (pattern, size) predicted to keep ``target`` of it within the density cap:
  A-shape         128 sink keys plus the L key blocks nearest the diagonal, L = 1 .. cap;
  Vertical-Slash  C far columns (C on a ladder) plus the R key blocks before the diagonal with the
                  most diagonal mass (``intra.relative_block_mass``), R = 1 .. cap;
  Grid            (one modality with a known frame stride) lines at the frame stride, at the cap.
Costs are keys per query row, so the choice spends only what a head needs: a local head takes a
few blocks, not the whole budget. If no size reaches the target, the family with the best
prediction at the cap wins; below ``min_recall`` the head stays Dense (unstructured heads are not
worth the risk). A-shape wins unless another family is cheaper by more than ``STATIC_BONUS``
(it does not depend on the estimate). Columns are ranked as the builder ranks them
(``intra.column_scores``); overlaps make predictions upper bounds.
"""

from __future__ import annotations

import torch

from . import intra
from .estimate import LineScores
from .layer import Estimates, ForwardContext
from .specs import AShape, Dense, Grid, HeadPattern, VerticalSlash

SINK = 128  # A-shape sink keys
COLUMN_LADDER = (32, 128, 512, 2048, 8192)  # VS column counts tried (the cap trims the ladder)
STATIC_BONUS = 1.2  # A-shape is kept unless another family costs 1/1.2 of it or less
TARGET = 0.97  # predicted recall a head's pattern must reach, when the cap allows


def _first_reaching(curve: torch.Tensor, target: float):
    """(index of the first entry >= target, else the last; its value) along the last dim."""
    reach = curve >= target
    at = torch.where(reach.any(-1), reach.float().argmax(-1), curve.shape[-1] - 1)
    return at, curve.gather(-1, at[..., None])[..., 0]


def _a_shape(vertical, diag, blocks, cap_blocks, block_n, target):
    curve = vertical[..., :SINK].sum(-1)[..., None] + diag[..., None] + blocks[..., :cap_blocks].cumsum(-1)
    at, recall = _first_reaching(curve.mean(0), target)  # one choice per head for the batch
    local = (at + 1) * block_n
    return recall, SINK + local, local


def _vertical_slash(lines: LineScores, explained, cap_keys, cap_blocks, n, block_m, block_n, target):
    """Per head: (recall, cost, columns, blocks) of the cheapest ladder step reaching the target.
    Columns are ranked as the builder ranks them; blocks by the slash mass the top columns of the
    ladder do not account for (as the builder does for its own columns)."""
    ladder = [c for c in COLUMN_LADDER if c < cap_keys] or [COLUMN_LADDER[0]]
    top = intra.column_scores(lines, n).topk(min(ladder[-1], n), -1).indices
    column_curve = (lines.vertical.gather(-1, top) / lines.rows).cumsum(-1)  # [B, H, C]
    slash = (lines.slash - explained(top)).clamp(min=0) / lines.rows
    blocks = intra.relative_block_mass(slash, block_m, block_n)
    forced = -(-intra.FORCED_LOCAL_DIAGONALS // block_n)
    priority = blocks.clone()
    priority[..., :forced] += 2.0  # forced blocks come first (masses are at most 1)
    order = priority.argsort(-1, descending=True)[..., :cap_blocks]
    slash_curve = intra.diagonal_block_mass(slash, block_m)[..., None] + blocks.gather(-1, order).cumsum(-1)
    best = None
    for c in ladder:
        room = max(min(cap_blocks, int((cap_keys - c) // block_n)), 1)
        curve = (column_curve[..., min(c, n) - 1, None] + slash_curve[..., :room]).mean(0)
        at, recall = _first_reaching(curve, target)
        step = (recall, c + (at + 1) * block_n, torch.full_like(at, c), at + 1)
        if best is None:
            best = step
            continue
        better = _better(step[0], step[1], best[0], best[1], target)
        best = tuple(torch.where(better, new, old) for new, old in zip(step, best))
    return best


def _better(recall, cost, old_recall, old_cost, target):
    """Reaching the target beats not reaching it; among those that reach it the cheaper wins;
    among those that do not, the higher recall."""
    reach, old_reach = recall >= target, old_recall >= target
    return (reach & ~old_reach) | (reach & old_reach & (cost < old_cost)) | (~reach & ~old_reach & (recall > old_recall))


def _grid(vertical, slash, ctx: ForwardContext, cap_keys):
    """Lines at the frame stride (the heaviest phase) plus sink and diagonal block, at the cap."""
    stride = ctx.frame_stride.clamp(min=1).long()[:, None, None]
    residue = torch.arange(ctx.n, device=vertical.device)[None, None, :] % stride
    per_phase = torch.zeros(*vertical.shape[:2], max(ctx.max_frame, 1), device=vertical.device)
    per_phase.scatter_add_(2, residue.expand_as(vertical), vertical)
    recall = (per_phase.max(-1).values + vertical[..., :64].sum(-1) + slash[..., :ctx.block_m].sum(-1)).mean(0)
    frames = max(int(cap_keys) - ctx.n // max(ctx.max_frame, 1) // 2, ctx.block_n)
    return recall, torch.full_like(recall, float(cap_keys)), Grid(stride_kind="frame", local_frames=frames, sink=64)


def _choose_one(estimates: Estimates, modality: str, heads: list[int], ctx: ForwardContext, density: float,
                target: float, grid: bool):
    """Per head: (predicted recall list, pattern list) for one query modality's rows."""
    lines = estimates.lines(modality, heads)
    vertical, slash = lines.vertical / lines.rows, lines.slash / lines.rows  # mass per row
    n, block_n = ctx.n, ctx.block_n
    cap_keys = max(density * n / 2, 2 * block_n)  # average keys per row at the density cap
    cap_blocks = max(min(int(cap_keys // block_n), -(-n // block_n)), 1)
    diag = intra.diagonal_block_mass(slash, ctx.block_m)
    blocks = intra.relative_block_mass(slash, ctx.block_m, block_n)
    a_recall, a_cost, a_local = _a_shape(vertical, diag, blocks, cap_blocks, block_n, target)
    v_recall, v_cost, v_cols, v_blocks = _vertical_slash(lines, estimates.explained_by(lines, heads), cap_keys,
                                                         cap_blocks, n, ctx.block_m, block_n, target)
    a_cost = a_cost.float() / STATIC_BONUS
    take_vs = _better(v_recall, v_cost.float(), a_recall, a_cost, target)
    recall = torch.where(take_vs, v_recall, a_recall)
    names = torch.where(take_vs, 1, 0)
    grid_pattern = None
    if grid:
        g_recall, g_cost, grid_pattern = _grid(vertical, slash, ctx, cap_keys)
        take_grid = _better(g_recall, g_cost, recall, torch.where(take_vs, v_cost.float(), a_cost), target)
        recall, names = torch.where(take_grid, g_recall, recall), torch.where(take_grid, 2, names)
    rows = torch.stack([recall, names.float(), a_local.float(), v_cols.float(), v_blocks.float()], -1).tolist()
    patterns = [(AShape(SINK, int(local)), VerticalSlash(int(cols), int(blks)), grid_pattern)[int(kind)]
                for _, kind, local, cols, blks in rows]
    return [r[0] for r in rows], patterns


def choose_patterns(q, k, ctx: ForwardContext, density: float = 0.1, min_recall: float = 0.8,
                    scale: float | None = None, estimates: Estimates | None = None,
                    target: float = TARGET) -> list[HeadPattern]:
    """One HeadPattern per query head for this input (one host sync per query modality).

    With one modality (or no layout) every head is No-Boundary. With several, each modality's
    queries are estimated from their own last queries and get their own pattern (Q-Boundary);
    there the choice is among original-order patterns (grid lines then become VS columns).
    ``density`` caps each head's cost (keys per row over the causal area).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    estimates = estimates if estimates is not None else Estimates(q, k, ctx, scale)
    heads = list(range(q.shape[1]))
    modalities = ctx.row_sets()
    grid = len(modalities) == 1 and ctx.max_frame > 0
    picks = {m: _choose_one(estimates, m, heads, ctx, density, target, grid) for m in modalities}
    chosen = []
    for h in heads:
        if min(picks[m][0][h] for m in modalities) < min_recall:
            chosen.append(HeadPattern("none", (("*", Dense()),)))
        elif modalities == ["*"]:
            chosen.append(HeadPattern("none", (("*", picks["*"][1][h]),)))
        else:
            chosen.append(HeadPattern("q-boundary", tuple((m, picks[m][1][h]) for m in modalities)))
    return chosen
