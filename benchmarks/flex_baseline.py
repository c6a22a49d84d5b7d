"""FlexAttention (compiled) on exactly the element mask a SparseIndex computes, for comparison.

Flex has no query/key permutation, so a permuted index is given to it as the same set of
(query, key) pairs in original positions ("original layout"), or, with ``permuted=True``, on
tensors physically permuted into slot order (the copy is not timed) so that its block sparsity
matches ours ("permuted layout").

``flex_for_layer`` does the same for a whole layer (all query heads, every launch group of
``build_layer_indexes``) in one BlockMask. Flex has no column gather, so the keys each query block
visits (diagonal block, listed blocks, listed columns: all in key slots) are a bitset of int32 words
[H, M, ceil(N / 32)] that the mask_mod tests with a shift after mapping both positions to slots;
a bool table [H, M, N] would be 3.7 GB at 128K and 28 heads, the bitset is 470 MB. Dense heads get
all bits set, so they are plain causal. Flex's own block size (128) is kept: it need not match ours.
"""

from __future__ import annotations

import time

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from mmcompile.kernels import SparseIndex, block_columns, span_stretches

_flex = torch.compile(flex_attention, dynamic=False)


def visited_block_table(index: SparseIndex, n_q: int, n_k: int) -> torch.Tensor:
    """[H, M, num_key_blocks] bool, batch 0: key blocks (aligned) the kernel visits per query block.
    Needs aligned block offsets and no columns (true of the benchmark's factories)."""
    bm, bn = index.block_m, index.block_n
    heads, num_blocks = index.block_count.shape[1:]
    nkb = -(-n_k // bn)
    table = torch.zeros(heads, num_blocks, nkb + 1, dtype=torch.bool, device=index.block_count.device)
    listed = torch.arange(index.block_offset.shape[-1], device=table.device) < index.block_count[0, ..., None]
    ids = torch.where(listed, index.block_offset[0].long() // bn, nkb)
    table.scatter_(2, ids, True)
    m = torch.arange(num_blocks, device=table.device)
    j = torch.arange(nkb, device=table.device)
    diag = (j[None, :] * bn < ((m + 1) * bm)[:, None]) & ((j[None, :] + 1) * bn > (m * bm)[:, None])
    table = table[..., :nkb] | diag
    if index.span is not None:  # the key blocks the span's stretches touch
        for lo, hi in _stretches(index, n_k):
            table |= (j * bn + bn > lo[..., None]) & (j * bn < hi[..., None])
    return table


def _stretches(index: SparseIndex, n_k: int):
    """Batch 0's span stretches: [(lo, hi) int64 [H, M]] x 2 (``kernels.span_stretches``)."""
    return [(lo[0], hi[0]) for lo, hi in span_stretches(index.span, index.block_m, n_k)]


def _slots_of(order: torch.Tensor | None, heads: int, n: int, device) -> torch.Tensor:
    """Inverse order [H, N]: the slot of each original position."""
    if order is None:
        return torch.arange(n, device=device).expand(heads, n).contiguous()
    return order[0].long().argsort(dim=-1)


def flex_for_index(q, k, v, index: SparseIndex, permuted: bool = False):
    """Returns (call, mask_build_ms): ``call()`` runs compiled flex on the index's element mask."""
    heads, n = q.shape[1], q.shape[2]
    table = visited_block_table(index, n, k.shape[2])
    bm, bn = index.block_m, index.block_n
    q_pos = index.q_order[0].long() if index.q_order is not None else None
    k_pos = index.k_order[0].long() if index.k_order is not None else None
    if permuted and q_pos is not None:
        group = heads // k.shape[1]
        # Physically permuted copies (one per query head for K/V), outside the timed call.
        q = torch.gather(q, 2, q_pos[None, :, :, None].expand_as(q)).contiguous()
        kk = k.repeat_interleave(group, dim=1)
        vv = v.repeat_interleave(group, dim=1)
        k = torch.gather(kk, 2, k_pos[None, :, :, None].expand_as(kk)).contiguous()
        v = torch.gather(vv, 2, k_pos[None, :, :, None].expand_as(vv)).contiguous()

        def mask_mod(b, h, qi, ki):
            return table[h, qi // bm, ki // bn] & (k_pos[h, ki] <= q_pos[h, qi])
    else:
        q_slot = _slots_of(index.q_order, heads, n, q.device)
        k_slot = _slots_of(index.k_order, heads, k.shape[2], q.device)

        def mask_mod(b, h, qi, ki):
            return table[h, q_slot[h, qi] // bm, k_slot[h, ki] // bn] & (ki <= qi)

    for _ in range(2):  # the second build is timed: the first one compiles the mask builder
        torch.cuda.synchronize()
        start = time.perf_counter()
        block_mask = create_block_mask(mask_mod, 1, heads, n, k.shape[2], device=q.device, _compile=True)
        torch.cuda.synchronize()
        build_ms = (time.perf_counter() - start) * 1e3
    gqa = q.shape[1] != k.shape[1]
    return (lambda: _flex(q, k, v, block_mask=block_mask, enable_gqa=gqa)), build_ms


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _visited_bits(index: SparseIndex, n_k: int) -> torch.Tensor:
    """int32 [H, M, ceil(n_k / 32)] (batch 0): bit ``s % 32`` of word ``s // 32`` is set when query
    block m visits key slot s (the diagonal block, the listed blocks, the listed columns), as
    ``kernels.reference.index_to_mask`` reads the contract (q_offset = k_offset = 0)."""
    heads, num_blocks = index.block_count.shape[1:]
    device = index.block_count.device
    bm, bn = index.block_m, index.block_n
    words = -(-n_k // 32)
    m = torch.arange(num_blocks, device=device)[:, None]
    key = torch.arange(words * 32, device=device)
    diag = (key >= m * bm) & (key < ((m + 1) * bm).clamp(max=n_k))  # [M, W * 32]
    shifts = torch.arange(8, dtype=torch.uint8, device=device)
    bits = torch.empty(heads, num_blocks, words, dtype=torch.int32, device=device)
    for h in range(heads):  # one head at a time: the temporaries are [M, N] (0.5 GB of int32 at 128K)
        offsets = index.block_offset[0, h].long()
        listed = torch.arange(offsets.shape[-1], device=device) < index.block_count[0, h, :, None]
        listed &= (offsets >= 0) & (offsets < n_k)
        # Listed blocks as +1 at the first key slot and -1 after the last one, then a running sum.
        edges = torch.zeros(num_blocks, words * 32 + 1, dtype=torch.int32, device=device)
        edges.scatter_add_(1, torch.where(listed, offsets, n_k), listed.int())
        edges.scatter_add_(1, torch.where(listed, (offsets + bn).clamp(max=n_k), n_k), -listed.int())
        if index.span is not None:  # its stretches too
            for lo, hi in ((lo[h], hi[h]) for lo, hi in _stretches(index, n_k)):
                edges.scatter_add_(1, torch.where(hi > lo, lo, n_k)[:, None], torch.ones_like(edges[:, :1]))
                edges.scatter_add_(1, torch.where(hi > lo, hi, n_k)[:, None], -torch.ones_like(edges[:, :1]))
        visit = edges.cumsum(1, dtype=torch.int32) > 0
        del edges
        cols, listed = block_columns(index, 0, h)
        listed &= (cols >= 0) & (cols < n_k)
        visit.scatter_(1, torch.where(listed, cols, words * 32), True)  # unlisted: the extra column
        visit = visit[:, :words * 32] | diag
        visit[:, n_k:] = False
        # Pack 8 slots per byte; four little-endian bytes read as one int32 put slot s at bit s % 32.
        packed = (visit.view(num_blocks, words * 4, 8).to(torch.uint8) << shifts).sum(-1, dtype=torch.int32)
        bits[h] = packed.to(torch.uint8).view(torch.int32)
    return bits


def layer_mask_mod(indexes, n: int, heads: int, device):
    """The mask_mod of a whole layer: ``indexes`` as ``build_layer_indexes`` returns them
    ([(query head ids, SparseIndex or None = dense)]), covering all ``heads`` query heads once."""
    sparse = [index for _, index in indexes if index is not None]
    block_ms = {index.block_m for index in sparse}
    if len(block_ms) > 1:
        raise ValueError(f"launch groups use different block_m {sorted(block_ms)}: one mask_mod needs one")
    bm = block_ms.pop() if block_ms else 128
    covered = sorted(h for ids, _ in indexes for h in ids)
    if covered != list(range(heads)):
        raise ValueError(f"indexes cover query heads {covered}, expected each of 0..{heads - 1} once")
    num_blocks, words = -(-n // bm), -(-n // 32)
    bits = torch.full((heads, num_blocks, words), -1, dtype=torch.int32, device=device)  # dense: all
    q_slot = torch.arange(n, dtype=torch.int32, device=device).repeat(heads, 1)
    k_slot = q_slot.clone()
    for head_ids, index in indexes:
        if index is None:
            continue
        ids = torch.tensor(head_ids, device=device)
        bits[ids] = _visited_bits(index, n)
        q_slot[ids] = _slots_of(index.q_order, len(head_ids), n, device).int()
        k_slot[ids] = _slots_of(index.k_order, len(head_ids), n, device).int()

    def mask_mod(b, h, qi, ki):
        ks = k_slot[h, ki]
        word = bits[h, q_slot[h, qi] // bm, ks >> 5]
        return (((word >> (ks & 31)) & 1) == 1) & (ki <= qi)

    return mask_mod


def flex_block_density(block_mask, n: int) -> float:
    """Share of the causal blocks (at Flex's block size) that Flex visits, full and partial."""
    bq, bk = block_mask.BLOCK_SIZE
    visited = block_mask.kv_num_blocks.sum()
    if block_mask.full_kv_num_blocks is not None:
        visited = visited + block_mask.full_kv_num_blocks.sum()
    qb = torch.arange(-(-n // bq))
    causal = (((qb + 1) * bq).clamp(max=n) - 1) // bk + 1  # key blocks up to each block's last row
    heads = block_mask.kv_num_blocks.shape[1]
    return visited.item() / (heads * causal.sum().item())


def flex_for_layer(q, k, v, indexes, n: int):
    """Returns (call, mask_build_ms, flex_density): ``call()`` runs compiled flex on exactly the
    element mask our op computes for every query head of the layer. The mask is built twice and
    the second build timed (the first compiles the builder)."""
    heads = q.shape[1]
    if not q.shape[2] == k.shape[2] == n:
        raise ValueError(f"flex_for_layer needs n_q = n_k = n, got {q.shape[2]}, {k.shape[2]}, {n}")
    mask_mod = layer_mask_mod(indexes, n, heads, q.device)
    for _ in range(2):
        block_mask = None  # free the first mask before the timed build
        _sync(q.device)
        start = time.perf_counter()
        block_mask = create_block_mask(mask_mod, 1, heads, n, n, device=q.device, _compile=True)
        _sync(q.device)
        build_ms = (time.perf_counter() - start) * 1e3
    gqa = q.shape[1] != k.shape[1]
    return ((lambda: _flex(q, k, v, block_mask=block_mask, enable_gqa=gqa)), build_ms,
            flex_block_density(block_mask, n))


def flex_causal(q, k, v):
    n = q.shape[2]
    block_mask = create_block_mask(lambda b, h, qi, ki: ki <= qi, None, None, n, n, device=q.device,
                                   _compile=True)
    return lambda: _flex(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])
