"""FlexAttention (compiled) on exactly the element mask a SparseIndex computes, for comparison.

Flex has no query/key permutation, so a permuted index is given to it as the same set of
(query, key) pairs in original positions ("original layout"), or, with ``permuted=True``, on
tensors physically permuted into slot order (the copy is not timed) so that its block sparsity
matches ours ("permuted layout").
"""

from __future__ import annotations

import time

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from mmcompile.kernels import SparseIndex

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
    return table[..., :nkb] | diag


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


def flex_causal(q, k, v):
    n = q.shape[2]
    block_mask = create_block_mask(lambda b, h, qi, ki: ki <= qi, None, None, n, n, device=q.device,
                                   _compile=True)
    return lambda: _flex(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])
