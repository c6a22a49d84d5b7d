"""Head-parallel sparse attention: the single-device layer op on each rank's heads.

Both modes give each rank whole heads over the whole sequence, so the op (estimation, pattern
choice, index, kernel) runs unchanged and its result equals the single-device op's on those heads.
Argument checks run before any collective, identically on every rank.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mmcompile.patterns.context import ForwardContext

from mmcompile.patterns.layer import layer_attention, plan_keywords
from mmcompile.patterns.specs import HeadPattern

from .comm import heads_to_seq, rank_world, seq_to_heads
from .shards import head_shard, slice_plan


def rank_attention(q, k, v, ctx: ForwardContext, patterns: Sequence[HeadPattern] | None = None, *,
                   density: float = 0.1, scale: float | None = None, recall: float | None = None,
                   plan_sizes: str = "plan"):
    """The layer op on the heads held here (whole sequence): ``patterns`` (one per local query head)
    or, if None, the online choice for these heads. Returns (out, patterns used): the single-device
    ``layer_attention`` on these heads. ``recall`` (the held-out check) and ``plan_sizes`` mean what
    the op's options of those names mean ("online": the patterns' types, sized for this input); the
    defaults keep ``layer_attention``'s (no check, patterns as given), the op's are 0.95 and
    "online"."""
    result = layer_attention(q, k, v, ctx, density=density, scale=scale, recall=recall,
                             **plan_keywords(patterns, plan_sizes))
    return result.out, list(result.patterns)


def ulysses_attention(q, k, v, ctx: ForwardContext, plan: Sequence[HeadPattern] | None = None, *,
                      density: float = 0.1, scale: float | None = None, group=None, return_patterns: bool = False,
                      recall: float | None = None, plan_sizes: str = "plan"):
    """Causal sparse attention of sequence shards q [B, Hq, N/world, D], k, v [B, Hkv, N/world, D]
    (rank r holds tokens [r N/world, (r+1) N/world)). Returns this rank's output shard
    [B, Hq, N/world, D] (and the patterns of its heads, if asked).

    ``ctx``: ``forward_context`` of the whole sequence's layout (N tokens), the same on every rank.
    ``plan``: one HeadPattern per query head of the whole layer (sliced here), or None for the
    online choice per head. ``recall``, ``plan_sizes``: as in ``rank_attention``.
    """
    rank, world = rank_world(group)
    b, heads_q, n_shard, _ = q.shape
    _check_kv(q, k, v)
    shard = head_shard(heads_q, k.shape[1], world, rank)
    patterns = slice_plan(plan, shard) if plan is not None else None
    if ctx.n != n_shard * world or ctx.batch != b:
        raise ValueError(f"the forward context covers batch {ctx.batch} x {ctx.n} tokens but {world} ranks hold "
                         f"batch {b} x {n_shard} tokens each ({n_shard * world} in all): build it from the whole "
                         f"sequence's layout and split the sequence into equal shards (N % world == 0)")
    q, k, v = seq_to_heads(q, k, v, group=group)
    out, used = rank_attention(q, k, v, ctx, patterns, density=density, scale=scale, recall=recall,
                               plan_sizes=plan_sizes)
    out = heads_to_seq(out, group=group)
    return (out, used) if return_patterns else out


def tensor_parallel_attention(q, k, v, ctx: ForwardContext, plan: Sequence[HeadPattern] | None = None, *,
                              density: float = 0.1, scale: float | None = None, group=None,
                              return_patterns: bool = False, recall: float | None = None, plan_sizes: str = "plan"):
    """Causal sparse attention of this rank's heads q [B, Hq/world, N, D], k, v [B, Hkv/world, N, D]
    (the ranges of ``head_shard``: query heads and the KV heads they read). No communication.
    Returns [B, Hq/world, N, D] (and the patterns used, if asked). ``ctx``, ``plan`` as in
    ``ulysses_attention``; the plan covers the whole layer and is sliced by rank here. ``recall``,
    ``plan_sizes``: as in ``rank_attention``."""
    rank, world = rank_world(group)
    _check_kv(q, k, v)
    shard = head_shard(q.shape[1] * world, k.shape[1] * world, world, rank)
    patterns = slice_plan(plan, shard) if plan is not None else None
    if ctx.n != q.shape[2] or ctx.batch != q.shape[0]:
        raise ValueError(f"the forward context covers batch {ctx.batch} x {ctx.n} tokens but this rank holds "
                         f"batch {q.shape[0]} x {q.shape[2]}: tensor parallelism keeps the whole sequence per rank")
    out, used = rank_attention(q, k, v, ctx, patterns, density=density, scale=scale, recall=recall,
                               plan_sizes=plan_sizes)
    return (out, used) if return_patterns else out


def _check_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4 or (k.shape[0], k.shape[2], k.shape[3]) != \
            (q.shape[0], q.shape[2], q.shape[3]):
        raise ValueError(f"expected q [B, Hq, N, D] and k, v [B, Hkv, N, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
