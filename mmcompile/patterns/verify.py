"""What a layer's built indexes really keep, measured before they run: the recall of each query
head's index on the estimation rows (the last queries of each modality, and the last queries
overall), computed from exactly the index the kernel will walk (its blocks, columns, permutation
and causal clipping: ``fidelity.index_row_mask``) against the rows' exact softmax. No sum of
overlapping terms, so it cannot exceed 1 and does not flatter a pattern whose terms overlap.

``demote`` moves the heads whose recall misses the target to the dense path, so a head that
cannot meet the user's recall target runs exactly. The rows are the ones the online policy chose
from, so this is an upper bound of held-out recall (the fidelity harness measures held-out rows).
"""

from __future__ import annotations

import dataclasses

import torch

from mmcompile.kernels import SparseIndex

from .fidelity import index_row_mask
from .index_builder import device_list
from .specs import Dense, HeadPattern

CHUNK_BYTES = 1 << 29  # fp32 probabilities of the rows scored at once (heads chosen to fit)


def estimation_recall(q, k, indexes, ctx, scale: float) -> torch.Tensor:
    """float32 [Hq]: per query head, the smallest mean recall over the estimation-row sets of
    ``ctx.last_rows`` (each query modality's last rows, and the last rows overall) and over the
    batch. Dense heads (index None) get 1. All sets' rows are scored in one pass per head chunk."""
    heads_q, group, n = q.shape[1], q.shape[1] // k.shape[1], ctx.n
    recall = torch.ones(heads_q, dtype=torch.float32, device=q.device)
    sets = list(ctx.last_rows.values())
    for head_ids, index in indexes:
        if index is None:
            continue
        worst = torch.ones(len(head_ids), dtype=torch.float32, device=q.device)
        for b in range(ctx.batch):
            rows = torch.cat([pos[b] for pos, *_ in sets])  # [R]
            weight = torch.block_diag(*[valid[b].float()[None] for _, valid, *_ in sets])  # [S, R]
            per_set = weight.sum(-1)  # rows per set (0: the set is empty in this sample)
            chunk = max(1, CHUNK_BYTES // (4 * rows.numel() * n))
            one = _batch(index, b)
            for start in range(0, len(head_ids), chunk):
                ids = head_ids[start:start + chunk]
                probs = _row_probs(q[b], k[b], ids, group, rows, scale, None if ctx.key_pad is None else ctx.key_pad[b])
                kept = (probs * index_row_mask(_heads(one, start, len(ids)), rows, n)).sum(-1)  # [h, R]
                mass = (kept @ weight.T) / per_set.clamp(min=1)  # [h, S]
                mass = torch.where(per_set > 0, mass, 1.0).min(-1).values
                worst[start:start + len(ids)] = torch.minimum(worst[start:start + len(ids)], mass)
        recall.index_copy_(0, device_list(head_ids, q.device), worst)
    return recall


def _row_probs(q, k, ids, group, rows, scale, key_pad):
    """fp32 [len(ids), R, N]: the exact causal softmax of query rows ``rows`` of heads ``ids``."""
    heads = device_list(ids, q.device)
    qr = q.index_select(0, heads)[:, rows].float()  # [h, R, D]
    kr = k.index_select(0, heads // group).float()  # [h, N, D]
    scores = (qr @ kr.transpose(-1, -2)) * scale
    future = torch.arange(k.shape[1], device=q.device)[None, :] > rows[:, None]
    if key_pad is not None:
        future = future | key_pad[None, :]
    return torch.softmax(scores.masked_fill(future, float("-inf")), -1).nan_to_num(0.0)


def _batch(index: SparseIndex, b: int) -> SparseIndex:
    pick = (lambda t: None if t is None else t[b:b + 1])
    return dataclasses.replace(index, **{f: pick(getattr(index, f)) for f in
                                         ("block_count", "block_offset", "column_count", "column_index",
                                          "q_order", "k_order")})


def _heads(index: SparseIndex, start: int, count: int) -> SparseIndex:
    pick = (lambda t: None if t is None else t[:, start:start + count])
    return dataclasses.replace(index, **{f: pick(getattr(index, f)) for f in
                                         ("block_count", "block_offset", "column_count", "column_index",
                                          "q_order", "k_order")})


def demote(indexes, patterns, recall: torch.Tensor, target: float):
    """(indexes, patterns) with every head whose ``recall`` is below ``target`` moved to the dense
    group (its pattern becomes Dense). One host sync: which heads fail decides the launches."""
    failing = set((recall < target).nonzero().flatten().tolist())
    if not failing:
        return indexes, tuple(patterns)
    dense = [h for ids, index in indexes if index is None for h in ids]
    kept = []
    for ids, index in indexes:
        if index is None:
            continue
        stay = [i for i, h in enumerate(ids) if h not in failing]
        dense += [h for h in ids if h in failing]
        if len(stay) == len(ids):
            kept.append((ids, index))
        elif stay:
            pick = device_list(stay, recall.device)
            kept.append(([ids[i] for i in stay], dataclasses.replace(index, **{
                f: None if getattr(index, f) is None else getattr(index, f).index_select(1, pick).contiguous()
                for f in ("block_count", "block_offset", "column_count", "column_index", "q_order", "k_order")})))
    patterns = tuple(HeadPattern("none", (("*", Dense()),)) if h in failing else p for h, p in enumerate(patterns))
    return [(sorted(dense), None)] + kept, patterns
