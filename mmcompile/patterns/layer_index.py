"""A layer's launch groups: which heads run together and the index of each.

Heads are grouped by how the kernel must address them: heads in original order (A-shape, VS,
block-sparse; Q-boundary heads too, whose per-modality sets are combined per query block), grid
heads (their own permutation), 2D-Boundary heads (the modality-major permutation, boundary2d.py)
and dense heads (the dense path). No host sync: small host lists reach the GPU through
``device_list``. Heads whose pattern has the same type are indexed together even when their sizes
differ, so the only Python loops run over pattern types and modalities, never over data. A
Q-boundary head whose Grid is one modality's pattern runs in two launches: its other modalities'
rows in original order, then that modality's rows alone in the grid order (the kernel writes only
the rows an order lists, so the second replaces the first's work on those rows).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Sequence

import torch

from . import estimate, intra
from .boundary2d import boundary2d_index, pair_pattern
from .context import ForwardContext
from .estimates import Estimates
from .index_builder import BlockSets, build_index, device_list, empty_sets, head_slice, stack_heads
from .launch import runs_dense
from .layout import VIDEO
from .rows_alone import band_gap_index, grid_band_rows
from .specs import AShape, BlockSparse, Dense, Grid, HeadPattern, VerticalSlash


def build_layer_indexes(q, k, heads: Sequence[HeadPattern], ctx: ForwardContext, scale: float | None = None,
                        estimates: "Estimates | None" = None):
    """Estimation and index building: [(query head ids, SparseIndex or None for dense heads)], one
    entry per launch group. ``estimates`` may be shared with the policy that chose ``heads``."""
    return list(launch_groups(q, k, heads, ctx, scale, estimates))


def launch_groups(q, k, heads: Sequence[HeadPattern], ctx: ForwardContext, scale: float | None = None,
                  estimates: "Estimates | None" = None):
    """``build_layer_indexes`` one launch group at a time, in launch order (dense heads first, then
    the original-order heads, those of fixed sets (A-shape) before those of estimated ones, the
    grid row sets, the 2D-boundary heads): a caller that launches each as it comes keeps the GPU
    busy while the host builds the next."""
    heads_q, d = q.shape[1], q.shape[-1]
    if len(heads) != heads_q:
        raise ValueError(f"{len(heads)} head patterns for {heads_q} query heads")
    scale = d ** -0.5 if scale is None else scale
    estimates = estimates if estimates is not None else Estimates(q, k, ctx, scale)
    if ctx.modality is None:  # no layout: a 2D head is its text>text pattern everywhere
        heads = [HeadPattern("none", (("*", pair_pattern(head, "text", "text")),)) if head.inter == "2d-boundary"
                 else head for head in heads]
    plain, grid, dense, boundary = [], defaultdict(list), [], defaultdict(list)
    plain_heads = list(heads)  # what the original-order launch runs for each head
    for h, head in enumerate(heads):
        if runs_dense(head):
            dense.append(h)  # the dense fast path: no index, and no all-blocks lists widening the rest
        elif head.inter == "2d-boundary":
            boundary[head].append(h)  # modality-major order: grouped by the exact pattern
        elif any(isinstance(p, Grid) for _, p in head.intra):
            rows = grid_rows(head, ctx)
            grid[(head, rows)].append(h)  # its own permutation: grouped by the exact pattern
            band = _grid_of(head).band
            if rows is not None:  # its other modalities' rows first, in original order (the grid's: its band)
                plain.append(h)
                plain_heads[h] = HeadPattern(head.inter, tuple((m, (AShape(0, band) if band else None)
                                                                if isinstance(p, Grid) else p) for m, p in head.intra))
            elif band:  # every row's band first, in original order
                plain.append(h)
                plain_heads[h] = HeadPattern("none", (("*", AShape(0, band)),))
        else:
            plain.append(h)
    if dense:
        yield dense, None
    # Heads whose original-order sets need no estimate (A-shape, Dense) first: their index takes
    # the host a fraction of the others', and the GPU runs them while the host builds the rest.
    fixed = {h for h in plain if all(isinstance(p, (AShape, Dense, type(None))) for _, p in plain_heads[h].intra)}
    for ids in ([h for h in plain if h in fixed], [h for h in plain if h not in fixed]):
        if ids:
            yield ids, _plain_index(ids, plain_heads, estimates, ctx)
    by_rows = defaultdict(dict)  # one grid launch per row set, after the original-order launch
    for (head, rows), ids in grid.items():  # (a row-subset grid overwrites its rows)
        by_rows[rows][head] = ids
    for rows, groups in by_rows.items():
        yield [h for ids in groups.values() for h in ids], _grid_index(groups, rows, estimates, ctx)
        banded = [h for head, ids in groups.items() if _grid_of(head).band for h in ids]
        gap = band_gap_index(len(banded), rows, ctx) if banded and rows is not None else None
        if gap is not None:  # their rows in shared query blocks: exact, after the grid launch
            yield banded, gap
    if boundary:
        yield [h for ids in boundary.values() for h in ids], boundary2d_index(boundary, ctx, estimates)


def _selectors(head: HeadPattern, ctx: ForwardContext) -> list[tuple[str, object]]:
    """(query modality or "*", intra pattern) pairs a head needs for this input."""
    if head.inter != "q-boundary" or not ctx.present:  # one pattern for all rows: "*", else the first
        return [("*", dict(head.intra).get("*", head.intra[0][1]))]
    return [(name, head.pattern_for(name)) for name in ctx.present]


def _sets_for(kind, patterns, head_ids, selector, estimates: Estimates, ctx: ForwardContext) -> BlockSets:
    """Sets of heads whose pattern for ``selector`` is of one type (sizes may differ per head)."""
    batch, n, device = ctx.batch, ctx.n, estimates.q.device
    if kind is type(None):  # these heads have no pattern for this query modality
        return empty_sets(batch, len(head_ids), device)
    if kind is AShape:
        return intra.a_shape_sets(patterns, batch, n, ctx.block_n, device)
    if kind is Dense:
        return intra.dense_sets(patterns, batch, n, ctx.block_n, device)
    if kind is VerticalSlash:
        lines = estimates.lines(selector, head_ids)
        ranking, ranked = estimates.column_ranking(selector, head_ids), estimates.vs_ranking(selector, head_ids)
        if any(p.lines for p in patterns) and ctx.max_frame > 0:  # fallbacks: the policy's ranked sets are not theirs
            lined = device_list([p.lines for p in patterns], device).bool()[None, :, None]
            ranking = torch.where(lined, intra.line_class_scores(ranking, lines.vertical, ctx.modality == VIDEO,
                                                                 ctx.frame_stride, ctx.max_frame), ranking)
            ranked = None
        return intra.vertical_slash_sets(patterns, lines, n, ctx.block_m, ctx.block_n,
                                         explained=estimates.explained_by(lines, head_ids),
                                         ranking=ranking, ranked=ranked)
    if kind is BlockSparse:
        if len(set(patterns)) > 1:
            return stack_heads([_sets_for(kind, [p], [h], selector, estimates, ctx)
                                for p, h in zip(patterns, head_ids)])
        group = estimates.q.shape[1] // estimates.k.shape[1]
        kv_heads = device_list([h // group for h in head_ids], device)
        queries = estimates.q.index_select(1, device_list(head_ids, device))
        return intra.block_sparse_sets(patterns[0], queries, estimates.k, kv_heads, n,
                                       ctx.block_m, ctx.block_n)
    raise TypeError(f"pattern {patterns[0]!r} is not an original-order pattern")


def _plain_index(head_ids: list[int], heads: Sequence[HeadPattern], estimates: Estimates, ctx: ForwardContext):
    """One index for all original-order heads: per query modality ("*" for all rows), the sets of
    each pattern type are built together, then put back in head order."""
    selectors_of = [dict(_selectors(heads[h], ctx)) for h in head_ids]
    entries = []
    for selector in sorted({s for sel in selectors_of for s in sel}):
        by_type = defaultdict(list)  # pattern type -> positions in head_ids
        for i, sel in enumerate(selectors_of):
            by_type[type(sel.get(selector))].append(i)
        parts, placed = [], []
        for kind, positions in by_type.items():
            patterns = [selectors_of[i].get(selector) for i in positions]
            parts.append(_sets_for(kind, patterns, [head_ids[i] for i in positions], selector, estimates, ctx))
            placed += positions
        back = sorted(range(len(placed)), key=placed.__getitem__)
        entries.append((None if selector == "*" else ctx.present[selector], _in_order(stack_heads(parts), back)))
    return build_index(entries, ctx.n, ctx.n, ctx.block_m, ctx.block_n)


def grid_rows(head: HeadPattern, ctx: ForwardContext) -> str | None:
    """The modality whose rows alone a head's grid covers: a Q-boundary head whose Grid is one
    modality's pattern while other modalities of the input have theirs. None: all rows."""
    if head.inter != "q-boundary" or len(ctx.present) < 2:
        return None
    names = [m for m, p in head.intra if isinstance(p, Grid) and m in ctx.present]
    if len(names) != 1 or not ctx.equal_rows(names[0]):
        return None  # several grid modalities, or unequal row counts across the batch: all rows
    return names[0]


