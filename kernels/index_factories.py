"""Small SparseIndex factories: full causal, A-shape, random (with spans and shared column rows), and a
permuted grid.

They exist for kernel tests, the kernel benchmark and the demo: static shapes with known density.
The online, input-driven builders of the MMInference patterns live in ``mmcompile.patterns``.
All are vectorized (no Python loop over blocks or heads).
"""

from __future__ import annotations

import torch

from .sparse_index import SparseIndex, shared_columns


def _diag_bounds(num_blocks: int, block_m: int, n_k: int, shift: int, device):
    m = torch.arange(num_blocks, device=device)
    return (m * block_m + shift).clamp(0, n_k), ((m + 1) * block_m + shift).clamp(0, n_k)


def blocks_from_selection(selected: torch.Tensor, block_n: int, capacity: int | None = None):
    """Aligned key blocks from a boolean [B, H, M, num_key_blocks] selection.

    Returns (block_count int32 [B,H,M], block_offset int32 [B,H,M,capacity]); capacity defaults to
    the largest count (a host sync: factories run once, not per layer).
    """
    nkb = selected.shape[-1]
    ids = torch.arange(nkb, device=selected.device).expand_as(selected)
    order = torch.where(selected, ids, nkb).sort(dim=-1).values  # selected ids first, ascending
    count = selected.sum(-1).to(torch.int32)
    if capacity is None:
        capacity = max(int(count.max()) if count.numel() else 0, 1)
    order = order[..., :capacity]
    offsets = torch.where(order < nkb, order * block_n, 0).to(torch.int32)
    return count.clamp(max=capacity), offsets.contiguous()


def _no_columns(shape, device):
    return (torch.zeros(shape, dtype=torch.int32, device=device),
            torch.zeros(*shape, 1, dtype=torch.int32, device=device))


