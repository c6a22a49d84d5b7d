"""Turn per-head block sets into a SparseIndex, vectorized over batch, heads and query blocks.

Every pattern is described by a few per-(batch, head) sets that do not depend on the query block:
  * ``relative``: key-block distances d to the diagonal (query block m visits block m*R + d, with
    R = block_m / block_n); slashes, local windows and periodic grid diagonals are such sets;
  * ``absolute``: key-block ids visited by every query block (sinks);
  * ``span_from`` / ``span_to``: key blocks [from, to) all visited (to: FAR = up to the causal
    limit); dense sets from 0, a grid's vertical-line band from its first block: the index's
    ``span``, never a list as wide as the key blocks (N^2 / (block_m block_n) entries per head).
    Spans of several entries on one query block merge into one (dense spans start at 0, grid
    launches have one entry: they always overlap);
  * ``columns``: single key slots visited by every query block (vertical lines);
  * ``full_rows``: query blocks that visit every key block (grid horizontal lines): a span from 0.
Sets of several modalities are combined per query block by which modalities its rows hold
(Q-boundary heads) before one sort-based dedup and a cumsum compaction; columns become per-block
lists or shared rows (``index_columns``). No Python loop over blocks or data, no shape that depends
on data: capacities come from the set widths. Memory is bounded: the index is written into its
final tensors chunk by chunk of heads and query blocks (``max_entries`` candidates per chunk).
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from mmcompile.kernels import SparseIndex

from . import index_columns

INVALID = -1  # marks an unused entry in absolute / column sets
FAR = 1 << 28  # relative distance that never lands on a key block: padding of relative sets


@dataclasses.dataclass
class BlockSets:
    """Per (batch, head) sets of one pattern (see module docstring); unused entries padded."""
    relative: torch.Tensor  # int64 [B, H, Kr], FAR = unused
    absolute: torch.Tensor  # int64 [B, H, Ka] (or [B, H, M, Ka]: per query block), INVALID = unused
    columns: torch.Tensor  # int64 [B, H, Kc], INVALID = unused
    full_rows: torch.Tensor | None = None  # bool [B, H, M]
    span_from: torch.Tensor | None = None  # int64 [B, H]: first key block of the span, FAR = none
    span_to: torch.Tensor | None = None  # int64 [B, H] (or [B, H, M]: per query block): key block after
    #                                      the span, FAR = the causal limit


def device_list(values, device, dtype=torch.long) -> torch.Tensor:
    """A small host list (head ids, per-head sizes) as a device tensor, cached and never modified.
    ``torch.tensor(list, device="cuda")`` copies synchronously: the host would wait for the GPU
    queue in every layer, and the per-layer path must not sync."""
    return _device_list(tuple(int(v) for v in values), torch.device(device), dtype)


@functools.lru_cache(maxsize=1024)
def _device_list(values: tuple, device: torch.device, dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


def empty_sets(batch, heads, device) -> BlockSets:
    z = torch.empty(batch, heads, 0, dtype=torch.int64, device=device)
    return BlockSets(z, z.clone(), z.clone())


def pad_last(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    if t.shape[-1] >= width:
        return t
    return torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=value)


def stack_heads(per_head: list[BlockSets]) -> BlockSets:
    """Concatenate sets of head groups along the head dim, padding widths to match."""
    if len(per_head) == 1:  # one group: its sets as they are (never modified later)
        return per_head[0]
    def cat(name, value):
        parts = [getattr(s, name) for s in per_head]
        width = max(p.shape[-1] for p in parts)
        return torch.cat([pad_last(p, width, value) for p in parts], dim=1)
    full = None
    shaped = [s.full_rows for s in per_head if s.full_rows is not None]
    if shaped:
        rows = shaped[0]
        full = torch.cat([s.full_rows if s.full_rows is not None else
                          rows.new_zeros(rows.shape[0], s.relative.shape[1], rows.shape[2]) for s in per_head], dim=1)
    def span(name):
        parts = [getattr(s, name) for s in per_head]
        if all(t is None for t in parts):
            return None
        parts = [t if t is not None else torch.full(s.relative.shape[:2], FAR, dtype=torch.long,
                                                    device=s.relative.device) for s, t in zip(per_head, parts)]
        per_block = next((t.shape[2] for t in parts if t.dim() == 3), None)  # a per-query-block span_to
        if per_block is not None:
            parts = [t if t.dim() == 3 else t[..., None].expand(-1, -1, per_block) for t in parts]
        return torch.cat(parts, dim=1)
    span_from, span_to = span("span_from"), span("span_to")
    if any(s.absolute.dim() == 4 for s in per_head):  # per-query-block sets: broadcast the others
        num_m = next(s.absolute.shape[2] for s in per_head if s.absolute.dim() == 4)
        per_head = [s if s.absolute.dim() == 4 else dataclasses.replace(
            s, absolute=s.absolute[:, :, None, :].expand(-1, -1, num_m, -1)) for s in per_head]
    return BlockSets(cat("relative", FAR), cat("absolute", INVALID), cat("columns", INVALID), full, span_from,
                     span_to)


def head_slice(sets: BlockSets, index) -> BlockSets:
    """The sets of some heads: ``index`` a slice, or an int64 tensor of head positions."""
    def pick(t):
        if t is None:
            return None
        return t[:, index] if isinstance(index, slice) else t.index_select(1, index)
    return BlockSets(pick(sets.relative), pick(sets.absolute), pick(sets.columns), pick(sets.full_rows),
                     pick(sets.span_from), pick(sets.span_to))


MAX_CANDIDATE_ENTRIES = 1 << 24  # per chunk (batch x heads x query blocks x set width): temporaries ~64-128 MiB each


def build_index(sets_by_modality: list[tuple[torch.Tensor | None, BlockSets]], n_q: int, n_k: int,
                block_m: int, block_n: int, order: torch.Tensor | None = None,
                max_entries: int = MAX_CANDIDATE_ENTRIES, shared_columns: bool | None = None) -> SparseIndex:
    """SparseIndex from block sets. Each entry is (rows_of_modality, sets): ``rows_of_modality`` is
    a bool [B, M] saying which query blocks hold rows of that modality (None: all blocks).
    ``order`` (int32 [B, H, N] or None) is shared by queries and keys; without it, blocks after a
    query block's diagonal are dropped (fully in the future). With an order and ``n_q`` < N the
    queries are its first ``n_q`` slots: a launch over a subset of the rows.

    The output tensors are allocated once and filled chunk by chunk: heads, then query blocks, at
    most ``max_entries`` candidates (batch x heads x query blocks x set width) per chunk, so the
    sort-based dedup never holds more than a few such int32/int64 tensors (at 1M tokens with 28
    heads all at once they were ~3 GiB each). ``shared_columns`` (default: when per-block column
    lists would pass ``index_columns.COLUMN_LIST_BYTES``) stores columns as shared rows."""
    assert block_m % block_n == 0, "query blocks must be whole key blocks"
    first = sets_by_modality[0][1]
    batch, heads = first.relative.shape[:2]
    device = first.relative.device
    num_m = -(-n_q // block_m)
    width = max(sum(s.relative.shape[-1] + s.absolute.shape[-1] for _, s in sets_by_modality), 1)
    columns = [(rows, s.columns) for rows, s in sets_by_modality if s.columns.shape[-1]]
    col_width = max(sum(c.shape[-1] for _, c in columns), 1)
    if shared_columns is None:
        shared_columns = batch * heads * num_m * col_width * 4 > index_columns.COLUMN_LIST_BYTES
    shared_columns = shared_columns and bool(columns)
    with_span = any(s.span_from is not None or s.full_rows is not None for _, s in sets_by_modality)
    i32 = dict(dtype=torch.int32, device=device)
    out = dict(block_count=torch.zeros(batch, heads, num_m, **i32),
               block_offset=torch.zeros(batch, heads, num_m, width, **i32),
               column_count=torch.zeros(batch, heads, num_m, **i32),
               span=torch.zeros(batch, heads, num_m, 2, **i32) if with_span else None)
    merged = index_columns.merge_column_sets(columns, batch, heads, device) if columns else None
    present = index_columns.present_bits(columns, batch, num_m, device) if columns else None
    if shared_columns:
        out["column_index"] = index_columns.shared_rows(*merged, len(columns), n_k)
        out["column_row"] = present[:, None, :].expand(batch, heads, num_m).to(torch.int32).contiguous()
    else:
        out["column_index"] = torch.full((batch, heads, num_m, col_width), -1 if columns else 0, **i32)
    per_head = batch * num_m * width * (3 if shared_columns else 1)  # shared counts search 2 bounds per block
    head_step = max(1, min(heads, max_entries // per_head))
    m_step = num_m if head_step < heads or per_head <= max_entries else max(1, max_entries * num_m // per_head)
    for h in range(0, heads, head_step):
        hs = slice(h, min(heads, h + head_step))
        chunk_sets = [(rows, head_slice(sets, hs)) for rows, sets in sets_by_modality]
        for m in range(0, num_m, m_step):
            ms = slice(m, min(num_m, m + m_step))
            _fill(out, hs, ms, chunk_sets, merged, present, shared_columns, n_k, block_m, block_n, order is not None)
    q_order = order if order is None or n_q == order.shape[-1] else order[..., :n_q].contiguous()
    return SparseIndex(out["block_count"], out["block_offset"], out["column_count"], out["column_index"], block_m,
                       block_n, q_order, order, out["span"], out.get("column_row"))


def _fill(out, hs: slice, ms: slice, sets_by_modality, merged, present, shared_columns, n_k, block_m, block_n,
          ordered: bool) -> None:
    """Writes heads ``hs`` x query blocks ``ms`` of every output tensor."""
    ratio = block_m // block_n
    first = sets_by_modality[0][1]
    batch, heads = first.relative.shape[:2]
    device = first.relative.device
    nkb = -(-n_k // block_n)
    m = torch.arange(ms.start, ms.stop, device=device, dtype=torch.int32)
    diag = (m * ratio)[None, None, :, None]  # first key block of each query block's diagonal
    shape = (batch, heads, m.numel())
    span_from, span_to = _spans(sets_by_modality, ms, shape, device)
    cand = torch.cat([_candidates(rows, sets, ms, diag) for rows, sets in sets_by_modality], dim=-1)
    # No order: a block at or after the diagonal is the diagonal block or all future, so one bound.
    valid = (cand >= 0) & ((cand < diag) if not ordered else
                           (cand < nkb) & ((cand < diag) | (cand >= diag + ratio)))
    if any(s.span_from is not None or s.full_rows is not None for _, s in sets_by_modality):
        valid &= (cand < span_from[..., None]) | (cand >= span_to[..., None])  # the span visits those
    block_ids, count = _dedup_compact(torch.where(valid, cand, -1))
    del cand, valid  # the column steps below hold their own temporaries
    out["block_count"][:, hs, ms] = count  # (copy_ casts to int32)
    out["block_offset"][:, hs, ms, :block_ids.shape[-1]] = (block_ids * block_n).clamp(min=0)
    # The span in key slots, up to the limit (empty: lo = hi).
    hi = torch.full(shape, n_k, dtype=torch.long, device=device) if ordered else (m.long() * block_m).expand(shape)
    hi = torch.minimum(span_to.long() * block_n, hi)
    span = torch.stack([torch.minimum(span_from.long() * block_n, hi), hi], -1).to(torch.int32)
    if out["span"] is not None:
        out["span"][:, hs, ms] = span
    if merged is None:
        return
    values, bits = (t[:, hs] for t in merged)
    if shared_columns:
        out["column_count"][:, hs, ms] = index_columns.shared_counts(
            out["column_index"][:, hs], present[:, ms], block_ids, count, span, ms.start, block_m, block_n, n_k, ordered)
        return
    index_columns.per_block_columns(values, bits, present[:, ms], block_ids, count.to(torch.int32), span, ms.start,
                                    block_m, block_n, n_k, not ordered, out["column_index"][:, hs, ms],
                                    out["column_count"][:, hs, ms])


def _candidates(rows, sets: BlockSets, ms: slice, diag: torch.Tensor) -> torch.Tensor:
    """int32 [B, H, M, Kr + Ka]: key blocks the relative and absolute sets name for query blocks
    ``ms`` (``diag``: their diagonals' first key blocks), -1 where the blocks hold no rows of the
    entry's modality (``rows``; None: all). Negative ids are dropped by the caller anyway."""
    batch, heads = sets.relative.shape[:2]
    rel = diag + sets.relative[:, :, None, :].to(torch.int32)
    if sets.absolute.shape[-1]:  # (most patterns have none: no cast and cat of an empty set)
        ab = sets.absolute[:, :, ms] if sets.absolute.dim() == 4 else sets.absolute[:, :, None, :]
        ab = ab.to(torch.int32).expand(batch, heads, diag.shape[2], ab.shape[-1])
        rel = torch.cat([rel, ab], dim=-1)
    return rel if rows is None else torch.where(rows[:, None, ms, None], rel, -1)


def _spans(sets_by_modality, ms: slice, shape, device):
    """int32 [B, H, M] each: the key blocks [from, to) the entries' spans and full rows visit
    whole in query blocks ``ms`` (an entry's only where the blocks hold its modality's rows);
    from FAR, to 0 where none."""
    span_from = torch.full(shape, FAR, dtype=torch.int32, device=device)
    span_to = torch.zeros(shape, dtype=torch.int32, device=device)
    for rows, sets in sets_by_modality:
        if sets.span_from is None and sets.full_rows is None:
            continue
        here = torch.ones(shape[0], shape[2], dtype=torch.bool, device=device) if rows is None else rows[:, ms]
        here = here[:, None, :]
        if sets.span_from is not None:
            to = sets.span_to if sets.span_to is not None else torch.full_like(sets.span_from, FAR)
            to = to[..., ms] if to.dim() == 3 else to[..., None]
            here_span = here & (sets.span_from < FAR)[..., None]
            span_from = torch.where(here_span, torch.minimum(span_from, sets.span_from[..., None].to(torch.int32)),
                                    span_from)
            span_to = torch.where(here_span, torch.maximum(span_to, to.to(torch.int32)), span_to)
        if sets.full_rows is not None:
            full = sets.full_rows[:, :, ms] & here
            span_from, span_to = torch.where(full, 0, span_from), torch.where(full, FAR, span_to)
    return span_from, span_to


def _dedup_compact(ids: torch.Tensor):
    """Sorted unique non-negative ids first, per row; returns (ids [.., K] padded -1, count)."""
    if ids.shape[-1] == 0:
        return pad_last(ids, 1, -1), ids.new_zeros(ids.shape[:-1])
    big = torch.iinfo(ids.dtype).max
    srt = torch.where(ids >= 0, ids, big).sort(dim=-1).values
    keep = srt != big
    keep[..., 1:] &= srt[..., 1:] != srt[..., :-1]
    return index_columns.compact(srt, keep)
