"""Fidelity of sparse attention against dense float32 attention, per head, on sampled query rows.

Metrics (BENCHMARKING.md): attention-mass recall (share of each row's dense softmax mass inside the
computed mask), output relative error and cosine similarity, and density (``SparseIndex.density``). Rows are sampled so the cost is O(rows * N), never O(N^2).
"""

from __future__ import annotations

import torch

from mmcompile.kernels import SparseIndex, block_columns, span_stretches
from mmcompile.kernels.reference import near_keys_mask, near_pairs


def _row_slots(index: SparseIndex, rows: torch.Tensor, n_k: int) -> torch.Tensor:
    """int64 [H, R] (batch 0): the query slot of each row, -1 where the index does not compute it."""
    heads = index.block_count.shape[1]
    if index.q_order is None:
        return rows.expand(heads, -1)
    order = index.q_order[0].long()  # [H, S]: a permutation, or a subset of the rows
    slot_of = torch.full((heads, max(n_k, int(rows.max()) + 1)), -1, dtype=torch.long, device=rows.device)
    slot_of.scatter_(1, order, torch.arange(order.shape[1], device=rows.device).expand_as(order))
    return slot_of[:, rows]


def index_row_mask(index: SparseIndex, rows: torch.Tensor, n_k: int) -> torch.Tensor:
    """bool [H, R, N] (batch 0): keys the kernel visits for query positions ``rows`` (int64 [R]);
    all False for rows the index does not compute (a row-subset order)."""
    heads = index.block_count.shape[1]
    device = rows.device
    slots = _row_slots(index, rows, n_k)
    computed = slots >= 0
    slots = slots.clamp(min=0)
    m = slots // index.block_m
    key_slots = torch.arange(n_k, device=device)
    diag_lo = m * index.block_m
    visit = (key_slots >= diag_lo[..., None]) & (key_slots < diag_lo[..., None] + index.block_m)
    h = torch.arange(heads, device=device)[:, None]
    count = index.block_count[0][h, m]  # [H, R]
    offsets = index.block_offset[0][h, m].long()  # [H, R, cap]
    listed = torch.arange(offsets.shape[-1], device=device) < count[..., None]
    spans = offsets[..., None] + torch.arange(index.block_n, device=device)
    spans = torch.where(listed[..., None] & (spans < n_k), spans, n_k).flatten(2)
    hit = torch.zeros(heads, rows.shape[0], n_k + 1, dtype=torch.bool, device=device)
    hit.scatter_(2, spans, True)
    cols, col_listed = block_columns(index, 0, h, m)
    hit.scatter_(2, torch.where(col_listed & (cols >= 0) & (cols < n_k), cols, n_k), True)
    visit |= hit[..., :n_k]
    if index.span is not None:
        for lo, hi in span_stretches(index.span, index.block_m, n_k):
            visit |= (key_slots >= lo[0][h, m][..., None]) & (key_slots < hi[0][h, m][..., None])
    if index.k_order is not None:  # slots -> original key positions
        by_pos = torch.zeros_like(visit)
        by_pos.scatter_(2, index.k_order[0].long()[:, None, :].expand_as(visit), visit)
        visit = by_pos
    visit &= (key_slots[None, None, :] <= rows[None, :, None]) & computed[..., None]
    if index.near_keys is not None:  # keys an earlier launch visited (``SparseIndex.near_keys``)
        visit &= ~(near_pairs(index)[0][:, rows, None] & near_keys_mask(index, rows, key_slots))
    return visit


def layer_row_masks(indexes, rows: torch.Tensor, n: int, heads_q: int) -> torch.Tensor:
    """bool [Hq, R, N]: for a layer's launch groups (``LayerResult.indexes``, in launch order),
    the keys each head's rows were computed with. A head may be in several groups (a Q-boundary
    head's grid launch over its video rows follows its original-order launch): a later launch's
    rows replace the earlier ones, as in the output, but where it continues the earlier launch's
    softmax (``SparseIndex.near_keys``), then both add up. Dense groups (index None): every causal key."""
    masks = torch.zeros(heads_q, rows.numel(), n, dtype=torch.bool, device=rows.device)
    causal = torch.arange(n, device=rows.device)[None, :] <= rows[:, None]
    for head_ids, index in indexes:
        ids = torch.tensor(head_ids, device=rows.device)
        if index is None:
            masks[ids] = causal
            continue
        computed = _row_slots(index, rows, n) >= 0  # [H, R]
        launch = index_row_mask(index, rows, n)
        if index.near_keys is not None:
            launch |= masks[ids] & near_pairs(index)[0][:, rows, None]
        masks[ids] = torch.where(computed[..., None], launch, masks[ids])
    return masks


def head_fidelity(q, k, v, out, masks: torch.Tensor, rows: torch.Tensor, scale=None) -> dict:
    """Per query head metrics on ``rows``: q, k, v [1, H*, N, D], out [1, Hq, N, D] (sparse),
    masks bool [Hq, R, N]. Returns tensors [Hq] of recall, rel_err, cosine. ``out`` None: the
    output the masks themselves give (their keys' renormalized probabilities), what launches with
    those masks write, without running them (``benchmarks/heldout_probe.py``). One KV group at a
    time: its [group, R, N] fp32 probabilities are the peak (3.5 GiB at 1M tokens and 128 rows;
    all 28 heads at once did not fit an H100 next to the layer)."""
    group = q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    causal = torch.arange(k.shape[2], device=q.device)[None, :] <= rows[:, None]
    recall = torch.empty(q.shape[1], dtype=torch.float32, device=q.device)
    dense = torch.empty(q.shape[1], rows.numel(), v.shape[-1], dtype=torch.float32, device=q.device)
    masked = torch.empty_like(dense) if out is None else None
    for g in range(k.shape[1]):
        heads = slice(g * group, (g + 1) * group)
        scores = (q[0, heads][:, rows].float() @ k[0, g].float().T) * scale
        probs = torch.softmax(scores.masked_fill_(~causal, float("-inf")), -1)
        del scores
        kept = probs * masks[heads]
        recall[heads] = kept.sum(-1).mean(-1)
        dense[heads] = probs @ v[0, g].float()
        if masked is not None:  # a row that keeps nothing writes 0, as the kernel does
            masked[heads] = (kept @ v[0, g].float()) / kept.sum(-1, keepdim=True).clamp(min=1e-30)
        del probs, kept
    sparse = masked if out is None else out[0, :, rows].float()
    err = (sparse - dense).flatten(1).norm(dim=-1) / dense.flatten(1).norm(dim=-1)
    cos = torch.nn.functional.cosine_similarity(sparse.flatten(1), dense.flatten(1), dim=-1)
    return dict(recall=recall, rel_err=err, cosine=cos)


def index_density(index: SparseIndex, n: int) -> torch.Tensor:
    """[H] density of batch 0: ``SparseIndex.density``, the one definition."""
    return index.density(n)[0]


def sample_rows(n: int, count: int, device=None, seed: int = 0, early: bool = False) -> torch.Tensor:
    """The last 64 rows plus random rows from the second half (where sparsity matters); ``early``:
    random rows from N/8 to N/2 instead, which this sample does not see (the held-out check
    spreads its rows over all of them)."""
    g = torch.Generator(device=device).manual_seed(seed)
    if early:
        return torch.unique(torch.randint(n // 8, n // 2, (count,), generator=g, device=device))
    tail = torch.arange(max(n - 64, 0), n, device=device)
    rand = torch.randint(n // 2, n, (max(count - tail.numel(), 0),), generator=g, device=device)
    return torch.unique(torch.cat([tail, rand]))
