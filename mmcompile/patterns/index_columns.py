"""Key columns of a SparseIndex from per-(batch, head) column sets, in one of two forms.

* Per query block lists (``per_block_columns``): each block keeps the columns of its head's sorted
  set that its rows may see (their modality lists the column; causal, or outside the diagonal
  block with an order) and that no listed key block or span already covers, compacted in order
  (one Triton kernel where Triton runs: ``columns_kernel``). Exact and the kernel's fastest form,
  but int32 [B, H, M, K]: 28 heads x 8192 query blocks x 16384 columns are 15 GB at 1M tokens.
* Shared rows (``shared_rows``, ``shared_counts``): per (batch, head) one sorted row per
  combination of the column sets (the union of the sets whose modality a query block's rows
  hold), read by every query block with that combination (``SparseIndex.column_row``). The
  attention kernel skips the entries that the block's diagonal, listed blocks or span visit.
  int32 [B, H, 2^E, K] for E sets, plus an exact count per block (the density) by binary search.

``build_index`` keeps per-block lists while those of a launch stay under ``COLUMN_LIST_BYTES``.
"""

from __future__ import annotations

import torch

from mmcompile.kernels import triton_runs_on

from .columns_kernel import compact_columns

COLUMN_LIST_BYTES = 1 << 30  # per-block column lists of one launch up to this size; shared rows beyond
REFERENCE_ENTRIES = 1 << 22  # query blocks x columns per step of the PyTorch reference (int64 temporaries)


def merge_column_sets(columns, batch, heads, device):
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


def present_bits(columns, batch, num_m, device) -> torch.Tensor:
    """int64 [B, M]: bit i set where query block m holds rows of the i-th column entry's modality."""
    present = torch.zeros(batch, num_m, dtype=torch.long, device=device)
    for i, (rows, _) in enumerate(columns):
        present |= (1 << i) if rows is None else rows.long() << i
    return present


