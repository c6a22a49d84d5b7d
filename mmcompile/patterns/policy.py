"""Default head policy, used when no searched plan exists: per head and query modality, online.

From the last-query line scores (``estimate.LineScores``) it predicts, for each pattern family
and size, the share of the estimation rows' attention mass the index would keep, and gives each
head the cheapest (pattern, size) predicted to keep ``target`` of it within the density cap:
  A-shape         128 sink keys plus the L key blocks nearest the diagonal, L = 1 .. cap;
  Vertical-Slash  C far columns (C on a ladder) plus the R key blocks before the diagonal with the
                  most diagonal mass for a row (``intra.relative_block_peak``), R = 1 .. cap;
  Grid            (video rows with a known frame stride: a video-only input, or the video rows
                  of a mixed one) the phase lines, the sink and the same patch in the L earlier
                  frames the grid order's local blocks reach, L = 1 .. cap, with the row's own
                  frame around it (its original-order band, ``GRID_BANDS`` keys) or not (``_grid``);
                  it must leave out half the mass the others may (``grid_target``).
Costs are keys per query row, so the choice spends only what a head needs: a local head takes a
few blocks, not the whole budget. A key of Grid counts ``GRID_KEY_COST`` keys: on the H100 at 128K
the grid path computes 56-65% of A-shape's TFLOP/s on its blocks (BENCHMARKS.md, "Grid on copies
(lost)"), and priced in keys alone, Grid on the video rows of a mixed input made the op ~1.7 ms
slower than the VS it replaced ("The honest estimates on the GPU"). If no size reaches the target,
the family with the best prediction at the cap wins; below ``min_recall`` those rows run dense
(unstructured heads are not worth the risk; the whole head when they hold most of its causal
pairs). A-shape wins unless another family is cheaper by more than ``STATIC_BONUS`` (it does not
depend on the estimate). Columns are ranked as the builder ranks them
(``intra.column_scores``), and the builder takes VS's columns and blocks from the policy's own
ranking. A-shape's and VS's predictions are the recall of exactly the index that is then built, on
the estimation rows (``row_recall``; at least that where a query block mixes modalities); Grid's
is a lower bound. What a head keeps on other rows is measured after the kernel on held-out rows
(``verify``), and a head's rows under the target then run its fallbacks (``choose_with_fallbacks``:
the same family grown to the cap, never Grid; on rows that see video keys with a frame stride, VS
at the cap with the frame-stride lines ranked first: ``VerticalSlash.lines``; then Grid where those
rows weighed it and chose otherwise), then dense.

With a plan (``families``: one HeadPattern per head) the plan fixes each head's family per query
modality and the policy only sizes it for the input at hand (``_choose_sized``): budgets searched
at a calibration length are too small at four times that length, types carry over.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import torch

from . import estimate, intra, row_recall
from .choice_graph import side_by_side
from .estimate import LineScores
from .index_builder import device_list
from .check import DENSE_ROWS_AREA
from .context import ForwardContext
from .estimates import Estimates
from .layout import VIDEO
from .specs import AShape, Dense, Grid, HeadPattern, VerticalSlash

SINK = 128  # A-shape sink keys
COLUMN_LADDER = (32, 128, 512, 2048, 8192)  # VS column counts tried (the cap trims the ladder)
STATIC_BONUS = 1.2  # A-shape is kept unless another family costs 1/1.2 of it or less
GRID_KEY_COST = 1.7  # a key of Grid costs ~1.7 keys of A-shape/VS: measured kernel cost (docstring)
GRID_MISS_SHARE = 0.5  # Grid may leave out this share of the mass the others may (``grid_target``)
TARGET = 0.97  # predicted recall a head's pattern must reach, when the cap allows
MIN_RECALL = 0.8  # predicted recall under which a head runs dense
GRID_SINK = 64  # first keys every grid row keeps (columns in the grid order)
GRID_BANDS = (0, 64, 128, 256, 512, 1024)  # original-order keys a grid row keeps before its query block (Grid.band)
FAMILIES = (AShape, VerticalSlash, Grid, Dense)  # what a plan may fix; a family's code is its index
EITHER = -1  # family code: A-shape or VS, whichever is better (a plan's Grid the input cannot run)


def _first_reaching(curve: torch.Tensor, target: float):
    """(index of the first entry >= target, else the last; its value) along the last dim."""
    reach = curve >= target
    at = torch.where(reach.any(-1), reach.float().argmax(-1), curve.shape[-1] - 1)
    return at, curve.gather(-1, at[..., None])[..., 0]


def _a_shape(lines: LineScores, cap_blocks, block_m, block_n, target):
    """Per head: (recall, cost, local) of the smallest A-shape reaching the target (its recall on
    the estimation rows, exactly: ``row_recall``)."""
    curve = row_recall.a_shape_curve(lines, -(-SINK // block_n), cap_blocks, block_m, block_n)
    at, recall = _first_reaching(curve.mean(0), target)  # one choice per head for the batch
    local = (at + 1) * block_n
    return recall, SINK + local, local


def _vertical_slash(lines: LineScores, ranking, probs_of, cap_keys, cap_blocks, n, block_m, block_n, target):
    """Per head: (recall, cost, columns, blocks) of the cheapest ladder step reaching the target,
    and the (columns, block order) the builder takes them from. Columns are ranked as the builder
    ranks them (``ranking``: ``intra.column_scores`` of ``lines``); blocks by the slash mass the
    top columns of the ladder do not account for. Each step's recall is that of exactly those
    columns and blocks on the estimation rows (``row_recall.vs_curves``)."""
    ladder = [c for c in COLUMN_LADDER if c < cap_keys] or [COLUMN_LADDER[0]]
    top = ranking.topk(min(ladder[-1], n), -1).indices
    probs = probs_of(top)  # [B, H, L, C]
    slash = (lines.slash - estimate.slash_of_columns(probs, lines, top, n)).clamp(min=0) / lines.rows
    priority = intra.relative_block_peak(slash, block_m, block_n)
    forced = -(-intra.FORCED_LOCAL_DIAGONALS // block_n)
    priority[..., :forced] += 2.0  # forced blocks come first (masses are at most 1), as the builder takes them
    order = priority.argsort(-1, descending=True)
    # Every ladder step at once: [H, steps, room] curves, each step's tail past its room masked off.
    rooms = [min(_slash_room(c, cap_keys, cap_blocks, block_n), order.shape[-1]) for c in ladder]
    device = order.device
    sizes, room = device_list(ladder, device), device_list(rooms, device)
    width = torch.arange(max(rooms), device=device)
    curves = row_recall.vs_curves(lines, order, probs, top, [min(c, n) for c in ladder], max(rooms), forced,
                                  block_m, block_n).mean(0)
    reach = (curves >= target) & (width < room[:, None])
    last = device_list([r - 1 for r in rooms], device)
    at = torch.where(reach.any(-1), reach.float().argmax(-1), last)  # as _first_reaching, per step
    recall = curves.gather(-1, at[..., None])[..., 0]  # [H, steps]
    blocks = (at + 1).clamp(min=forced)  # the builder takes the forced blocks in any case
    cost = sizes + blocks * block_n
    # _better over the steps in ladder order: the first cheapest step reaching the target, else
    # the first with the highest recall.
    reached = recall >= target
    pick = torch.where(reached.any(-1), torch.where(reached, cost.float(), float("inf")).argmin(-1),
                       recall.argmax(-1))[:, None]
    return (recall.gather(-1, pick)[:, 0], cost.gather(-1, pick)[:, 0], sizes[pick[:, 0]],
            blocks.gather(-1, pick)[:, 0], (top, order))


def _slash_room(columns: int, cap_keys: float, cap_blocks: int, block_n: int) -> int:
    """Slash blocks left under the cap beside ``columns`` columns (at least one)."""
    return max(min(cap_blocks, int((cap_keys - columns) // block_n)), 1)


def grid_target(target: float) -> float:
    """The recall a Grid must reach where A-shape and VS must reach ``target``: it may leave out
    ``GRID_MISS_SHARE`` of their share. What Grid leaves out is the near part of the local band
    (it keeps lines, the same patch in recent frames and a band of its own frame), keys the output
    leans on: the boundary heads' video rows at recall 0.975 were off by 0.07-0.10 in output where
    VS at 0.97 was off by 0.03 (128K, CPU, 2026-12-07: five draws, 20 misses -> 1). Where no size
    reaches it (the GPU's draw: 0.981 at the cap), the best prediction at the cap wins as before."""
    return 1.0 - (1.0 - target) * GRID_MISS_SHARE


def _as_plain(grid_recall: torch.Tensor) -> torch.Tensor:
    """A Grid's predicted recall on the scale A-shape's and VS's are judged on (``grid_target``
    maps to ``target``), to compare them in ``_better``."""
    return 1.0 - (1.0 - grid_recall) / GRID_MISS_SHARE


def _better(recall, cost, old_recall, old_cost, target):
    """Reaching the target beats not reaching it; among those that reach it the cheaper wins;
    among those that do not, the higher recall."""
    reach, old_reach = recall >= target, old_recall >= target  # one nested where: 7 ops, not 14
    return torch.where(reach == old_reach, torch.where(reach, cost < old_cost, recall > old_recall), reach)


def _grid(vertical, slash, ctx: ForwardContext, rows: int, cap_keys, target, first_row: int):
    """Per head: (recall, cost, local frames, band) of the cheapest frame-stride Grid reaching the
    target; cost in A-shape keys (a grid key counts ``GRID_KEY_COST``).

    What the grid order keeps of a video row: the phase class (the vertical lines, the heaviest
    phase at the frame stride, as ``intra.grid_sets`` picks it), the same patch in the earlier
    frames its local blocks and diagonal block reach (slash mass at multiples of the stride), and
    the ``GRID_SINK`` first keys. The three are disjoint but for the sink keys in the phase class
    (removed) and the phase class's own rows (1 / stride of them). With a band (``Grid.band``) the
    row also keeps its own frame around it: the slash mass at distances up to the band plus half a
    query block (a row's average reach), the multiples of the stride left out (counted above),
    less the line mass of the phase keys from ``first_row`` (the first estimation row) minus that
    reach on (a line key so close to a row is in its band: counted once; with lines that decay
    over frames the nearest is the heaviest). Costs are keys per row: the line band, the local
    slots, half a diagonal block and the sink at the grid's price, the band and half a query block
    at A-shape's. The recall the built index reaches is measured after the kernel (``verify``);
    this only ranks candidates."""
    stride = ctx.frame_stride.clamp(min=1).long()  # [B]
    device = vertical.device
    pos = torch.arange(ctx.n, device=device)
    on_video = vertical if ctx.modality is None else vertical * (ctx.modality == VIDEO)[:, None, :]
    lines, phase = intra.frame_phase(on_video, ctx.frame_stride, ctx.max_frame)  # [B, H]: as intra.grid_sets
    sink = vertical[..., :GRID_SINK]
    in_phase = (pos[:GRID_SINK][None, None, :] % stride[:, None, None]) == phase[..., None]
    sink_mass = (sink * ~in_phase).sum(-1)
    frames = -(-ctx.n // max(ctx.max_frame, 1))
    by_frame = torch.zeros(*vertical.shape[:2], frames + 1, device=device)  # slash mass at offset j * stride
    j = pos // stride[:, None]
    at_multiple = (pos % stride[:, None] == 0)[:, None, :].expand_as(slash)
    by_frame.scatter_add_(2, j[:, None, :].expand_as(slash).clamp(max=frames), torch.where(at_multiple, slash, 0.0))
    reach = torch.cumsum(by_frame, -1)  # [B, H, F + 1]: same patch up to j frames back
    block_n = ctx.block_n
    steps = max(min(int(cap_keys // block_n), -(-frames // block_n)), 1)
    local = torch.arange(1, steps + 1, device=device) * block_n  # local slots: whole key blocks
    covered = (local + ctx.block_m // 2).clamp(max=frames)  # frames back a row reaches, on average
    curve = (lines + sink_mass)[..., None] + reach.gather(-1, covered.expand(*reach.shape[:2], -1))  # [B, H, S]
    bands = [b for b in GRID_BANDS if b + ctx.block_m < cap_keys] or [0]
    reach = [b + ctx.block_m // 2 if b else 0 for b in bands]
    reach_keys = device_list(reach, device)  # [W]
    # Sums over the offsets up to the farthest reach, and over the keys from the first row's
    # farthest reach on: scans of those ends alone, not of all N.
    near = pos[:min(max(reach), ctx.n - 1) + 1]
    in_frame = torch.where(near % stride[:, None] == 0, 0.0, 1.0)[:, None, :] * slash[..., :near.numel()]
    in_frame = torch.cumsum(in_frame, -1).gather(-1, reach_keys.clamp(max=ctx.n - 1).expand(*slash.shape[:2], -1))
    lo = min(max(first_row - max(reach), 0), ctx.n - 1)  # the tail's first key
    phase_mass = torch.where(pos[lo:] % stride[:, None, None] == phase[..., None], on_video[..., lo:], 0.0)
    from_on = phase_mass.flip(-1).cumsum(-1).flip(-1)  # line mass of the phase keys at or after each key of the tail
    near_lines = from_on.gather(-1, ((first_row - reach_keys).clamp(0, ctx.n - 1) - lo).clamp(min=0)
                                .expand(*slash.shape[:2], -1))
    in_frame = torch.where(reach_keys > 0, (in_frame - near_lines).clamp(min=0), 0.0)  # [B, H, W]
    at, recall = _first_reaching((curve[:, :, None, :] + in_frame[..., None]).clamp(max=1.0).mean(0), target)
    lines_keys = rows / max(ctx.max_frame, 1) + block_n
    cost = (lines_keys + (at + 1).float() * block_n + ctx.block_m / 2 + GRID_SINK) * GRID_KEY_COST \
        + reach_keys.float()  # [H, W]
    reached = recall >= target
    pick = torch.where(reached.any(-1), torch.where(reached, cost, float("inf")).argmin(-1), recall.argmax(-1))[:, None]
    band = device_list(bands, device)[pick[:, 0]]
    return recall.gather(-1, pick)[:, 0], cost.gather(-1, pick)[:, 0], (at.gather(-1, pick)[:, 0] + 1) * block_n, band


def _row_count(ctx: ForwardContext, modality: str) -> int:
    """Rows per sample of a row set ("*": all; N when the batch's counts differ), as Grid prices them."""
    return (ctx.row_counts.get(modality) if modality != "*" else None) or ctx.n


def _caps(ctx: ForwardContext, density: float) -> tuple[float, int]:
    """(average keys per row, key blocks) a head may visit at the density cap."""
    cap_keys = max(density * ctx.n / 2, 2 * ctx.block_n)
    return cap_keys, max(min(int(cap_keys // ctx.block_n), -(-ctx.n // ctx.block_n)), 1)


def _at_cap(pattern, ctx: ForwardContext, density: float, rows: str):
    """The same family grown to the density cap (what a head that missed the target tries before
    dense): A-shape's window, VS's columns (the ladder's top under the cap) and slash blocks. On
    ``rows`` that see video keys with a frame stride (``_weighs_lines``) both become VS at the cap
    with the frame-stride lines ranked first: a line over recent frames only is heavy at the
    estimation rows for their own frames, so the first choice ranked the lines the held-out rows
    need too low; all frames of the phase class beside slash blocks (the local band) keep them."""
    cap_keys, cap_blocks = _caps(ctx, density)
    columns = max([c for c in COLUMN_LADDER if c < cap_keys] or [COLUMN_LADDER[0]])
    room = _slash_room(columns, cap_keys, cap_blocks, ctx.block_n)
    if isinstance(pattern, (AShape, VerticalSlash)) and _weighs_lines(rows, ctx):
        return VerticalSlash(columns, room, lines=True)
    if isinstance(pattern, AShape):
        return AShape(pattern.sink, max(pattern.local, cap_blocks * ctx.block_n))
    if isinstance(pattern, VerticalSlash):
        return VerticalSlash(max(pattern.vertical, columns), max(pattern.slash_blocks, room))
    return pattern


@dataclasses.dataclass
class _Curves:
    """Per head (tensors [heads]), each family's cheapest size predicted to reach the target under
    the cap, its predicted recall and its cost (keys per row; A-shape's divided by
    ``STATIC_BONUS``, Grid's times ``GRID_KEY_COST``). Grid's are None where Grid was not weighed."""

    a_recall: torch.Tensor
    a_cost: torch.Tensor
    a_local: torch.Tensor
    v_recall: torch.Tensor
    v_cost: torch.Tensor
    v_cols: torch.Tensor
    v_blocks: torch.Tensor
    g_recall: torch.Tensor | None = None
    g_cost: torch.Tensor | None = None
    g_local: torch.Tensor | None = None
    g_band: torch.Tensor | None = None


def _curves(estimates: Estimates, modality: str, heads: list[int], ctx: ForwardContext, density: float,
            target: float, grid: bool) -> _Curves:
    """A-shape's, VS's and (when ``grid``) Grid's choice for these heads on one row set."""
    lines = estimates.lines(modality, heads)
    lines.rows  # a cached property: computed once here, not by two of the parts below at once
    cap_keys, cap_blocks = _caps(ctx, density)
    parts = [lambda: _a_shape(lines, cap_blocks, ctx.block_m, ctx.block_n, target),
             lambda: _vertical_slash(lines, estimates.column_ranking(modality, heads),
                                     estimates.column_probs(lines, heads), cap_keys, cap_blocks, ctx.n, ctx.block_m,
                                     ctx.block_n, target)]
    if grid:  # masses per row; priced at its measured kernel cost: Grid wins only where it saves more
        parts.append(lambda: _grid(lines.vertical / lines.rows, lines.slash / lines.rows, ctx,
                                   _row_count(ctx, modality), cap_keys, grid_target(target),
                                   ctx.last_rows[modality][2]))
    (a_recall, a_cost, a_local), (v_recall, v_cost, v_cols, v_blocks, ranked), *g = side_by_side(
        parts, estimates.q.device)
    estimates.keep_vs_ranking(modality, heads, *ranked)  # the builder takes the same columns and blocks
    c = _Curves(a_recall, a_cost.float() / STATIC_BONUS, a_local, v_recall, v_cost.float(), v_cols, v_blocks)
    if grid:
        c.g_recall, c.g_cost, c.g_local, c.g_band = g[0]
    return c


def _online_pick(c: _Curves, target: float):
    """(recall, family code, original-order family code) per head: the better of A-shape and VS,
    then Grid where it was weighed and is better still."""
    plain = _better(c.v_recall, c.v_cost, c.a_recall, c.a_cost, target).long()  # 0 A-shape, 1 VS
    recall = torch.where(plain == 1, c.v_recall, c.a_recall)
    names = plain
    if c.g_recall is not None:
        take_grid = _better(_as_plain(c.g_recall), c.g_cost, recall,
                            torch.where(plain == 1, c.v_cost, c.a_cost), target)
        recall, names = torch.where(take_grid, c.g_recall, recall), torch.where(take_grid, 2, names)
    return recall, names, plain


def _table(recall, names, plain, c: _Curves) -> torch.Tensor:
    """float32 [heads, 8]: a row set's choice per head (recall, family, original-order family,
    A-shape local, VS columns, VS blocks, Grid local, Grid band), read by ``read_tables``."""
    g_local = c.g_local if c.g_local is not None else torch.zeros_like(c.a_local)
    g_band = c.g_band if c.g_band is not None else torch.zeros_like(c.a_local)
    return torch.stack([recall, names.float(), plain.float(), c.a_local.float(), c.v_cols.float(),
                        c.v_blocks.float(), g_local.float(), g_band.float()], -1)


def read_tables(tables: torch.Tensor, ctx: ForwardContext) -> dict:
    """{row set: (predicted recall list, pattern list, original-order pattern list, Grid list)} from
    ``choice_tables``, read in the layer's one host sync; the Grid at its sized frames and band,
    None where those rows weighed no Grid."""
    grid = FAMILIES.index(Grid)
    return {name: ([r[0] for r in table], [_pattern(r[1], *r[3:]) for r in table],
                   [_pattern(r[2], *r[3:]) for r in table],
                   [_pattern(grid, *r[3:]) if r[6] > 0 else None for r in table])
            for name, table in zip(ctx.row_sets(), tables.tolist())}


def _choose_one(estimates: Estimates, modality: str, heads: list[int], ctx: ForwardContext, density: float,
                target: float, grid: bool):
    """Per head, one query modality's choice (``_table``: read by ``read_tables`` as predicted
    recall, pattern and original-order pattern; the last is the best pattern other than Grid, the
    fallback of a grid head)."""
    c = _curves(estimates, modality, heads, ctx, density, target, grid)
    return _table(*_online_pick(c, target), c)


def _pattern(kind, local, cols, blks, frames, band):
    """The pattern of family code ``kind`` (index in ``FAMILIES``) with its chosen size (only that
    one is built: this runs per head and row set in every layer)."""
    kind = int(kind)
    if kind == 0:
        return AShape(SINK, int(local))
    if kind == 1:
        return VerticalSlash(int(cols), int(blks))
    if kind == 2:
        return Grid(stride_kind="frame", local_frames=int(frames), sink=GRID_SINK, band=int(band))
    return Dense()


def _choose_sized(estimates: Estimates, modality: str, heads: list[int], ctx: ForwardContext, density: float,
                  target: float, codes: list[int], grid: bool, replannable: list[bool]):
    """``_choose_one`` with each head's family fixed by a plan (``codes``: per head its index in
    ``FAMILIES``, or ``EITHER``): the cheapest size of that family predicted to reach ``target``
    under the cap. A ``replannable`` head whose plan says Dense, or whose A-shape or VS is
    predicted short of the target even at the cap, gets the online choice. A plan's Grid is kept:
    the search measured it on the built index, while ``_grid``'s estimate is a lower bound that can
    sit far under it (0.15-0.45 predicted for video rows measured at 0.996). Both choices come from
    one set of curves, so a plan costs what the online policy costs (a second pass for the
    re-chosen heads made the op 1.4-1.7x slower at 128K on the H100)."""
    c = _curves(estimates, modality, heads, ctx, density, target, grid)
    online_recall, online_names, online_plain = _online_pick(c, target)
    code = device_list(codes, estimates.q.device).long()
    plain = torch.where((code == 0) | (code == 1) | (code == 3), code, online_plain)  # Grid, EITHER: the better
    names = torch.where(code == 2, 2, plain)
    curves = [c.a_recall, c.v_recall, c.g_recall if c.g_recall is not None else torch.zeros_like(c.a_recall),
              torch.ones_like(c.a_recall)]
    recall = torch.stack(curves, -1).gather(-1, names[:, None])[:, 0]
    short = ((code == 0) | (code == 1)) & (recall < target)
    replan = ((code == 3) | short) & device_list(replannable, code.device).bool()
    return _table(torch.where(replan, online_recall, recall), torch.where(replan, online_names, names),
                  torch.where(replan, online_plain, plain), c)


def choose_patterns(q, k, ctx: ForwardContext, density: float = 0.1, min_recall: float = MIN_RECALL,
                    scale: float | None = None, estimates: Estimates | None = None,
                    target: float = TARGET, families: Sequence[HeadPattern] | None = None) -> list[HeadPattern]:
    """One HeadPattern per query head for this input (one host sync).

    With one modality (or no layout) every head is No-Boundary. With several, each modality's
    queries are estimated from their own last queries and get their own pattern (Q-Boundary).
    Video rows with a known frame stride also weigh Grid (in a Q-boundary head it covers the
    video rows alone: ``layer_index.grid_rows``). ``density`` caps each head's cost (keys per row
    over the causal area). ``families``: a plan's patterns, whose types (not sizes) each head
    keeps (``choose_with_fallbacks``).
    """
    return choose_with_fallbacks(q, k, ctx, density, min_recall, scale, estimates, target, families)[0]


def choose_with_fallbacks(q, k, ctx: ForwardContext, density: float = 0.1, min_recall: float = MIN_RECALL,
                          scale: float | None = None, estimates: Estimates | None = None,
                          target: float = TARGET, families: Sequence[HeadPattern] | None = None,
                          ) -> tuple[list[HeadPattern], dict]:
    """``choose_patterns`` plus {head: its fallbacks, in order}: what ``layer_attention`` runs
    for a head's rows that miss the recall target on the held-out rows, before they run dense.
    First the head's best original-order pattern (VS or A-shape instead of Grid) grown to the
    density cap (``_at_cap``), then Grid at its sized frames and band on rows that weighed it and
    chose otherwise; heads whose patterns these do not change have none.

    ``families`` (one HeadPattern per query head, a plan's): per head and query modality of this
    input, the family of the plan's pattern for those rows (``_plan_pattern``) is the only one
    weighed (both A-shape and VS where the plan lists those rows ``interchangeable``: its search
    found both reaching the target), sized for this input (``_choose_sized``); a head predicted
    under ``min_recall`` still runs Dense (a plan's Grid excepted: its prediction is a lower bound,
    and the held-out check judges it). A row set whose plan family (A-shape or VS) is predicted short of ``target`` even
    at the cap, or whose plan says Dense, gets the online choice among all families (as good a
    prediction or better; ``_choose_sized``): a type searched at 32K need not fit a 128K prompt, and the
    search writes Dense where no candidate reached the target at its length while heads that need
    most of a 32K prompt often need far less of a 128K one (planted families at 128K, H100: with
    the plan's Dense kept, 59 of 308 heads ran dense against the online policy's 47). The held-out
    check still sends a head dense that misses. A Grid where this input cannot run Grid (no frame
    stride, or rows ``_weighs_grid`` refuses) becomes the better of A-shape and VS, as online. A
    head the policy cannot size (2d-boundary, BlockSparse) runs the plan's pattern as it is, with
    no fallback. None: the online choice among all families.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    estimates = estimates if estimates is not None else Estimates(q, k, ctx, scale)
    return patterns_from_tables(read_tables(choice_tables(estimates, ctx, density, target, families), ctx), ctx,
                                min_recall, density, families)


def choice_tables(estimates: Estimates, ctx: ForwardContext, density: float, target: float,
                  families: Sequence[HeadPattern] | None = None) -> torch.Tensor:
    """float32 [row sets, heads, 8]: every row set's ``_table`` (``ctx.row_sets()`` order), all
    on the device and without a host sync or a data-dependent shape, so that a layer's estimate and
    choice can be captured once and replayed (``choice_graph``). Read by ``read_tables``."""
    heads = list(range(estimates.q.shape[1]))
    modalities = ctx.row_sets()
    if families is None:
        parts = [functools.partial(_choose_one, estimates, m, heads, ctx, density, target,
                                   _weighs_grid(m, modalities, ctx)) for m in modalities]
        return torch.stack(side_by_side(parts, estimates.q.device))
    if len(families) != len(heads):
        raise ValueError(f"{len(families)} plan head patterns for {len(heads)} query heads")
    kept = [not _sizable(head) for head in families]
    parts = [functools.partial(_choose_sized, estimates, m, heads, ctx, density, target,
                               [FAMILIES.index(Dense) if kept[h] else
                                _family_code(families[h], m, _weighs_grid(m, modalities, ctx))
                                for h in heads],
                               _weighs_grid(m, modalities, ctx), [not fixed for fixed in kept])
             for m in modalities]
    return torch.stack(side_by_side(parts, estimates.q.device))


def patterns_from_tables(picks: dict, ctx: ForwardContext, min_recall: float, density: float,
                         families: Sequence[HeadPattern] | None = None) -> tuple[list[HeadPattern], dict]:
    """``choose_with_fallbacks``' result from the tables as ``read_tables`` read them."""
    modalities = ctx.row_sets()
    heads = range(len(picks[modalities[0]][0]))
    kept = {} if families is None else {h: head for h, head in enumerate(families) if not _sizable(head)}
    chosen, fallbacks = [], {}
    for h in heads:
        if h in kept:
            chosen.append(kept[h])
            continue
        # A plan's Grid is not judged by its prediction, a lower bound (``_choose_sized``): the
        # held-out check measures it, and a head that misses runs its fallback, then dense.
        # Rows predicted under ``min_recall`` run dense; the head's other query modalities keep
        # theirs, unless those rows hold most of the causal pairs (then SDPA on the head is cheaper).
        judged = [m for m in modalities if families is None or not isinstance(picks[m][1][h], Grid)]
        low = {m for m in judged if picks[m][0][h] < min_recall}
        if low and (low >= set(modalities) or ctx.row_area(sorted(low)) > DENSE_ROWS_AREA):
            chosen.append(HeadPattern("none", (("*", Dense()),)))
            continue
        inter = "none" if modalities == ["*"] else "q-boundary"
        head = HeadPattern(inter, tuple((m, Dense() if m in low else picks[m][1][h]) for m in modalities))
        chosen.append(head)
        grown = HeadPattern(inter, tuple((m, Dense() if m in low else _at_cap(picks[m][2][h], ctx, density, m))
                                         for m in modalities))
        # Then Grid, where those rows weighed it and chose otherwise: its estimate is a lower bound
        # (``_choose_sized``), and where VS's columns fit the last rows alone it holds the video's
        # structure (a boundary head's video rows: VS at the cap 0.093 off, Grid 0.004; CPU, 32K).
        grids = {m: picks[m][3][h] for m in modalities if picks[m][3][h] is not None
                 and m not in low and not isinstance(picks[m][1][h], Grid)}
        stages = tuple(alt for alt in (grown, HeadPattern(inter, tuple((m, grids.get(m, p)) for m, p in head.intra)))
                       if alt != head)
        if stages:
            fallbacks[h] = stages
    return chosen, fallbacks


def _plan_pattern(head: HeadPattern, rows: str):
    """A plan head's pattern for one row set of this input: its ``_plan_entry`` (Dense if none)."""
    return dict(head.intra).get(_plan_entry(head, rows), Dense())


def _plan_entry(head: HeadPattern, rows: str) -> str:
    """The plan head's intra entry (modality or "*") for one row set of this input: as
    ``pattern_for`` reads it (the modality's, else "*"); for "*" (an input of one modality) as the
    index builder reads a fixed head (``layer_index._selectors``): its "*" entry, else its first."""
    names = dict(head.intra)
    if rows == "*":
        return "*" if "*" in names else head.intra[0][0]
    return rows if rows in names else "*"


def _sizable(head: HeadPattern) -> bool:
    """Whether the policy can size every pattern of a plan head (its families are in ``FAMILIES``)."""
    return head.inter != "2d-boundary" and all(type(p) in FAMILIES for _, p in head.intra)


def _family_code(head: HeadPattern, rows: str, grid: bool) -> int:
    """The family a row set may take: the index of the type of the plan head's pattern for it
    (``_plan_pattern``) in ``FAMILIES``; ``EITHER`` for a Grid these rows cannot run, and for an
    A-shape or VS the plan lists as interchangeable on the entry that pattern came from."""
    pattern = _plan_pattern(head, rows)
    if isinstance(pattern, Grid):
        return FAMILIES.index(Grid) if grid else EITHER
    if isinstance(pattern, (AShape, VerticalSlash)) and _plan_entry(head, rows) in head.interchangeable:
        return EITHER
    return FAMILIES.index(type(pattern))


def _weighs_lines(rows: str, ctx: ForwardContext) -> bool:
    """Whether a row set's fallback ranks the frame-stride lines first: rows that see video keys
    with a frame stride (the video rows, or all rows when they are one set)."""
    return ctx.max_frame > 0 and "video" in ctx.present and rows in ("video", "*")


def _weighs_grid(rows: str, modalities: list[str], ctx: ForwardContext) -> bool:
    """Grid is a candidate for video rows with a frame stride: all rows of a video-only input,
    the video rows of a mixed one when every sample has as many (one grid launch lists them)."""
    if ctx.max_frame <= 0:
        return False
    if modalities == ["*"]:
        return list(ctx.present) == ["video"]
    return rows == "video" and ctx.row_counts.get("video") is not None
