"""Plain-PyTorch reference of the SparseIndex attention contract (``sparse_index.py``).

It builds the dense boolean mask [B, Hq, Nq, Nk] (original positions on both axes) from the index
and runs masked softmax attention in float64 (float32 on devices without float64 matmuls). It is
O(N^2) in memory: for tests, debugging and the CPU fallback of short inputs, never for long ones.
"""

from __future__ import annotations

import math

import torch

from .sparse_index import SparseIndex, check_index, check_inputs, shared_columns, span_stretches


def _slot_positions(order: torch.Tensor | None, batch: int, heads: int, n: int, device) -> torch.Tensor:
    if order is not None:
        return order.long()
    return torch.arange(n, device=device).expand(batch, heads, n)


def index_to_mask(index: SparseIndex, n_q: int, n_k: int, q_offset: int = 0, k_offset: int = 0,
                  check_distinct: bool = True) -> torch.Tensor:
    """Dense mask [B, Hq, Nq, Nk] in original positions: True where the kernel computes the pair.

    Raises ValueError when a key is listed twice for one query block (the kernel would count it
    twice), unless ``check_distinct`` is False.
    """
    batch, heads, num_blocks = index.block_count.shape
    device = index.block_count.device
    bm, bn = index.block_m, index.block_n
    # visits[b, h, m, key_slot]: how often query block m lists key slot key_slot.
    visits = torch.zeros(batch, heads, num_blocks, n_k + 1, dtype=torch.int32, device=device)
    trash = n_k  # out-of-range entries are ignored by the kernel: send them to a dropped column
    spans = index.block_offset.long()[..., None] + torch.arange(bn, device=device)  # [B,H,M,cap,bn]
    listed = torch.arange(index.block_offset.shape[-1], device=device) < index.block_count[..., None]
    spans = torch.where(listed[..., None] & (spans >= 0) & (spans < n_k), spans, trash)
    visits.scatter_add_(3, spans.flatten(3), torch.ones_like(spans.flatten(3), dtype=torch.int32))
    if index.span is not None:  # +1 from each stretch's start, -1 from its end, summed along the keys
        edges = torch.zeros_like(visits)
        for lo, hi in span_stretches(index.span, bm, n_k, q_offset - k_offset):
            edges.scatter_add_(3, torch.where(hi > lo, lo, trash)[..., None], torch.ones_like(edges[..., :1]))
            edges.scatter_add_(3, torch.where(hi > lo, hi, trash)[..., None], -torch.ones_like(edges[..., :1]))
        visits += edges.cumsum(3, dtype=torch.int32)
    if index.column_row is None:
        cols = index.column_index.long()
        listed = torch.arange(cols.shape[-1], device=device) < index.column_count[..., None]
    else:  # the entries of the block's shared row that its blocks and span do not visit already
        cols, listed = shared_columns(index, n_k, q_offset - k_offset)
    cols = torch.where(listed & (cols >= 0) & (cols < n_k), cols, trash)
    visits.scatter_add_(3, cols, torch.ones_like(cols, dtype=torch.int32))
    visits = visits[..., :n_k]

    # The diagonal block is always visited; listed entries inside it are ignored.
    m = torch.arange(num_blocks, device=device)
    diag_lo = (m * bm + q_offset - k_offset).clamp(0, n_k)
    diag_hi = ((m + 1) * bm + q_offset - k_offset).clamp(0, n_k)
    key_slots = torch.arange(n_k, device=device)
    in_diag = (key_slots >= diag_lo[:, None]) & (key_slots < diag_hi[:, None])  # [M, Nk]
    visits = torch.where(in_diag, 0, visits)
    if check_distinct and bool((visits > 1).any()):
        b, h, mb, slot = (visits > 1).nonzero()[0].tolist()
        raise ValueError(f"index lists key slot {slot} more than once for batch {b}, head {h}, "
                         f"query block {mb}: entries of one query block must be distinct")
    block_mask = (visits > 0) | in_diag  # [B, H, M, Nk] in slots

    # Expand query blocks to query slots, then map both axes to original positions (rows a
    # subset order does not list stay all False).
    slots = index.query_slots(n_q)
    slot_mask = block_mask.repeat_interleave(bm, dim=2)[:, :, :slots]  # [B, H, slots, Nk slots]
    q_pos = _slot_positions(index.q_order, batch, heads, n_q, device)
    k_pos = _slot_positions(index.k_order, batch, heads, n_k, device)
    mask = torch.zeros(batch, heads, n_q, n_k, dtype=torch.bool, device=device)
    rows = q_pos[..., :, None].expand(batch, heads, slots, n_k)
    cols = k_pos[..., None, :].expand(batch, heads, n_q, n_k)
    mask_rows = torch.zeros_like(mask).scatter_(2, rows, slot_mask)  # rows to original positions
    mask.scatter_(3, cols, mask_rows)  # then columns
    return mask & causal_mask(n_q, n_k, q_offset, k_offset, device) & ~near_mask(index, n_q, n_k, q_offset, k_offset)


def near_mask(index: SparseIndex, n_q: int, n_k: int, q_offset: int = 0, k_offset: int = 0) -> torch.Tensor:
    """bool [1 or B, H, Nq, Nk]: the pairs ``index.near_keys`` leaves to an earlier launch (none
    without it): on ``near_rows`` of heads with ``near_keys >= 0``, keys from the row's query block
    start minus ``near_keys`` on."""
    device = index.block_count.device
    if index.near_keys is None:
        return torch.zeros(1, 1, 1, 1, dtype=torch.bool, device=device)
    q_abs = torch.arange(n_q, device=device) + q_offset
    return near_pairs(index)[..., None] & near_keys_mask(index, q_abs, torch.arange(n_k, device=device) + k_offset)[None]


