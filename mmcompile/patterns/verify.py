"""What a layer's indexes really kept, read off the kernel's own result: for the estimation rows
(the last queries of each modality the policy looked at, or the last queries overall), the share of
each row's attention mass the sparse kernel covered is ``exp(lse_sparse - lse_dense)``, where the
kernel's log-sum-exp comes from exactly the index it walked (its blocks, columns, permutation and
causal clipping) and the dense one from the estimation pass (``estimate.LineScores.lse``). Nothing
is summed from overlapping terms, so it cannot exceed 1 or flatter a pattern whose terms overlap,
and it costs a gather, not another pass over the keys.

Heads whose recall misses the target are recomputed dense in place (``demote`` keeps the records
straight), so a head that cannot meet the user's recall target runs exactly. The rows are the ones
the online policy chose from: on the fidelity harness's held-out rows recall can be lower.
"""

from __future__ import annotations

import dataclasses

import torch

from mmcompile.kernels import SparseIndex

from .index_builder import device_list
from .specs import Dense, HeadPattern


def estimation_recall(lse: torch.Tensor, estimates, ctx) -> torch.Tensor:
    """float32 [Hq]: per query head, the smallest (over row sets and batch) mean share of the
    estimation rows' softmax mass that the computed attention covered. ``lse`` [B, Hq, N]: the
    log-sum-exp the kernels wrote (natural log; dense heads equal the dense value)."""
    heads = list(range(lse.shape[1]))
    worst = torch.ones(lse.shape[1], dtype=torch.float32, device=lse.device)
    for name in ctx.row_sets():
        lines = estimates.lines(name, heads)
        got = lse.gather(2, lines.pos[:, None, :].expand(-1, lse.shape[1], -1))  # [B, H, L]
        kept = torch.exp(got - lines.lse).clamp(max=1.0)
        weight = lines.valid[:, None, :].float()
        mean = (kept * weight).sum(-1) / weight.sum(-1).clamp(min=1)  # [B, H]
        has_rows = lines.valid.any(-1)[:, None]
        worst = torch.minimum(worst, torch.where(has_rows, mean, 1.0).min(0).values)
    return worst


_INDEX_TENSORS = ("block_count", "block_offset", "column_count", "column_index", "q_order", "k_order")


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
