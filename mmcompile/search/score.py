"""Score one candidate on one layer: what attention the kernel would compute with it, on sampled
rows, against dense attention, per head and query modality.

recall: the share of each row's dense softmax mass inside the launched mask (``fidelity.
layer_row_masks``: exactly the keys the kernel visits, launches in order); error: the relative
error of the row outputs (the kernel's output for a row is the softmax over its masked keys times
V, computed here in fp32 from the same mask); cost: the keys visited by those rows over their
causal keys (the density of that modality's rows; kernel time is linear in the visited area,
BENCHMARKS.md). O(H R N) per candidate: never an N x N matrix.
"""

from __future__ import annotations

import dataclasses

import torch

from mmcompile.patterns.fidelity import layer_row_masks
from mmcompile.patterns.context import ForwardContext
from mmcompile.patterns.estimates import Estimates
from mmcompile.patterns.layer_index import build_layer_indexes
from mmcompile.patterns.specs import HeadPattern


@dataclasses.dataclass(frozen=True)
class DenseRows:
    """The sampled rows' dense softmax [H, R, N] and outputs [H, R, D] of one layer (batch 0)."""
    rows: torch.Tensor  # int64 [R]
    probs: torch.Tensor
    out: torch.Tensor


def dense_rows(q, k, v, rows: torch.Tensor, scale: float) -> DenseRows:
    group = q.shape[1] // k.shape[1]
    kf = k[0].float().repeat_interleave(group, 0)
    scores = (q[0, :, rows].float() @ kf.transpose(-1, -2)) * scale
    scores = scores.masked_fill(torch.arange(k.shape[2], device=q.device)[None, :] > rows[:, None], float("-inf"))
    probs = torch.softmax(scores, -1)
    return DenseRows(rows, probs, probs @ v[0].float().repeat_interleave(group, 0))


def score_candidate(q, k, v, ctx: ForwardContext, head: HeadPattern, dense: DenseRows, row_sets: dict,
                    scale: float, estimates: Estimates) -> dict:
    """{row set name: (recall [H], rel err [H], cost [H])} for ``head`` applied to every head."""
    heads = q.shape[1]
    groups = build_layer_indexes(q, k, [head] * heads, ctx, scale, estimates)
    masks = layer_row_masks(groups, dense.rows, ctx.n, heads)
    kept = dense.probs * masks
    mass = kept.sum(-1)  # [H, R]
    group = heads // k.shape[1]
    sparse_out = (kept / mass.clamp(min=1e-30)[..., None]) @ v[0].float().repeat_interleave(group, 0)
    err_rows = (sparse_out - dense.out).norm(dim=-1)  # [H, R]
    visited = masks.sum(-1).float()  # [H, R]
    causal = (dense.rows + 1).float()
    out = {}
    for name, select in row_sets.items():
        denom = dense.out[:, select].norm(dim=-1).pow(2).sum(-1).sqrt().clamp(min=1e-30)
        out[name] = (mass[:, select].mean(-1), err_rows[:, select].pow(2).sum(-1).sqrt() / denom,
                     visited[:, select].sum(-1) / causal[select].sum())
    return out
