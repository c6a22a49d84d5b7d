"""The held-out check of one layer and what follows it: per head and query modality, what its
launches kept of held-out rows' attention mass and how far their outputs are from dense; rows that
miss the target try the head's fallbacks, then run dense alone, or the head runs dense whole.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from . import layer_index, launch, verify
from .context import ForwardContext
from .estimates import Estimates
from .index_builder import device_list
from .rows_alone import dense_rows_index
from .specs import HeadPattern


ERROR_FLOOR = 0.01  # the least output error tolerance of the held-out check (``error_tolerance``)
# What one fallback stage costs (index, recompute, held-out check, host sync), in causal pairs of
# dense attention: ~9 ms on an H100 at 128K (``benchmarks/check_cost.py``, 2026-12-07: the Grid
# stage for one head), where cuDNN computes ~1.15e12 causal pairs/s (28 heads, 210 ms).
STAGE_PAIRS = 1.0e10


def apply_check(q, k, v, out, lse, estimates, ctx: ForwardContext, patterns, fallbacks: dict, indexes,
                recall: float, scale: float, density: float):
    """The held-out check and what follows it, per query modality (row set): a head's sets that
    miss (``held_out_check``) run its fallbacks' patterns there in turn
    (``policy.choose_with_fallbacks``), measured again after each, unless their rows are few
    enough that running them dense costs less than recomputing the head at the cap
    (``dense_rows_first``), or the stage's heads together could save less dense work than a
    stage costs (``stage_pays``). Sets still missing run dense in a launch over those rows alone
    (``rows_alone.dense_rows_index``); the head's other sets keep their pattern (the question
    rows that Vertical-Slash serves badly need not take the video rows' Grid with them). A head
    whose every set misses, or whose pattern is not per query modality, runs dense whole (SDPA).
    Returns (out, patterns, indexes, recall [Hq], error [Hq]): each head's worst set."""
    sets = ctx.row_sets()
    head_recall, head_error, failing = held_out_check(out, lse, v, estimates, ctx, indexes, recall)  # one host sync
    for stage in range(max((len(f) for f in fallbacks.values()), default=0)):
        trial = {h: _rows_replaced(patterns[h], fallbacks[h][stage], rows, sets) for h, rows in failing.items()
                 if len(fallbacks.get(h, ())) > stage and not dense_rows_first(patterns[h], rows, ctx, density)}
        trial = {h: head for h, head in trial.items() if head != patterns[h]}
        if trial and stage_pays({h: failing[h] for h in trial}, ctx, density):  # the next fallback, measured again
            indexes, patterns = _recompute(q, k, v, out, lse, estimates, ctx, patterns, indexes, trial, scale)
            head_recall, head_error, failing = held_out_check(out, lse, v, estimates, ctx, indexes, recall)  # only then
    apart = {h: rows for h, rows in failing.items() if dense_rows_apart(patterns[h], rows, ctx)}
    whole = [h for h in failing if h not in apart]
    if apart:  # those rows against every causal key, in one launch per row set: exact there
        by_rows = defaultdict(list)
        for h, rows in apart.items():
            for m in rows:
                by_rows[m].append(h)
        groups = [(ids, dense_rows_index(len(ids), m, ctx)) for m, ids in by_rows.items()]
        launch.attend(q, k, v, groups, scale, out=out, lse=lse)
        indexes = list(indexes) + groups
        patterns = tuple(_rows_replaced(head, HeadPattern(), apart[h], sets) if h in apart else head
                         for h, head in enumerate(patterns))
        exact = torch.zeros_like(head_recall, dtype=torch.bool)
        for h, rows in apart.items():
            exact[h, [sets.index(m) for m in rows]] = True
        head_recall, head_error = head_recall.masked_fill(exact, 1.0), head_error.masked_fill(exact, 0.0)
    if whole:  # recomputed dense, in place: these heads cannot meet the target with this input
        launch.sdpa_heads(q, k, v, whole, scale, out, lse)
        indexes, patterns = verify.demote(indexes, patterns, whole)
        ids = device_list(whole, q.device)
        head_recall, head_error = head_recall.index_fill(0, ids, 1.0), head_error.index_fill(0, ids, 0.0)
    return out, patterns, indexes, head_recall.amin(-1), head_error.amax(-1)


