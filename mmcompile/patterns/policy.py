"""Default head policy, used when no searched plan exists: per head, chosen online.

From the last-query estimate (vertical and slash scores, mass per grid phase) it predicts, per
head, the attention mass each candidate keeps at a given density budget: A-shape (sink + local),
Vertical-Slash (top columns + top diagonals) and Grid at the frame stride (line class + sink +
local frames). The head takes the candidate with the highest predicted recall; if even that is
below ``min_recall`` the head stays Dense (unstructured heads are not worth the risk). Among the
candidates predicted within ``TIE`` of the best the simplest wins (A-shape, then grid, then VS).
Predictions count each key or diagonal once per estimation row, so they are upper bounds where
pieces overlap.
"""

from __future__ import annotations

import torch

from . import estimate
from .layer import Estimates, ForwardContext
from .specs import AShape, Dense, Grid, HeadPattern, VerticalSlash


def budget_patterns(ctx: ForwardContext, density: float) -> dict:
    """Candidate patterns sized so each visits about ``density`` of the causal area."""
    keys = max(int(density * ctx.n / 2), 2 * ctx.block_n)  # keys per row on average
    sink = 128
    candidates = {
        "a-shape": AShape(sink=sink, local=max(keys - sink - ctx.block_m, ctx.block_n)),
        # A larger slash budget (keys // 8) measured recall 0.928 vs 0.916 but 155 vs 91 ms at 128K
        # (BENCHMARKS.md): kept small until the search tunes it per head.
        "vertical-slash": VerticalSlash(vertical=max(keys // 4, 30),
                                        slash=max(keys * 3 // 4 // (ctx.block_m // ctx.block_n + 1) // ctx.block_n, 50)),
    }
    if ctx.max_frame > 0:
        frames = max(keys - ctx.n // max(ctx.max_frame, 1) // 2, ctx.block_n)
        candidates["grid"] = Grid(stride_kind="frame", local_frames=frames, sink=64)
    return candidates


def _candidate_scores(probs, pos, valid, ctx: ForwardContext, candidates: dict) -> dict:
    """Predicted recall [B, H] of each candidate from one modality's estimation rows."""
    rows = valid.sum(-1).clamp(min=1)[:, None, None].to(probs.dtype)
    vertical = estimate.vertical_scores(probs, valid) / rows  # [B, H, N], mass per row
    slash = estimate.slash_scores(probs, pos, valid) / rows
    scores = {}
    ash = candidates["a-shape"]
    scores["a-shape"] = vertical[..., :ash.sink].sum(-1) + slash[..., :ash.local + ctx.block_m].sum(-1)
    vs = candidates["vertical-slash"]
    # Keys near the estimation rows look like vertical lines from there; count as columns only keys
    # well before them (near ones are the slashes' business), else VS is flattered on local heads.
    near = torch.arange(ctx.n, device=probs.device)[None, :] >= pos.min(-1).values[:, None] - min(LOCAL_GUARD, ctx.n // 16)
    far_vertical = vertical.masked_fill(near[:, None, :], 0.0)
    scores["vertical-slash"] = (far_vertical.topk(min(vs.vertical, ctx.n), -1).values.sum(-1) +
                                slash.topk(min(vs.slash, ctx.n), -1).values.sum(-1))
    if "grid" in candidates:
        grid = candidates["grid"]
        stride = ctx.frame_stride.clamp(min=1).long()[:, None, None]
        residue = torch.arange(ctx.n, device=probs.device)[None, None, :] % stride
        per_phase = torch.zeros(*vertical.shape[:2], max(ctx.max_frame, 1), device=probs.device)
        per_phase.scatter_add_(2, residue.expand_as(vertical), vertical)
        scores["grid"] = (per_phase.max(-1).values + vertical[..., :grid.sink].sum(-1) +
                          slash[..., :ctx.block_m].sum(-1))
    return scores


PREFERENCE = ("a-shape", "grid", "vertical-slash")  # simplest first: static, then structured, then free
LOCAL_GUARD = 1024  # keys this close before the estimation rows (at most N/16) are not scored as columns
TIE = 0.02  # a simpler candidate within this much predicted recall of the best one is preferred


def choose_patterns(q, k, ctx: ForwardContext, density: float = 0.1, min_recall: float = 0.8,
                    scale: float | None = None, estimates: Estimates | None = None) -> list[HeadPattern]:
    """One HeadPattern per query head for this input (one sync: the choice is made on the host).

    With one modality (or no layout) every head is No-Boundary. With several, each modality's
    queries are estimated from their own last queries and get their own pattern (Q-Boundary);
    there the choice is among original-order patterns (grid lines then become VS columns).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    estimates = estimates if estimates is not None else Estimates(q, k, ctx, scale)
    heads = list(range(q.shape[1]))
    candidates = budget_patterns(ctx, density)
    modalities = list(ctx.present) if len(ctx.present) > 1 else ["*"]
    if len(modalities) > 1:
        candidates.pop("grid", None)
    picks = {}  # modality -> (best recall [H], chosen name per head)
    for modality in modalities:
        probs, pos, valid = estimates.probs(modality, heads)
        scores = _candidate_scores(probs, pos, valid, ctx, candidates)
        names = [n for n in PREFERENCE if n in scores]
        table = torch.stack([scores[n].clamp(max=1.0) for n in names], dim=-1).mean(0)  # [H, candidates]
        best, which = table.max(-1)
        # The first candidate in preference order within TIE of the best wins.
        good = table >= best[:, None] - TIE
        first_good = good.float().argmax(-1)
        picks[modality] = (best.tolist(), [names[i] for i in first_good.tolist()])
    chosen = []
    for h in heads:
        if min(picks[m][0][h] for m in modalities) < min_recall:
            chosen.append(HeadPattern("none", (("*", Dense()),)))
        elif modalities == ["*"]:
            chosen.append(HeadPattern("none", (("*", candidates[picks["*"][1][h]]),)))
        else:
            chosen.append(HeadPattern("q-boundary", tuple((m, candidates[picks[m][1][h]]) for m in modalities)))
    return chosen
