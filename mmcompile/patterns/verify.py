"""What a layer's launches really kept, read off the kernel's own result, on rows the index was not
built from: for held-out rows of each row set the policy chose from (``estimate.held_out_queries``:
rows of the same modality spread over its later half, disjoint from the last queries), the share
of each row's attention mass the kernel covered is ``exp(lse_sparse - lse_dense)``. The kernel's
log-sum-exp comes from exactly the index it walked (its blocks, columns, permutation and causal
clipping), the dense one from one pass over the keys for those rows
(``estimate.dense_row_lse``). Nothing is summed from overlapping terms, so it cannot exceed 1 or
flatter a pattern whose terms overlap; and since the rows are held out, a pattern fitted to the
last queries alone (columns only they use) shows as the loss it is elsewhere.

Heads whose recall misses the target are recomputed (``layer_attention``); ``replace_heads`` and
``demote`` keep the records straight.
"""

from __future__ import annotations

import dataclasses

import torch

from mmcompile.kernels import SparseIndex

from .index_builder import device_list
from .specs import Dense, HeadPattern


def held_out_recall(lse: torch.Tensor, estimates, ctx, exact_heads: list[int] = ()) -> torch.Tensor:
    """float32 [Hq]: per query head, the smallest (over row sets and batch) mean share of the
    held-out rows' softmax mass that the computed attention covered. ``lse`` [B, Hq, N]: the
    log-sum-exp the kernels wrote (natural log). ``exact_heads`` (dense, through SDPA: no lse)
    count as 1. All row sets at once (``ctx.held_out``: S sets of L slots side by side), so the
    op count does not grow with the number of query modalities."""
    pos, valid = ctx.held_out
    got = lse.gather(2, pos[:, None, :].expand(-1, lse.shape[1], -1))  # [B, H, S * L]
    dense = estimates.held_out_lse()
    seen = valid[:, None, :] & torch.isfinite(dense)
    kept = torch.where(seen, torch.exp(got - torch.where(seen, dense, 0.0)).clamp(max=1.0), 0.0)
    per_set = (*seen.shape[:2], len(ctx.row_sets()), -1)  # [B, H, S, L]
    seen, kept = seen.view(per_set), kept.view(per_set)
    mean = kept.sum(-1) / seen.sum(-1).clamp(min=1)  # [B, H, S]; a mean of shares <= 1 is <= 1
    worst = torch.where(seen.any(-1), mean, 1.0).amin((0, 2))
    if exact_heads:
        worst = worst.index_fill(0, device_list(exact_heads, worst.device), 1.0)
    return worst


_INDEX_TENSORS = ("block_count", "block_offset", "column_count", "column_index", "q_order", "k_order", "span",
                  "column_row")


def _index_heads(index: SparseIndex, positions: torch.Tensor) -> SparseIndex:
    """The index restricted to the heads at ``positions`` (along its head dim)."""
    return dataclasses.replace(index, **{f: None if getattr(index, f) is None else
                                         getattr(index, f).index_select(1, positions).contiguous()
                                         for f in _INDEX_TENSORS})


def _without(indexes, heads: set):
    """The launch groups with ``heads`` taken out (groups left empty dropped)."""
    kept = []
    for ids, index in indexes:
        stay = [i for i, h in enumerate(ids) if h not in heads]
        if len(stay) == len(ids):
            kept.append((ids, index))
        elif stay:
            kept.append(([ids[i] for i in stay], None if index is None else
                         _index_heads(index, device_list(stay, index.block_count.device))))
    return kept


def replace_heads(indexes, patterns, heads: list[int], new_indexes, new_patterns):
    """(indexes, patterns) after ``heads`` were recomputed with ``new_patterns[h]`` through the
    launch groups ``new_indexes`` (which hold those heads only)."""
    heads = set(heads)
    patterns = tuple(new_patterns[h] if h in heads else p for h, p in enumerate(patterns))
    return _without(indexes, heads) + list(new_indexes), patterns


def demote(indexes, patterns, failing: list[int]):
    """(indexes, patterns) with the ``failing`` heads moved to the dense group (pattern Dense): the
    record of what ran after ``layer_attention`` recomputed them dense."""
    failing = set(failing)
    if not failing:
        return indexes, tuple(patterns)
    kept = _without(indexes, failing)
    dense = sorted(failing | {h for ids, index in kept if index is None for h in ids})
    patterns = tuple(HeadPattern("none", (("*", Dense()),)) if h in failing else p for h, p in enumerate(patterns))
    return [(dense, None)] + [(ids, index) for ids, index in kept if index is not None], patterns
