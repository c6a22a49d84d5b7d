"""2D-Boundary heads (method.md 1.5, Alg. 3 and 7): queries and keys grouped by modality, one
pattern per (query modality, key modality) pair, one softmax over all keys.

Tokens are put in modality-major order (stable: each modality keeps its token order), shared by
queries and keys, so each modality's keys are one contiguous slot range and a modality's own
tokens follow one another even where its segments are interleaved with others (the paper's
example: a grid split by text segments becomes continuous). Per pair the pattern becomes:
  same modality   AShape: its first ``sink`` keys plus the ``local`` slots before the query's
                  (the modality's own previous tokens); Dense: the modality's whole slot range;
  other modality  AShape: its first ``sink`` keys plus its last ``local`` keys before the query
                  block (in original positions); Dense: its whole slot range.
  either          VerticalSlash: estimated (method.md 1.5: per modality pair, from the last
                  queries of the query modality): the ``vertical`` keys of the key modality that
                  those rows weigh most (``Estimates.lines``, in original positions, mapped to
                  their slots), plus ``slash_blocks`` key blocks of local band: the A-shape above
                  with no sink and ``slash_blocks * block_n`` local keys. The plan fixes the
                  budgets, the input the columns.
``AShape(0, 0)`` drops a pair (the diagonal block and block edges still spill a few keys). A pair
the plan leaves out is Dense, so a partial plan is never less exact. The kernel merges every
pair of a query block into one online softmax and masks causally in original positions.
"""

from __future__ import annotations

import dataclasses

import torch

from .index_builder import INVALID, BlockSets, build_index, device_list, stack_heads
from .layout import MODALITY_NAMES
from .specs import AShape, Dense, HeadPattern, VerticalSlash

PAIR_TYPES = (AShape, Dense, VerticalSlash)


def pair_pattern(head: HeadPattern, query: str, key: str):
    """The head's pattern for queries of ``query`` over keys of ``key`` ("query>key" entries)."""
    pattern = dict(head.intra).get(f"{query}>{key}", Dense())
    if not isinstance(pattern, PAIR_TYPES):
        raise ValueError(f"2d-boundary pair {query}>{key}: {type(pattern).__name__} is not supported "
                         f"(supported: {', '.join(t.__name__ for t in PAIR_TYPES)})")
    return pattern


def modality_major(modality: torch.Tensor):
    """(order int32 [B, N]: original position of each slot, sort keys int64 [B, N] ascending,
    start/end int64 [B, K] slot range of each modality id in MODALITY_NAMES order)."""
    batch, n = modality.shape
    pos = torch.arange(n, device=modality.device)
    keys, order = (modality.long() * n + pos).sort(dim=1)  # padding (-1) first
    ids = device_list(sorted(MODALITY_NAMES), modality.device)
    start = torch.searchsorted(keys, ids[None, :].expand(batch, -1) * n)
    end = torch.searchsorted(keys, (ids[None, :].expand(batch, -1) + 1) * n)
    return order.to(torch.int32), keys, start, end