def _recompute(q, k, v, out, lse, estimates, ctx: ForwardContext, patterns, indexes, trial: dict, scale: float):
    """(indexes, patterns) after the heads of ``trial`` {head: pattern} ran again with those
    patterns, written over their rows of ``out`` and ``lse``."""
    heads = tuple(trial.get(h, HeadPattern()) for h in range(len(patterns)))
    redo = [(ids, index) for ids, index in layer_index.build_layer_indexes(q, k, heads, ctx, scale, estimates)
            if index is not None]
    launch.attend(q, k, v, redo, scale, out=out, lse=lse)
    return verify.replace_heads(indexes, patterns, list(trial), redo, heads)


def _rows_replaced(head: HeadPattern, other: HeadPattern, rows: list[str], sets: list[str]) -> HeadPattern:
    """``head`` with ``other``'s pattern on the query modalities ``rows`` (``"*"``, or all of
    ``sets``: ``other`` whole), the others as they were."""
    if _whole(rows, sets):
        return other
    return HeadPattern("q-boundary", tuple((m, other.pattern_for(m) if m in rows else head.pattern_for(m))
                                          for m in sets))


def _whole(rows: list[str], sets: list[str]) -> bool:
    """Whether row sets ``rows`` of a head are all of its rows (``"*"``, or every one of ``sets``)."""
    return "*" in rows or set(rows) >= set(sets)


DENSE_ROWS_AREA = 0.5  # rows that miss run dense apart while they hold at most this share of the causal pairs


def dense_rows_apart(head: HeadPattern, rows: list[str], ctx: ForwardContext) -> bool:
    """Whether a head's missing ``rows`` (query modalities) run dense without the rest of it: some
    of its modalities pass, its pattern is one per query modality (not a boundary of keys), every
    sample has as many rows of each (one launch lists them: ``rows_alone.dense_rows_index``), and they hold
    at most ``DENSE_ROWS_AREA`` of the causal pairs (more, and SDPA on the whole head is cheaper
    than our kernel on those rows after the head's sparse work)."""
    return (not _whole(rows, ctx.row_sets()) and head.inter in ("none", "q-boundary")
            and all(ctx.equal_rows(m) for m in rows) and ctx.row_area(rows) <= DENSE_ROWS_AREA)


def stage_pays(missing: dict, ctx: ForwardContext, density: float) -> bool:
    """Whether a fallback stage over the heads of ``missing`` {head: its row sets that missed} can
    save more than it costs: were every head to pass, their rows would run at most at ``density``
    instead of dense. Under ``STAGE_PAIRS`` of dense work saved, running those rows dense at once is
    faster even when the stage succeeds (one head at 128K: 8.6e9 pairs, ~7.5 ms dense on an H100,
    against ~9 ms for a stage); with more heads, or longer inputs, the stage is tried."""
    sets = ctx.row_sets()
    share = sum(1.0 if _whole(rows, sets) else ctx.row_area(rows) for rows in missing.values())
    return share * ctx.batch * ctx.n * (ctx.n + 1) / 2 * (1.0 - density) >= STAGE_PAIRS


def dense_rows_first(head: HeadPattern, rows: list[str], ctx: ForwardContext, density: float) -> bool:
    """Whether missing ``rows`` run dense at once rather than try the head's fallback first:
    dense they cost their share of the causal pairs, the fallback recomputes the head at the cap
    (``density``) and may miss again (a video's question: at once; a mixed layout's text: not)."""
    return dense_rows_apart(head, rows, ctx) and ctx.row_area(rows) <= density


def held_out_check(out, lse, v, estimates: Estimates, ctx: ForwardContext, indexes, recall: float):
    """(recall [Hq, S], output error [Hq, S], {head: its row sets that fail}): what each head's
    launches kept of the held-out rows' mass and how far their outputs are from dense, per row set
    (``ctx.row_sets()``); a set fails below ``recall`` or above an error of
    ``error_tolerance(recall)``. One host sync."""
    exact = launch.dense_heads(indexes)
    head_recall = verify.held_out_recall(lse, estimates, ctx, exact)
    head_error = verify.held_out_error(out, estimates.held_out_dense(v)[1], ctx, exact)
    sets, failing = ctx.row_sets(), {}
    for h, s in ((head_recall < recall) | (head_error > error_tolerance(recall))).nonzero().tolist():
        failing.setdefault(h, []).append(sets[s])
    return head_recall, head_error, failing


def error_tolerance(recall: float) -> float:
    """The output error a head may show on held-out rows at a recall target: the mass it may miss
    (1 - recall), but never under ``ERROR_FLOOR`` (bf16 rounding of the output alone is ~0.004)."""
    return max(1.0 - recall, ERROR_FLOOR)
