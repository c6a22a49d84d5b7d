"""Search one layer: every candidate scored on sampled rows of each query modality, then per head
and modality the cheapest candidate whose recall reaches the target (``candidates.
choose_from_scores``: Dense when none does, or when the cheapest still visits ``MAX_COST`` of the
causal keys; A-shape priced ``STATIC_BONUS`` lower, as in the online policy).
Deterministic for a seed (the sampled rows); the online estimation still runs when the plan is
used: by default the plan fixes each head's types and the online policy sizes them for the input
(budgets found at the calibration length fall short at several times it); with the run-time
option ``plan_sizes="plan"`` the plan fixes types and budgets, the input the lines."""

from __future__ import annotations

import torch

from mmcompile.patterns.fidelity import sample_rows
from mmcompile.patterns.context import ForwardContext
from mmcompile.patterns.estimates import Estimates
from mmcompile.patterns.layout import MODALITY_NAMES
from mmcompile.patterns.specs import AShape, Dense, Grid, HeadPattern

from .candidates import candidate_name, candidates_for, choose_from_scores, pair_candidates
from .score import dense_rows, score_candidate


def sampled_rows(ctx: ForwardContext, count: int, seed: int):
    """(rows int64 [R], {row set: bool [R]}): per query modality (or "*" for one) of sample 0, its
    last 64 rows and random rows from the later half of its rows, ``count`` in all."""
    names = ctx.row_sets()
    if names == ["*"] or ctx.modality is None:
        rows = sample_rows(ctx.n, count, ctx.frame_stride.device, seed)
        return rows, {"*": torch.ones(rows.numel(), dtype=torch.bool, device=rows.device)}
    ids = {name: mid for mid, name in MODALITY_NAMES.items()}
    g = torch.Generator(device=ctx.modality.device).manual_seed(seed)
    picked = []
    for name in names:
        own = (ctx.modality[0] == ids[name]).nonzero()[:, 0]
        later = own[own.numel() // 2:]
        extra = later[torch.randint(0, max(later.numel(), 1), (max(count // len(names) - 64, 0),), generator=g,
                                    device=own.device)] if later.numel() else own[:0]
        picked += [own[-64:], extra]
    rows = torch.unique(torch.cat(picked))
    mod = ctx.modality[0, rows]
    return rows, {name: mod == ids[name] for name in names if bool((mod == ids[name]).any())}


def search_layer(q, k, v, ctx: ForwardContext, target: float = 0.95, rows: int = 256, seed: int = 0,
                 scale: float | None = None):
    """(one HeadPattern per query head, {head: {row set: {candidate: {recall, err, cost}}}})."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    sampled, row_sets = sampled_rows(ctx, rows, seed)
    dense = dense_rows(q, k, v, sampled, scale)
    estimates = Estimates(q, k, ctx, scale)
    grid_ok = ctx.max_frame > 0 and (list(row_sets) == ["*"] and list(ctx.present) == ["video"]
                                     or ctx.row_counts.get("video") is not None)
    inter = "none" if list(row_sets) == ["*"] else "q-boundary"
    scores = {h: {name: {} for name in row_sets} for h in range(q.shape[1])}
    for pattern in candidates_for(grid_ok) + pair_candidates(list(row_sets)):
        if isinstance(pattern, Dense):
            continue  # recall 1, error 0, cost 1: the fallback
        head = pattern if isinstance(pattern, HeadPattern) else \
            HeadPattern(inter, tuple((name, _for_rows(pattern, name)) for name in row_sets))
        result = score_candidate(q, k, v, ctx, head, dense, row_sets, scale, estimates)
        for name in row_sets:
            if isinstance(pattern, Grid) and name not in ("*", "video"):
                continue
            recall, err, cost = (t.tolist() for t in result[name])
            for h in range(q.shape[1]):
                scores[h][name][candidate_name(pattern)] = dict(recall=recall[h], err=err[h], cost=cost[h])
    return [choose_from_scores(scores[h], target) for h in range(q.shape[1])], scores


def _for_rows(pattern, name: str):
    """A Grid is scored on video rows only; other modalities' rows get a narrow A-shape meanwhile."""
    return pattern if not isinstance(pattern, Grid) or name in ("*", "video") else AShape(128, 512)