def _key_block_grid(batch, heads, n_q, n_k, block_m, block_n, shift, device):
    num_blocks = -(-n_q // block_m)
    nkb = -(-n_k // block_n)
    lo, _ = _diag_bounds(num_blocks, block_m, n_k, shift, device)
    starts = torch.arange(nkb, device=device) * block_n  # [nkb]
    before_diag = starts[None, :] + block_n <= lo[:, None]  # [M, nkb]: blocks wholly before the diagonal
    return num_blocks, starts, lo, before_diag.expand(batch, heads, num_blocks, nkb)


def causal_index(batch, heads, n_q, n_k, block_m=64, block_n=64, q_offset=0, k_offset=0, device=None):
    """Every causal key block: the sparse path at full density (equals dense attention).

    Needs block_m % block_n == 0 and block_n | (q_offset - k_offset) so that the listed blocks
    tile exactly up to the diagonal block.
    """
    shift = q_offset - k_offset
    assert block_m % block_n == 0 and shift % block_n == 0, "diagonal must sit on the key-block grid"
    _, _, _, before = _key_block_grid(batch, heads, n_q, n_k, block_m, block_n, shift, device)
    count, offset = blocks_from_selection(before, block_n)
    ccount, cindex = _no_columns(count.shape, device)
    return SparseIndex(count, offset, ccount, cindex, block_m, block_n)


def a_shape_index(batch, heads, n, sink, local, block_m=64, block_n=64, device=None):
    """A-shape: the first ``sink`` keys plus a ``local`` window before the diagonal block."""
    _, starts, lo, before = _key_block_grid(batch, heads, n, n, block_m, block_n, 0, device)
    ends = starts + block_n
    near = ends[None, :] > (lo[:, None] - local)
    sel = before & ((starts[None, :] < sink) | near)
    count, offset = blocks_from_selection(sel, block_n)
    ccount, cindex = _no_columns(count.shape, device)
    return SparseIndex(count, offset, ccount, cindex, block_m, block_n)


def random_index(batch, heads, n_q, n_k, density, max_columns=0, block_m=64, block_n=64,
                 unaligned=False, q_order=None, k_order=None, generator=None, device=None):
    """Random key blocks (each earlier block kept with probability ``density``), optionally shifted
    off the block grid, plus up to ``max_columns`` random distinct columns outside the blocks."""
    num_blocks, starts, lo, before = _key_block_grid(batch, heads, n_q, n_k, block_m, block_n, 0, device)
    keep = torch.rand(before.shape, generator=generator, device=device) < density
    count, offset = blocks_from_selection(before & keep, block_n)
    if unaligned:  # one shift per row keeps the row's blocks disjoint
        shift = torch.randint(0, block_n, (batch, heads, num_blocks, 1), generator=generator, device=device)
        offset = torch.where(torch.arange(offset.shape[-1], device=device) < count[..., None],
                             (offset + shift).clamp(max=n_k - 1), offset).to(torch.int32)
    if max_columns == 0:
        ccount, cindex = _no_columns(count.shape, device)
    else:
        covered = torch.zeros(batch, heads, num_blocks, n_k + block_n, dtype=torch.bool, device=device)
        spans = offset.long()[..., None] + torch.arange(block_n, device=device)
        listed = torch.arange(offset.shape[-1], device=device) < count[..., None]
        spans = torch.where(listed[..., None], spans, n_k + block_n - 1).flatten(3)
        covered.scatter_(3, spans, True)
        covered = covered[..., :n_k]
        key_slots = torch.arange(n_k, device=device)
        lo_all, hi_all = _diag_bounds(num_blocks, block_m, n_k, 0, device)
        covered |= (key_slots >= lo_all[:, None]) & (key_slots < hi_all[:, None])
        score = torch.rand(covered.shape, generator=generator, device=device).masked_fill(covered, -1.0)
        k_cols = min(max_columns, n_k)
        top, cols = score.topk(k_cols, dim=-1)
        ccount = (top >= 0).sum(-1).to(torch.int32)
        cindex = cols.to(torch.int32).contiguous()
    return SparseIndex(count, offset, ccount, cindex, block_m, block_n, q_order, k_order)


def random_span_index(batch, heads, n_q, n_k, density, columns=0, rows=3, block_m=64, block_n=64,
                      q_order=None, k_order=None, generator=None, device=None):
    """Random key blocks (as ``random_index``), a span per query block (a random stretch of key
    slots, start and end off the block grid; the blocks it touches leave the list) and, with
    ``columns`` > 0, ``rows`` shared column rows of up to ``columns`` random keys, each query block
    reading a random one. Row entries may fall inside the block's diagonal, blocks or span (the
    kernel skips those); ``column_count`` counts the others (a host sync: factories run once)."""
    num_blocks, starts, lo, before = _key_block_grid(batch, heads, n_q, n_k, block_m, block_n, 0, device)
    shape = (batch, heads, num_blocks)
    ends = torch.sort(torch.randint(0, n_k + 1, shape + (2,), generator=generator, device=device), -1).values
    span = ends.to(torch.int32).contiguous()
    touched = (starts < span[..., 1:].long()) & (starts + block_n > span[..., :1].long())
    keep = torch.rand(before.shape, generator=generator, device=device) < density
    count, offset = blocks_from_selection(before & keep & ~touched, block_n)
    if columns == 0:
        ccount, cindex = _no_columns(count.shape, device)
        return SparseIndex(count, offset, ccount, cindex, block_m, block_n, q_order, k_order, span)
    picks = torch.rand(batch, heads, rows, n_k, generator=generator, device=device).topk(min(columns, n_k), -1).indices
    length = torch.randint(0, picks.shape[-1] + 1, (batch, heads, rows, 1), generator=generator, device=device)
    entries = torch.where(torch.arange(picks.shape[-1], device=device) < length, picks, n_k)
    cindex = entries.sort(-1).values.to(torch.int32).contiguous()
    column_row = torch.randint(0, rows, shape, generator=generator, device=device).to(torch.int32)
    index = SparseIndex(count, offset, torch.zeros_like(count), cindex, block_m, block_n, q_order, k_order,
                        span, column_row)
    visited = shared_columns(index, n_k)[1].sum(-1).to(torch.int32)
    return SparseIndex(count, offset, visited, cindex, block_m, block_n, q_order, k_order, span, column_row)


def grid_order(n: int, stride, phase, device=None) -> torch.Tensor:
    """Residue-major order of 0..n-1 modulo ``stride`` with the ``phase`` class last: grid lines
    (tokens at ``phase + j * stride``) become one contiguous band of slots, frames stay in order.
    ``stride``/``phase`` are ints or same-shape int tensors (one order per entry, e.g. [B, H]);
    returns int32 positions per slot, shape ``stride.shape + (n,)``."""
    stride, phase = torch.as_tensor(stride, device=device), torch.as_tensor(phase, device=device)
    pos = torch.arange(n, device=stride.device)
    residue = (pos - phase[..., None]) % stride[..., None]
    residue = torch.where(residue == 0, stride[..., None], residue)  # phase class sorts last
    return (residue * n + pos).argsort(dim=-1).to(torch.int32)


def grid_index(batch, heads, n, stride, phase, local_blocks, block_m=64, block_n=64, device=None):
    """A video grid pattern executed through the grid permutation (shared by queries and keys).

    In permuted slots every query block visits its diagonal block, the ``local_blocks`` previous key
    blocks (the same patch in earlier frames: periodic slashes) and the vertical-line band (the
    phase class, last in the order); query blocks inside that band (horizontal lines) visit all keys.
    """
    order = grid_order(n, stride, phase, device)
    band_start = n - len(range(phase % stride, n, stride))
    num_blocks, starts, lo, before = _key_block_grid(batch, heads, n, n, block_m, block_n, 0, device)
    ends = starts + block_n
    recent = ends[None, :] > lo[:, None] - local_blocks * block_n
    vline = ends[None, :] > band_start
    hline = (torch.arange(num_blocks, device=device) + 1) * block_m > band_start
    # Slots after the diagonal can hold earlier positions (the order is not monotone): band and
    # h-line blocks are listed whole, the kernel's causal test in original positions trims them.
    sel = (before & recent) | vline.expand_as(before) | hline[:, None].expand_as(before)
    count, offset = blocks_from_selection(sel, block_n)
    ccount, cindex = _no_columns(count.shape, device)
    order = order.expand(batch, heads, n).contiguous()
    return SparseIndex(count, offset, ccount, cindex, block_m, block_n, order, order)
