"""What a layer's launches really kept, read off the kernel's own result, on rows the index was not
built from: for held-out rows of each row set the policy chose from (``estimate.held_out_queries``:
rows of the same modality spread over all its rows, disjoint from the last queries), the share
of each row's attention mass the kernel covered is ``exp(lse_sparse - lse_dense)``. The kernel's
log-sum-exp comes from exactly the index it walked (its blocks, columns, permutation and causal
clipping), the dense one from one pass over the keys for those rows
(``estimate.dense_row_lse``). Nothing is summed from overlapping terms, so it cannot exceed 1 or
flatter a pattern whose terms overlap; and since the rows are held out, a pattern fitted to the
last queries alone (columns only they use) shows as the loss it is elsewhere.

Recall does not bound the output error: a row that misses a band edge of mass m is off by about
2 m, and with diffuse kept mass (the norm of the output small) more. So the same rows also give
each head's output error against their dense output (``dense_rows``, ``held_out_error``), and a
head whose error exceeds ``1 - target`` (0.05 at the default 0.95) fails the check as a recall
miss does. Both are per row set (query modality): a head's rows that miss are recomputed
(``check.apply_check``), its other rows keep their pattern; ``replace_heads`` and ``demote`` keep
the records straight.
"""

from __future__ import annotations

import dataclasses

import torch

from mmcompile.kernels import SparseIndex, triton_runs_on

from .index_builder import device_list
from .specs import Dense, HeadPattern


def held_out_recall(lse: torch.Tensor, estimates, ctx, exact_heads: list[int] = ()) -> torch.Tensor:
    """float32 [Hq, S]: per query head and row set (``ctx.row_sets()``), the smallest (over the
    batch) mean share of the held-out rows' softmax mass that the computed attention covered.
    ``lse`` [B, Hq, N]: the log-sum-exp the kernels wrote (natural log). ``exact_heads`` (dense,
    through SDPA: no lse) count as 1. All row sets at once (``ctx.held_out``: S sets of L slots side by side), so the
    op count does not grow with the number of query modalities."""
    pos, valid = ctx.held_out
    got = lse.gather(2, pos[:, None, :].expand(-1, lse.shape[1], -1))  # [B, H, S * L]
    dense = estimates.held_out_lse()
    seen = valid[:, None, :] & torch.isfinite(dense)
    kept = torch.where(seen, torch.exp(got - torch.where(seen, dense, 0.0)).clamp(max=1.0), 0.0)
    per_set = (*seen.shape[:2], len(ctx.row_sets()), -1)  # [B, H, S, L]
    seen, kept = seen.view(per_set), kept.view(per_set)
    mean = kept.sum(-1) / seen.sum(-1).clamp(min=1)  # [B, H, S]; a mean of shares <= 1 is <= 1
    worst = torch.where(seen.any(-1), mean, 1.0).amin(0)
    if exact_heads:
        worst = worst.index_fill(0, device_list(exact_heads, worst.device), 1.0)
    return worst


def dense_rows(q, k, v, pos: torch.Tensor, valid: torch.Tensor, scale: float, key_pad=None, chunk: int = 32768,
               use_kernel: bool | None = None):
    """(lse fp32 [B, Hq, L], out fp32 [B, Hq, L, D]): dense causal attention of rows ``pos`` (padding
    keys excluded; a row that sees no key, or is not ``valid``, has lse -inf and output 0).
    ``use_kernel`` (default: where Triton runs): the Triton pass that otherwise gives the check its
    lse alone (``line_scores_kernel.row_lse_and_out_of``); else one KV group and ``chunk`` keys at
    a time in PyTorch, merged by their log-sum-exp (memory O(group L chunk), never L x N per head)."""
    if triton_runs_on(q, has_reference=True) if use_kernel is None else use_kernel:
        from .line_scores_kernel import row_lse_and_out_of

        lse, out = row_lse_and_out_of(q, k, v, pos, valid, scale, key_pad)
        return lse, torch.where(valid[:, None, :, None], out, 0.0)
    batch, heads_q, n, d = q.shape
    group, rows = heads_q // k.shape[1], pos.shape[1]
    sel = q.gather(2, pos[:, None, :, None].expand(batch, heads_q, rows, d))
    lse = torch.full((batch, heads_q, rows), float("-inf"), dtype=torch.float32, device=q.device)
    out = torch.zeros(batch, heads_q, rows, d, dtype=torch.float32, device=q.device)
    for g in range(k.shape[1]):
        heads = slice(g * group, (g + 1) * group)
        for lo in range(0, n, chunk):
            keys = torch.arange(lo, min(lo + chunk, n), device=q.device)
            hidden = keys[None, None, :] > pos[:, :, None]  # [B, L, C]
            if key_pad is not None:
                hidden = hidden | key_pad[:, None, lo:lo + chunk]
            scores = torch.matmul(sel[:, heads], k[:, g, None, lo:lo + chunk].transpose(-1, -2)).float() * scale
            scores = scores.masked_fill(hidden[:, None], float("-inf"))
            part = scores.logsumexp(-1)  # [B, G, L]
            both = torch.logaddexp(lse[:, heads], part)
            finite = torch.isfinite(both)
            keep_old = torch.where(finite, torch.exp(lse[:, heads] - both), 0.0)
            probs = torch.where(finite[..., None], torch.exp(scores - both[..., None]), 0.0)
            values = v[:, g, None, lo:lo + chunk].float()
            out[:, heads] = out[:, heads] * keep_old[..., None] + torch.matmul(probs, values)
            lse[:, heads] = both
    return torch.where(valid[:, None, :], lse, float("-inf")), torch.where(valid[:, None, :, None], out, 0.0)


def held_out_error(out: torch.Tensor, dense_out: torch.Tensor, ctx, exact_heads: list[int] = ()) -> torch.Tensor:
    """float32 [Hq, S]: per query head and row set, the largest (over the batch) relative output
    error ||O - O_dense|| / ||O_dense|| of the held-out rows (``ctx.held_out``; ``dense_out`` from
    ``dense_rows``). ``exact_heads`` (dense, through SDPA) count as 0."""
    pos, valid = ctx.held_out
    batch, heads, _, d = out.shape
    got = out.gather(2, pos[:, None, :, None].expand(batch, heads, pos.shape[1], d)).float()
    per_set = (batch, heads, len(ctx.row_sets()), -1)
    mask = valid[:, None, :, None]
    diff = torch.where(mask, got - dense_out, 0.0).square().sum(-1).view(per_set).sum(-1)  # [B, H, S]
    norm = torch.where(mask, dense_out, 0.0).square().sum(-1).view(per_set).sum(-1)
    error = torch.where(norm > 0, (diff / norm.clamp(min=1e-30)).sqrt(), 0.0).amax(0)
    if exact_heads:
        error = error.index_fill(0, device_list(exact_heads, error.device), 0.0)
    return error


_INDEX_TENSORS = ("block_count", "block_offset", "column_count", "column_index", "q_order", "k_order", "span",
                  "column_row")


def _index_heads(index: SparseIndex, positions: torch.Tensor) -> SparseIndex:
    """The index restricted to the heads at ``positions`` (along its head dim; ``near_keys`` has no
    batch dim)."""
    near = None if index.near_keys is None else index.near_keys.index_select(0, positions).contiguous()
    return dataclasses.replace(index, near_keys=near, **{f: None if getattr(index, f) is None else
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
