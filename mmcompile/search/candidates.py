"""The candidate patterns the search prices (MMInference Table 4, in keys rather than a fixed
FLOP target): A-shape windows, Vertical-Slash sizes, frame-stride Grids (inputs with video) and
Dense, each named so its scores can be stored and read back by name."""

from __future__ import annotations

from mmcompile.patterns.check import error_tolerance
from mmcompile.patterns.policy import STATIC_BONUS  # A-shape is kept unless another costs 1/1.2 of it
from mmcompile.patterns.specs import AShape, Dense, Grid, HeadPattern, VerticalSlash

A_SHAPE_LOCAL = (128, 256, 512, 1024, 2048, 4096, 8192)
VS_SIZES = ((128, 4), (512, 8), (1000, 16), (1000, 32), (2000, 64), (4000, 128))
GRID_LOCAL_FRAMES = (64, 128, 256)
GRID_BANDS = (0, 256)  # Grid.band: the row's own frame around it, from an original-order launch
MAX_COST = 0.8  # a candidate visiting 80% of the causal keys saves too little: Dense instead
PAIR_VS_SIZES = ((512, 8), (1000, 16), (2000, 64))  # 2D-Boundary candidates: VS of this size in every pair


def candidate_name(pattern) -> str:
    if isinstance(pattern, HeadPattern):  # a 2D-Boundary candidate, priced as a whole head
        return "2d:" + candidate_name(pattern.intra[0][1])
    if isinstance(pattern, AShape):
        return f"ashape:{pattern.sink}+{pattern.local}"
    if isinstance(pattern, VerticalSlash):
        return f"vs:{pattern.vertical}x{pattern.slash_blocks}"
    if isinstance(pattern, Grid):
        return f"grid:{pattern.stride_kind}/{pattern.local_frames}" + (f"+{pattern.band}" if pattern.band else "")
    return type(pattern).__name__.lower()


def candidates_for(has_video_frames: bool) -> list:
    """Intra patterns to score, cheapest family sizes first; Dense last (always reaches the target)."""
    out = [AShape(128, local) for local in A_SHAPE_LOCAL]
    out += [VerticalSlash(c, b) for c, b in VS_SIZES]
    if has_video_frames:
        out += [Grid(stride_kind="frame", local_frames=f, band=b) for b in GRID_BANDS for f in GRID_LOCAL_FRAMES]
    return out + [Dense()]


def pair_candidates(modalities: list[str]) -> list[HeadPattern]:
    """2D-Boundary heads for inputs of several query modalities (method.md 1.5): Vertical-Slash of
    one size in every (query, key) modality pair, its columns estimated per pair at run time."""
    if len(modalities) < 2:
        return []
    return [HeadPattern("2d-boundary", tuple((f"{a}>{b}", VerticalSlash(c, r)) for a in modalities for b in modalities))
            for c, r in PAIR_VS_SIZES]


def reaches(entry: dict, target: float) -> bool:
    """Whether a candidate's scores meet the target as the run-time check judges it
    (``check.held_out_check``): recall at least ``target`` and output error at most
    ``error_tolerance(target)``. On recall alone a Grid keeping 0.976 of a slash-bands head's mass
    at an output error of 0.22 won its video rows (1K, CPU, 2026-12-07)."""
    return entry["recall"] >= target and entry["err"] <= error_tolerance(target)


def choose_from_scores(scores: dict, target: float) -> HeadPattern:
    """One head's pattern from its scores ({row set: {candidate name: {recall, err, cost}}}): per
    row set the cheapest candidate reaching ``target`` (``reaches``) under ``MAX_COST`` (A-shape priced
    ``STATIC_BONUS`` lower; ties go to the earlier candidate), Dense where none does; row sets
    where some A-shape and some VS both reach it are listed ``interchangeable`` (at another length
    the other family may be the cheaper: a local band grows with the prompt, and its A-shape with
    it). A 2D-Boundary candidate (``pair_candidates``) replaces them all when it reaches the target
    on every row set for less in all (summed costs, A-shape's discounted). The search and
    ``retarget`` both choose here."""
    by_name = {candidate_name(p): p for p in candidates_for(True)}
    picks, either, prices = [], [], []
    for rows, entries in scores.items():
        best, price, reaching = Dense(), None, set()
        for name, entry in entries.items():
            pattern = by_name.get(name)
            if pattern is None or not reaches(entry, target) or entry["cost"] >= MAX_COST:
                continue
            reaching.add(type(pattern))
            p = entry["cost"] / STATIC_BONUS if isinstance(pattern, AShape) else entry["cost"]
            if price is None or p < price:
                best, price = pattern, p
        picks.append((rows, best))
        prices.append(1.0 if price is None else price)  # Dense: every causal key
        if {AShape, VerticalSlash} <= reaching and isinstance(best, (AShape, VerticalSlash)):
            either.append(rows)  # both families served these rows: an input may size either
    whole = _cheaper_pairs(scores, target, sum(prices))
    if whole is not None:
        return whole
    if all(isinstance(p, Dense) for _, p in picks):
        return HeadPattern("none", (("*", Dense()),))
    return HeadPattern("none" if [r for r, _ in picks] == ["*"] else "q-boundary", tuple(picks), tuple(either))


def _cheaper_pairs(scores: dict, target: float, price: float) -> HeadPattern | None:
    """The cheapest 2D-Boundary candidate reaching ``target`` on every row set whose summed cost
    over the row sets is below ``price`` (what the per-row-set choice costs), or None."""
    best = None
    for head in pair_candidates(list(scores)):
        name = candidate_name(head)
        entries = [scores[rows].get(name) for rows in scores]
        if any(e is None or not reaches(e, target) or e["cost"] >= MAX_COST for e in entries):
            continue
        cost = sum(e["cost"] for e in entries)
        if cost < price:
            best, price = head, cost
    return best