def _range_blocks(lo: torch.Tensor, hi: torch.Tensor, width: int, block_n: int) -> torch.Tensor:
    """Key blocks touching slots [lo, hi) (any leading shape), padded INVALID to ``width``."""
    first = lo // block_n
    count = torch.where(hi > lo, (hi - 1) // block_n - first + 1, 0)
    step = torch.arange(width, device=lo.device)
    return torch.where(step < count[..., None], first[..., None] + step, INVALID)


def _pair_sets(pattern, same: bool, qid: int, kid: int, layout_ranges, query_end_pos, heads, n, block_m, block_n,
               columns=None):
    """BlockSets [B, heads, ...] of one pair, in slot space (absolute sets per query block).
    ``columns()`` -> int64 [B, heads, C] key slots: a VerticalSlash pair's estimated columns."""
    if isinstance(pattern, VerticalSlash):
        band = _pair_sets(AShape(0, pattern.slash_blocks * block_n), same, qid, kid, layout_ranges, query_end_pos,
                          heads, n, block_m, block_n)
        return dataclasses.replace(band, columns=columns(pattern.vertical))
    keys, start, end = layout_ranges
    batch = start.shape[0]
    nkb = -(-n // block_n)
    k_lo, k_hi = start[:, kid], end[:, kid]
    empty = torch.empty(batch, heads, 0, dtype=torch.long, device=start.device)
    if isinstance(pattern, Dense):
        blocks = _range_blocks(k_lo, k_hi, nkb, block_n)
        return BlockSets(empty, blocks[:, None, :].expand(batch, heads, -1), empty)
    sink = _range_blocks(k_lo, torch.minimum(k_lo + pattern.sink, k_hi), -(-pattern.sink // block_n) + 1, block_n)
    local_blocks = -(-pattern.local // block_n)
    if same:
        relative = torch.arange(-local_blocks, 0, device=start.device).expand(batch, heads, -1)
        return BlockSets(relative, sink[:, None, :].expand(batch, heads, -1), empty)
    # Keys of the other modality up to the latest row of each query block, in original positions.
    seen = torch.searchsorted(keys, (kid * n + query_end_pos).contiguous(), right=True)  # [B, M]
    seen = torch.minimum(seen, k_hi[:, None])
    recent = _range_blocks(torch.maximum(seen - pattern.local, k_lo[:, None]), seen, local_blocks + 1, block_n)
    absolute = torch.cat([sink[:, None, :].expand(-1, recent.shape[1], -1), recent], dim=-1)
    return BlockSets(empty, absolute[:, None].expand(batch, heads, -1, -1), empty)


def _columns_of(estimates, q_name: str, head_ids: list[int], modality, kid: int, slot_of):
    """count -> the pair's estimated column slots (``_top_columns``) for these heads: read on
    first use, so static pairs need no estimate."""
    def columns(count: int) -> torch.Tensor:
        if estimates is None:
            raise ValueError(f"2d-boundary pair {q_name}>{MODALITY_NAMES[kid]}: a VerticalSlash pair needs the "
                             "layer's estimates")
        return _top_columns(estimates.lines(q_name, head_ids).vertical, modality, kid, count, slot_of)
    return columns


def _union(parts: list[BlockSets]) -> BlockSets:
    """One query modality's pairs together (absolute sets broadcast per query block)."""
    num_m = next((p.absolute.shape[2] for p in parts if p.absolute.dim() == 4), None)
    absolute = [p.absolute if p.absolute.dim() == 4 or num_m is None else
                p.absolute[:, :, None, :].expand(-1, -1, num_m, -1) for p in parts]
    return BlockSets(torch.cat([p.relative for p in parts], -1), torch.cat(absolute, -1),
                     torch.cat([p.columns for p in parts], -1))


def _top_columns(vertical: torch.Tensor, modality: torch.Tensor, kid: int, count: int,
                 slot_of: torch.Tensor) -> torch.Tensor:
    """int64 [B, H, count]: the slots of the ``count`` keys of modality ``kid`` with the most
    estimated mass (``vertical`` fp32 [B, H, N], original positions), INVALID past the keys
    the estimation rows weigh at all (fewer keys, or none of that modality)."""
    score = vertical.masked_fill((modality != kid)[:, None, :], 0.0)
    top = score.topk(min(count, score.shape[-1]), -1)
    slots = slot_of[:, None, :].expand_as(score).gather(-1, top.indices)
    return torch.where(top.values > 0, slots, INVALID)


def boundary2d_index(groups: dict, ctx, estimates=None):
    """One SparseIndex for all 2D-Boundary heads ({HeadPattern: [head ids]}), with the shared
    modality-major order. ``estimates`` (``estimates.Estimates``): the line scores VerticalSlash
    pairs take their columns from."""
    if ctx.modality is None:
        raise ValueError("2d-boundary heads need a modality layout")
    n, bm, bn = ctx.n, ctx.block_m, ctx.block_n
    order, keys, start, end, slot_of = ctx.modality_order
    num_m = -(-n // bm)
    ids = {name: mid for mid, name in MODALITY_NAMES.items()}  # ids 0..3: also their column in start/end
    present_names = list(ctx.present)
    slot_block = torch.arange(num_m, device=order.device) * bm
    # Latest original position among each query block's rows (modality-major keeps them ascending).
    last_slot = torch.clamp(slot_block + bm, max=n) - 1
    per_head = []
    for head, head_ids in groups.items():
        entries = []
        for q_name in present_names:
            qi = ids[q_name]
            rows = (slot_block[None, :] < end[:, qi, None]) & (slot_block[None, :] + bm > start[:, qi, None])
            end_pos = order.long().gather(1, torch.minimum(last_slot[None, :], end[:, qi, None] - 1).clamp(min=0))
            parts = [_pair_sets(pair_pattern(head, q_name, k_name), q_name == k_name, qi, ids[k_name],
                                (keys, start, end), end_pos, len(head_ids), n, bm, bn,
                                _columns_of(estimates, q_name, head_ids, ctx.modality, ids[k_name], slot_of))
                     for k_name in present_names]
            entries.append((rows, _union(parts)))
        per_head.append(entries)
    # Same query modalities for every group: stack the heads of each entry.
    entries = [(per_head[0][i][0], stack_heads([group[i][1] for group in per_head])) for i in range(len(present_names))]
    heads = sum(len(h) for h in groups.values())
    full_order = order[:, None, :].expand(-1, heads, -1).contiguous()
    return build_index(entries, n, n, bm, bn, order=full_order)