def near_pairs(index: SparseIndex) -> torch.Tensor:
    """bool [B, H, Nq]: the (head, row) pairs that continue an earlier launch (``near_keys``)."""
    return (index.near_keys >= 0)[None, :, None] & (index.near_rows != 0)[:, None, :]


def near_keys_mask(index: SparseIndex, q_abs: torch.Tensor, k_abs: torch.Tensor) -> torch.Tensor:
    """bool [H, R, K]: keys ``k_abs`` [K] a near row at ``q_abs`` [R] leaves to the earlier launch
    (from its query block's start minus ``near_keys`` on), for every head; ``near_pairs`` says
    which rows and heads it applies to."""
    first = (q_abs // index.block_m * index.block_m)[None, :, None] - index.near_keys.long()[:, None, None]
    return k_abs[None, None, :] >= first


def groups_to_mask(groups, heads_q: int, n_q: int, n_k: int) -> torch.Tensor:
    """Dense mask [B, Hq, Nq, Nk] of one layer's launches ``[(query head ids, index or None for
    dense)]`` in launch order: a later launch replaces the rows it computes (every row, or the rows
    its ``q_order`` lists), as the kernel's writes do."""
    batch = next((index.block_count.shape[0] for _, index in groups if index is not None), 1)
    device = next((index.block_count.device for _, index in groups if index is not None), None)
    mask = causal_mask(n_q, n_k, device=device).expand(batch, heads_q, n_q, n_k).clone()
    for ids, index in groups:
        if index is None:
            mask[:, ids] = causal_mask(n_q, n_k, device=device)
            continue
        launch = index_to_mask(index, n_q, n_k)
        rows = torch.zeros(batch, len(ids), n_q, dtype=torch.bool, device=device)
        rows.scatter_(2, _slot_positions(index.q_order, batch, len(ids), n_q, device), True)
        if index.near_keys is not None:  # those rows continue the earlier launch: they add up
            launch = launch | (mask[:, ids] & (near_pairs(index) & rows)[..., None])
        mask[:, ids] = torch.where(rows[..., None], launch, mask[:, ids])
    return mask


def continue_softmax(prior, part):
    """(out, lse) of one softmax over two disjoint key sets from each one's (out, lse): what a
    launch with ``near_keys`` computes from the earlier launch's ``prior``. Rows that saw nothing in
    either give 0 and -inf."""
    (out_a, lse_a), (out_b, lse_b) = prior, part
    lse = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isinf(lse), 0.0, lse)
    weight_a = torch.where(torch.isinf(lse_a), 0.0, torch.exp(lse_a - safe))[..., None]
    weight_b = torch.where(torch.isinf(lse_b), 0.0, torch.exp(lse_b - safe))[..., None]
    out = out_a.float() * weight_a + out_b.float() * weight_b
    return out.to(out_a.dtype), lse


def causal_mask(n_q: int, n_k: int, q_offset: int = 0, k_offset: int = 0, device=None) -> torch.Tensor:
    """Dense causal mask [Nq, Nk] in original positions."""
    return (torch.arange(n_k, device=device) + k_offset)[None, :] <= \
           (torch.arange(n_q, device=device) + q_offset)[:, None]


def masked_attention(q, k, v, mask, scale=None):
    """softmax(q k^T * scale, masked) v in float64 (float32 off-CPU if needed), GQA by repeat.

    Returns (out in q's dtype, lse float32). Rows with nothing visible give 0 and -inf.
    """
    check_inputs(q, k, v)
    compute = torch.float64 if q.device.type == "cpu" else torch.float32
    group = q.shape[1] // k.shape[1]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qf, kf, vf = (t.to(compute) for t in (q, k, v))
    kf, vf = kf.repeat_interleave(group, dim=1), vf.repeat_interleave(group, dim=1)
    scores = (qf @ kf.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    out = probs @ vf
    return out.to(q.dtype), lse.to(torch.float32)


def sparse_attention_reference(q, k, v, index: SparseIndex, scale=None, q_offset: int = 0,
                               k_offset: int = 0, prior=None):
    """Same contract and outputs as ``sparse_attention_forward``, in plain PyTorch. ``prior``
    (out, lse of the earlier launch): where the index has ``near_keys``, its ``near_pairs``
    continue that softmax (``continue_softmax``)."""
    check_inputs(q, k, v)
    check_index(index, q, k, check_values=True)
    mask = index_to_mask(index, q.shape[2], k.shape[2], q_offset, k_offset)
    out, lse = masked_attention(q, k, v, mask, scale)
    if index.near_keys is None:
        return out, lse
    if prior is None:
        raise ValueError("an index with near_keys continues an earlier launch: pass its (out, lse) as prior")
    both = continue_softmax(prior, (out, lse))
    on = near_pairs(index)
    return torch.where(on[..., None], both[0], out), torch.where(on, both[1], lse)


def dense_attention_reference(q, k, v, scale=None, q_offset: int = 0, k_offset: int = 0):
    """Same contract and outputs as ``dense_attention_forward``, in plain PyTorch."""
    check_inputs(q, k, v)
    mask = causal_mask(q.shape[2], k.shape[2], q_offset, k_offset, q.device)
    return masked_attention(q, k, v, mask, scale)