def _grid_index(heads: dict, rows: str | None, estimates: Estimates, ctx: ForwardContext):
    """One launch for grid heads ({pattern: head ids}) over the rows of modality ``rows`` (its
    query slots come first in each order), or over all rows (None). Grid lines are video
    structure: their stride and phase come from those rows' estimate, or from the last video rows
    when the input has video (the plain last rows are often the text question, which shows no grid)."""
    lines_of = rows or ("video" if "video" in ctx.last_rows else "*")
    mask = None if rows is None else ctx.rows_of(rows)
    slots = ctx.n if rows is None else ctx.row_counts[rows]
    shared = defaultdict(list)  # patterns equal but for their window and band: one grid_sets call
    for head, ids in heads.items():
        pattern = _grid_of(head)
        shared[dataclasses.replace(pattern, local_frames=0, band=0)] += [(h, pattern.local_frames) for h in ids]
    orders, parts, placed = [], [], []
    for pattern, members in shared.items():
        ids = [h for h, _ in members]
        order, sets = intra.grid_sets(pattern, estimates.lines(lines_of, ids).vertical, ctx.frame_stride,
                                      ctx.max_frame, ctx.n, ctx.block_m, ctx.block_n, mask, slots,
                                      local_frames=[f for _, f in members])
        orders.append(order)
        parts.append(sets)
        placed += ids
    wanted = [h for ids in heads.values() for h in ids]  # the launch group's head order
    back = [placed.index(h) for h in wanted]
    order = estimate.select_heads(orders[0] if len(orders) == 1 else torch.cat(orders, dim=1), back)
    index = build_index([(None, _in_order(stack_heads(parts), back))], slots, ctx.n, ctx.block_m, ctx.block_n,
                        order=order.contiguous())
    bands = [_grid_of(head).band or -1 for head, ids in heads.items() for _ in ids]
    if max(bands) < 0:
        return index
    return dataclasses.replace(index, near_keys=device_list(bands, order.device, torch.int32),
                               near_rows=grid_band_rows(ctx, rows))


def _grid_of(head: HeadPattern) -> Grid:
    return next(p for _, p in head.intra if isinstance(p, Grid))


def _in_order(sets: BlockSets, back: list[int]) -> BlockSets:
    """``sets`` of heads built group by group, put back in the launch's head order (``back``: the
    position of each launch head among them); as they are when already in order (no copies)."""
    if back == list(range(len(back))):
        return sets
    return head_slice(sets, device_list(back, sets.relative.device))