def per_block_columns(values, bits, present, block_ids, count, span, first_block: int, block_m, block_n,
                      n_k, causal_slots, out: torch.Tensor, out_count: torch.Tensor) -> None:
    """Query blocks ``first_block`` .. + M of ``present`` [B, M] / ``block_ids`` [B, H, M, KB] (sorted,
    -1 padded) / ``span`` [B, H, M, 2] (key slots): writes their columns (padded -1) into ``out``
    int32 [B, H, M, K] and their counts into ``out_count`` int32 [B, H, M] (views of the index)."""
    if triton_runs_on(values, has_reference=True):  # the lists in place, the counts (small) copied
        got = compact_columns(values, bits, present, block_ids, count, span, first_block, n_k, block_m, block_n,
                              causal_slots, out, torch.empty_like(count, dtype=torch.int32))[1]
        out_count.copy_(got)
        return
    num_m = present.shape[1]
    step = max(1, REFERENCE_ENTRIES // max(1, values.shape[0] * values.shape[1] * values.shape[-1]))
    for lo in range(0, num_m, step):  # the reference's int64 temporaries, a few query blocks at a time
        ids, got = per_block_reference(values, bits, present[:, lo:lo + step], block_ids[:, :, lo:lo + step],
                                       span[:, :, lo:lo + step], first_block + lo, block_m, block_n, n_k,
                                       causal_slots)
        out[:, :, lo:lo + step] = ids
        out_count[:, :, lo:lo + step] = got


def per_block_reference(values, bits, present, block_ids, span, first_block, block_m, block_n, n_k,
                        causal_slots):
    """Plain PyTorch of ``columns_kernel.compact_columns`` (same output)."""
    c = values[:, :, None, :]  # [B, H, 1, K], sorted: broadcast over query blocks
    m = torch.arange(first_block, first_block + present.shape[1], device=values.device)
    lo = (m * block_m)[None, None, :, None]
    valid = (c >= 0) & (c < n_k) & ~((c >= lo) & (c < lo + block_m))
    valid &= (bits[:, :, None, :] & present[:, None, :, None]) != 0
    if causal_slots:
        valid &= c < lo
    # Drop columns already inside a listed block or the span (the kernel would count them twice).
    sorted_blocks = torch.where(block_ids >= 0, block_ids, torch.iinfo(block_ids.dtype).max).contiguous()
    valid &= ~((c >= span[..., :1]) & (c < span[..., 1:]))
    cb = torch.where(valid, c // block_n, -1)
    at = torch.searchsorted(sorted_blocks, cb.contiguous()).clamp(max=sorted_blocks.shape[-1] - 1)
    valid &= sorted_blocks.gather(-1, at) != cb
    # Sorted and unique already: compaction keeps the order, no sort per query block.
    return compact(c.expand_as(valid), valid)


def compact(values: torch.Tensor, keep: torch.Tensor):
    """Kept values moved to the front (order kept), rest -1; count per row. Cumsum + scatter."""
    width = values.shape[-1]
    pos = torch.where(keep, keep.long().cumsum(-1) - 1, width)
    out = torch.full(values.shape[:-1] + (width + 1,), -1, dtype=values.dtype, device=values.device)
    out.scatter_(-1, pos, torch.where(keep, values, -1))
    return out[..., :width], keep.sum(-1)


def shared_rows(values, bits, entries: int, n_k: int) -> torch.Tensor:
    """int32 [B, H, 2^entries, K]: row r holds, ascending, the columns of the sets whose bit is in r
    (``merge_column_sets``), padded with ``n_k``."""
    combos = torch.arange(1 << entries, device=values.device)
    member = ((bits[:, :, None, :] & combos[:, None]) != 0) & (values >= 0)[:, :, None, :] & \
        (values < n_k)[:, :, None, :]
    return torch.where(member, values[:, :, None, :], n_k).sort(-1).values.to(torch.int32)


def shared_counts(rows, present, block_ids, count, span, first_block: int, block_m, block_n, n_k,
                  ordered: bool) -> torch.Tensor:
    """int32 [B, H, M]: entries of each query block's shared row (row ``present``, [B, M]) that the
    kernel visits: inside [0, n_k), outside the diagonal block, its listed blocks (``block_ids``
    [B, H, M, KB], sorted) and span (slots [B, H, M, 2]), before the diagonal unless ``ordered``.
    These sets are disjoint, so the count is a sum of range counts, each two binary searches in
    the row: O(M (KB + 8) log K) time and memory, never M x K."""
    batch, heads, num_m = count.shape
    stride = n_k + 1  # rows (entries <= n_k) laid end to end stay ascending, each in its own range
    seq = (rows.long() + torch.arange(rows.shape[2], device=rows.device)[:, None] * stride).flatten(2).contiguous()
    m = torch.arange(first_block, first_block + num_m, device=rows.device)
    lo, hi = (m * block_m).clamp(max=n_k), ((m + 1) * block_m).clamp(max=n_k)
    lo, hi = lo.expand(batch, heads, -1), hi.expand(batch, heads, -1)
    limit = torch.full_like(lo, n_k) if ordered else lo
    span_lo, span_hi = span[..., 0].long(), span[..., 1].long()
    pieces = [(torch.zeros_like(lo), limit), (span_lo, torch.minimum(span_hi, lo)), (torch.maximum(span_lo, hi), span_hi)]
    if ordered:
        pieces.append((lo, hi))  # the diagonal block
    starts = torch.stack([a for a, _ in pieces], -1)
    ends = torch.maximum(torch.stack([b for _, b in pieces], -1), starts)
    sign = torch.full((len(pieces),), -1, dtype=torch.long, device=rows.device)  # no host list: no copy, no sync
    sign[0] = 1  # the visible keys; the rest are taken out
    base = present[:, None, :, None].expand(batch, heads, num_m, 1) * stride

    def below(bounds):  # entries of each block's row below each bound ([B, H, M, X], in [0, n_k])
        return torch.searchsorted(seq, (bounds.clamp(0, n_k) + base).flatten(2)).view(bounds.shape)

    total = ((below(ends) - below(starts)) * sign).sum(-1)
    listed = torch.arange(block_ids.shape[-1], device=rows.device) < count[..., None]
    block_lo = torch.where(listed, block_ids.long() * block_n, 0)
    total -= below(block_lo + torch.where(listed, block_n, 0)).sum(-1)
    total += below(block_lo).sum(-1)
    return total.to(torch.int32)
