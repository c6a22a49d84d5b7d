"""Turn per-head block sets into a SparseIndex, vectorized over batch, heads and query blocks.

Every pattern is described by a few per-(batch, head) sets that do not depend on the query block:
  * ``relative``: key-block distances d to the diagonal (query block m visits block m*R + d, with
    R = block_m / block_n); slashes, local windows and periodic grid diagonals are such sets;
  * ``absolute``: key-block ids visited by every query block (sinks, grid vertical-line bands);
  * ``columns``: single key slots visited by every query block (vertical lines);
  * ``full_rows``: query blocks that visit every key block (grid horizontal lines).
Sets of several modalities are combined per query block by which modalities its rows hold
(Q-boundary heads) before one sort-based dedup and a cumsum compaction. No Python loop over
blocks or heads, no shape that depends on data: capacities come from the set widths.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from mmcompile.kernels import SparseIndex, triton_runs_on

from .columns_kernel import compact_columns

INVALID = -1  # marks an unused entry in absolute / column sets
FAR = 1 << 28  # relative distance that never lands on a key block: padding of relative sets


@dataclasses.dataclass
class BlockSets:
    """Per (batch, head) sets of one pattern (see module docstring); unused entries padded."""
    relative: torch.Tensor  # int64 [B, H, Kr], FAR = unused
    absolute: torch.Tensor  # int64 [B, H, Ka] (or [B, H, M, Ka]: per query block), INVALID = unused
    columns: torch.Tensor  # int64 [B, H, Kc], INVALID = unused
    full_rows: torch.Tensor | None = None  # bool [B, H, M]


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
    if any(s.absolute.dim() == 4 for s in per_head):  # per-query-block sets: broadcast the others
        num_m = next(s.absolute.shape[2] for s in per_head if s.absolute.dim() == 4)
        per_head = [s if s.absolute.dim() == 4 else dataclasses.replace(
            s, absolute=s.absolute[:, :, None, :].expand(-1, -1, num_m, -1)) for s in per_head]
    return BlockSets(cat("relative", FAR), cat("absolute", INVALID), cat("columns", INVALID), full)


MAX_CANDIDATE_ENTRIES = 1 << 26  # per head chunk: the dedup's [B, H, M, K] int64 temporaries stay ~0.5 GiB each


def build_index(sets_by_modality: list[tuple[torch.Tensor | None, BlockSets]], n_q: int, n_k: int,
                block_m: int, block_n: int, order: torch.Tensor | None = None,
                max_entries: int = MAX_CANDIDATE_ENTRIES) -> SparseIndex:
    """SparseIndex from block sets. Each entry is (rows_of_modality, sets): ``rows_of_modality`` is
    a bool [B, M] saying which query blocks hold rows of that modality (None: all blocks).
    ``order`` (int32 [B, H, N] or None) is shared by queries and keys; without it, blocks after a
    query block's diagonal are dropped (fully in the future). With an order and ``n_q`` < N the
    queries are its first ``n_q`` slots: a launch over a subset of the rows.

    Heads are built in chunks of at most ``max_entries`` candidate entries (batch x heads x query
    blocks x set width): at 1M tokens the sort-based dedup of all 28 heads at once would hold
    several [B, H, M, K] int64 tensors of ~3 GiB each."""
    first = sets_by_modality[0][1]
    batch, heads = first.relative.shape[:2]
    num_m = -(-n_q // block_m)
    width = sum(s.relative.shape[-1] + s.absolute.shape[-1] for _, s in sets_by_modality)
    if any(s.full_rows is not None for _, s in sets_by_modality):
        width = max(width, -(-n_k // block_n))
    per_head = max(batch * num_m * max(width, 1), 1)
    chunk = max(1, max_entries // per_head)
    if chunk >= heads:
        return _build_index(sets_by_modality, n_q, n_k, block_m, block_n, order)
    parts = [_build_index([(rows, _head_slice(sets, h, h + chunk)) for rows, sets in sets_by_modality], n_q, n_k,
                          block_m, block_n, None if order is None else order[:, h:h + chunk])
             for h in range(0, heads, chunk)]
    return _concat_heads(parts)


def _head_slice(sets: BlockSets, lo: int, hi: int) -> BlockSets:
    pick = (lambda t: None if t is None else t[:, lo:hi])
    return BlockSets(pick(sets.relative), pick(sets.absolute), pick(sets.columns), pick(sets.full_rows))


def _concat_heads(parts: list[SparseIndex]) -> SparseIndex:
    """One index from per-head-chunk indexes (lists padded to the widest chunk)."""
    def cat(name, value):
        tensors = [getattr(p, name) for p in parts]
        if tensors[0] is None:
            return None
        if tensors[0].dim() == 4:
            width = max(t.shape[-1] for t in tensors)
            tensors = [pad_last(t, width, value) for t in tensors]
        return torch.cat(tensors, dim=1).contiguous()
    first = parts[0]
    return SparseIndex(cat("block_count", 0), cat("block_offset", 0), cat("column_count", 0),
                       cat("column_index", 0), first.block_m, first.block_n, cat("q_order", 0), cat("k_order", 0))


def _build_index(sets_by_modality, n_q: int, n_k: int, block_m: int, block_n: int, order) -> SparseIndex:
    assert block_m % block_n == 0, "query blocks must be whole key blocks"
    ratio = block_m // block_n
    first = sets_by_modality[0][1]
    batch, heads = first.relative.shape[:2]
    device = first.relative.device
    num_m = -(-n_q // block_m)
    nkb = -(-n_k // block_n)
    m = torch.arange(num_m, device=device)
    diag = (m * ratio)[None, None, :, None]  # first key block of each query block's diagonal

    ids, any_full = [], torch.zeros(batch, heads, num_m, dtype=torch.bool, device=device)
    for rows, sets in sets_by_modality:
        present = torch.ones(batch, num_m, dtype=torch.bool, device=device) if rows is None else rows
        present = present[:, None, :, None]
        rel = diag + sets.relative[:, :, None, :]
        ab = sets.absolute if sets.absolute.dim() == 4 else sets.absolute[:, :, None, :]
        ab = ab.expand(batch, heads, num_m, ab.shape[-1])
        cand = torch.cat([rel, ab], dim=-1)
        ids.append(torch.where(present & (cand >= 0), cand, -1))
        if sets.full_rows is not None:
            any_full |= sets.full_rows & present[..., 0]
    cand = torch.cat(ids, dim=-1) if ids else torch.empty(batch, heads, num_m, 0, device=device, dtype=torch.long)
    if any(sets.full_rows is not None for _, sets in sets_by_modality):  # capacity grows to every block
        every = torch.arange(nkb, device=device).expand(batch, heads, num_m, nkb)
        cand = pad_last(cand, nkb, -1)
        cand = torch.where(any_full[..., None], pad_last(every, cand.shape[-1], -1), cand)
    in_diag = (cand >= diag) & (cand < diag + ratio)
    limit = nkb if order is not None else diag  # no order: a block after the diagonal is all future
    valid = (cand >= 0) & (cand < limit) & ~in_diag
    block_ids, count = _dedup_compact(torch.where(valid, cand, -1))

    columns = [(rows, sets.columns) for rows, sets in sets_by_modality if sets.columns.shape[-1]]
    col_index, col_count = _columns(columns, block_ids, count, m, block_m, block_n, n_k, order is None,
                                    batch, heads, num_m, device)
    q_order = order if order is None or n_q == order.shape[-1] else order[..., :n_q].contiguous()
    return SparseIndex(count.to(torch.int32), (block_ids * block_n).clamp(min=0).to(torch.int32).contiguous(),
                       col_count.to(torch.int32), col_index.to(torch.int32).contiguous(), block_m, block_n,
                       q_order, order)


def _dedup_compact(ids: torch.Tensor):
    """Sorted unique non-negative ids first, per row; returns (ids [.., K] padded -1, count)."""
    if ids.shape[-1] == 0:
        return pad_last(ids, 1, -1), ids.new_zeros(ids.shape[:-1])
    big = torch.iinfo(ids.dtype).max
    srt = torch.where(ids >= 0, ids, big).sort(dim=-1).values
    keep = srt != big
    keep[..., 1:] &= srt[..., 1:] != srt[..., :-1]
    return _compact(srt, keep)


def _compact(values: torch.Tensor, keep: torch.Tensor):
    """Kept values moved to the front (order kept), rest -1; count per row. Cumsum + scatter."""
    width = values.shape[-1]
    pos = torch.where(keep, keep.long().cumsum(-1) - 1, width)
    out = torch.full(values.shape[:-1] + (width + 1,), -1, dtype=values.dtype, device=values.device)
    out.scatter_(-1, pos, torch.where(keep, values, -1))
    return out[..., :width], keep.sum(-1)


def _merge_column_sets(columns, batch, heads, device):
    """Union of the modality column sets per (batch, head), sorted once: (values [B,H,K] with -1
    unused, bits [B,H,K] saying which entries' modality lists each column)."""
    values = torch.cat([c for _, c in columns], dim=-1)
    bits = torch.cat([torch.full_like(c, 1 << i) for i, (_, c) in enumerate(columns)], dim=-1)
    big = torch.iinfo(values.dtype).max
    values, perm = torch.where(values >= 0, values, big).sort(dim=-1)
    bits = bits.gather(-1, perm)
    for _ in range(len(columns) - 1):  # a value listed by several entries: OR their bits into the first
        same = values[..., :-1] == values[..., 1:]
        bits[..., :-1] |= torch.where(same, bits[..., 1:], 0)
    first = torch.ones_like(values, dtype=torch.bool)
    first[..., 1:] = values[..., 1:] != values[..., :-1]
    keep = first & (values != big)
    return torch.where(keep, values, -1), torch.where(keep, bits, 0)


def _columns(columns, block_ids, count, m, block_m, block_n, n_k, causal_slots, batch, heads, num_m, device):
    """Per query block, the columns its rows see that no listed block covers: (ids [B,H,M,K], count).
    Where Triton runs (``kernels.triton_runs_on``) one Triton kernel (``columns_kernel``); elsewhere
    ``_columns_reference``."""
    if not columns:
        z = torch.zeros(batch, heads, num_m, 1, dtype=torch.long, device=device)
        return z, z[..., 0]
    values, bits = _merge_column_sets(columns, batch, heads, device)
    present = torch.zeros(batch, num_m, dtype=torch.long, device=device)
    for i, (rows, _) in enumerate(columns):
        present |= (torch.ones_like(present, dtype=torch.bool) if rows is None else rows).long() << i
    if triton_runs_on(values, has_reference=True):
        return compact_columns(values, bits, present, block_ids, count, n_k, block_m, block_n, causal_slots)
    return _columns_reference(values, bits, present, block_ids, m, block_m, block_n, n_k, causal_slots)


def _columns_reference(values, bits, present, block_ids, m, block_m, block_n, n_k, causal_slots):
    """Plain PyTorch of ``columns_kernel.compact_columns`` (same output)."""
    c = values[:, :, None, :]  # [B, H, 1, K], sorted: broadcast over query blocks
    lo = (m * block_m)[None, None, :, None]
    valid = (c >= 0) & (c < n_k) & ~((c >= lo) & (c < lo + block_m))
    valid &= (bits[:, :, None, :] & present[:, None, :, None]) != 0
    if causal_slots:
        valid &= c < lo
    # Drop columns already inside a listed block (the kernel would count them twice).
    sorted_blocks = torch.where(block_ids >= 0, block_ids, torch.iinfo(block_ids.dtype).max).contiguous()
    cb = torch.where(valid, c // block_n, -1)
    at = torch.searchsorted(sorted_blocks, cb.contiguous()).clamp(max=sorted_blocks.shape[-1] - 1)
    valid &= sorted_blocks.gather(-1, at) != cb
    # Sorted and unique already: compaction keeps the order, no sort per query block.
    return _compact(c.expand_as(valid), valid)
