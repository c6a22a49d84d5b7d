"""Per-layer entry point: q, k, v, the forward's layout and the layer's head patterns -> attention.

Heads are grouped by how the kernel must address them: heads in original order (A-shape, VS,
block-sparse; Q-boundary heads too, whose per-modality sets are combined per query block), grid
heads (their own permutation), 2D-Boundary heads (the modality-major permutation, boundary2d.py)
and dense heads (the dense path). One kernel launch per group writes into one output. No host
sync: small host lists reach the GPU through ``device_list``. Estimation runs once per query
modality for all heads; heads whose pattern has the same type are indexed together even when
their sizes differ, so the only Python loops run over pattern types and modalities, never over
data. A Q-boundary head whose Grid is one modality's pattern runs in two launches: its other
modalities' rows in original order, then that modality's rows alone in the grid order (the kernel
writes only the rows an order lists, so the second replaces the first's work on those rows).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections import defaultdict
from typing import Sequence

import torch

from mmcompile.kernels import SparseIndex, sparse_attention_forward

from . import estimate, intra
from .boundary2d import boundary2d_index, modality_major, pair_pattern
from .index_builder import BlockSets, build_index, device_list, empty_sets, head_slice, stack_heads
from .layout import MODALITY_NAMES, PAD, VIDEO, ModalityLayout, check_layout
from .specs import AShape, BlockSparse, Dense, Grid, HeadPattern, VerticalSlash

DEFAULT_BLOCK = (128, 64)  # query x key tile of sparse indexes: fastest on the H100 (BENCHMARKS.md)
ERROR_FLOOR = 0.01  # the least output error tolerance of the held-out check (``error_tolerance``)
PLAN_SIZES = ("online", "plan")  # how a plan's head patterns run: types sized for the input, or as searched


@dataclasses.dataclass(frozen=True)
class ForwardContext:
    """What every layer of one forward needs from the layout, computed once."""
    n: int
    batch: int
    modality: torch.Tensor | None  # int32 [B, N]
    key_pad: torch.Tensor | None  # bool [B, N]
    frame_stride: torch.Tensor  # int32 [B]
    max_frame: int
    present: dict  # modality name -> bool [B, M]: query blocks holding rows of that modality
    last_rows: dict  # "*" or modality name -> (positions [B, L], valid [B, L], earliest position int, consecutive)
    block_m: int = DEFAULT_BLOCK[0]
    block_n: int = DEFAULT_BLOCK[1]
    row_counts: dict = dataclasses.field(default_factory=dict)  # modality name -> rows per sample (int), when equal
    check_rows: dict = dataclasses.field(default_factory=dict)  # as last_rows: held-out rows (pos, valid)
    # modality name -> the share of the causal (query, key) pairs its rows hold (largest over the batch)
    areas: dict = dataclasses.field(default_factory=dict)
    # modality name -> its rows in query blocks shared with other rows (largest count over the batch)
    shared_rows: dict = dataclasses.field(default_factory=dict)
    # choice_graph's captures, per key; not an init field, so a dataclasses.replace() starts without them
    replays: dict = dataclasses.field(default_factory=dict, init=False, compare=False, repr=False)

    def equal_rows(self, name: str) -> bool:
        """Whether every sample has as many rows of modality ``name`` (a launch over one modality's
        rows lists the same number of slots per sample)."""
        return self.modality is not None and self.row_counts.get(name) is not None

    def rows_of(self, name: str) -> torch.Tensor | None:
        """bool [B, N]: the rows of modality ``name`` when ``equal_rows(name)``; else None."""
        return self.modality == _modality_id(name) if self.equal_rows(name) else None

    def row_sets(self) -> list[str]:
        """The estimation-row sets the policy chooses from and a layer is judged on: each query
        modality's when there are several (each is estimated apart), else the last rows overall."""
        return list(self.present) if len(self.present) > 1 else ["*"]

    def row_area(self, names) -> float:
        """The share of the causal pairs that the rows of modalities ``names`` hold (what running
        them dense costs, over a dense head)."""
        return sum(self.areas[name] for name in names)

    @functools.cached_property
    def dense_rows(self) -> dict:
        """{modality name, or ("band gap", name): (q_order int32 [B, rows], span int32 [B, M, 2])}:
        the launches over those rows alone (``_rows_alone``) of this forward, filled on first use."""
        return {}

    @functools.cached_property
    def band_rows(self) -> dict:
        """{grid row set (None: all rows, or a modality name): int32 [B, N]}: ``_band_rows`` of this
        forward, filled on first use (the same for every layer)."""
        return {}

    @functools.cached_property
    def modality_order(self) -> tuple:
        """(order, sort keys, start, end, slot_of): the 2D-Boundary heads' modality-major order
        (``boundary2d.modality_major``) and, per original position, its slot (int64 [B, N]).
        Built on first use, once per forward, not per layer."""
        order, keys, start, end = modality_major(self.modality)
        slot_of = torch.empty_like(order, dtype=torch.long).scatter_(
            1, order.long(), torch.arange(self.n, device=order.device).expand_as(order))
        return order, keys, start, end, slot_of

    @functools.cached_property
    def held_out(self) -> tuple:
        """(pos int64 [B, S * L], valid bool [B, S * L]): the held-out rows (``check_rows``) of the
        S ``row_sets()`` side by side, in that order (each set has L slots, valid or not), so a
        layer measures its recall on all of them with one dense pass and one reduction
        (``verify.held_out_recall``). Built on first use, once per forward, not per layer."""
        names = self.row_sets()
        if len(names) == 1:
            return self.check_rows[names[0]]
        return tuple(torch.cat([self.check_rows[name][i] for name in names], dim=1) for i in range(2))


def forward_context(layout: ModalityLayout | None, n: int, batch: int, device,
                    block_m: int = DEFAULT_BLOCK[0], block_n: int = DEFAULT_BLOCK[1]) -> ForwardContext:
    """Once per forward (the one place that syncs with the host)."""
    if layout is None:
        return ForwardContext(n, batch, None, None, torch.zeros(batch, dtype=torch.int32, device=device), 0,
                              {}, {"*": _last_rows(None, n, batch, None, device)}, block_m, block_n,
                              check_rows={"*": estimate.held_out_queries(None, n, batch, None, device=device)})
    check_layout(layout, n)
    layout = layout.to(device)
    num_m = -(-n // block_m)
    padded = torch.nn.functional.pad(layout.modality, (0, num_m * block_m - n), value=PAD)
    blocks = padded.view(layout.batch, num_m, block_m)
    present = {name: (blocks == mid).any(-1) for mid, name in MODALITY_NAMES.items()
               if bool((layout.modality == mid).any())}
    stride = layout.frame_stride()
    key_pad = layout.modality == PAD
    last_rows = {name: _last_rows(layout.modality, n, layout.batch, None if name == "*" else _modality_id(name), device)
                 for name in ["*"] + list(present)}
    weight = torch.arange(1, n + 1, device=device, dtype=torch.float64)  # causal pairs of each row
    def sums_of(mine):  # rows, rows in shared query blocks, causal pairs held: [3, B]
        return torch.stack([mine.sum(-1).double(), (mine & ~_in_pure_blocks(mine, block_m)).sum(-1).double(),
                            (mine * weight).sum(-1)])
    sums = torch.stack([sums_of(layout.modality == _modality_id(name)) for name in present]).tolist() \
        if present else []  # [modality][rows, shared, pairs][batch]: one host sync
    row_counts = {name: int(c[0]) if len(set(c)) == 1 else None for name, (c, _, _) in zip(present, sums)}
    shared_rows = {name: int(max(c)) for name, (_, c, _) in zip(present, sums)}
    areas = {name: max(a) / (n * (n + 1) / 2) for name, (_, _, a) in zip(present, sums)}
    check_rows = {name: estimate.held_out_queries(layout.modality, n, layout.batch,
                                                  None if name == "*" else _modality_id(name), device=device)
                  for name in last_rows}
    return ForwardContext(n, layout.batch, layout.modality, key_pad if bool(key_pad.any()) else None,
                          stride, int(stride.max()) if stride.numel() else 0, present, last_rows, block_m, block_n,
                          row_counts, check_rows, areas, shared_rows)


def _last_rows(modality, n, batch, want, device):
    pos, valid = estimate.last_queries(modality, n, batch, want, device=device)
    return pos, valid, int(pos.min()) if pos.numel() else n, estimate.rows_are_consecutive(pos, valid)


@dataclasses.dataclass(frozen=True)
class LayerResult:
    """What one layer's sparse attention did: its output, the pattern of each query head, the
    indexes of its launch groups and the density of each query head (``SparseIndex.density``)."""
    out: torch.Tensor
    patterns: tuple  # HeadPattern per query head
    indexes: list  # [(query head ids, SparseIndex or None for dense heads)]
    head_density: torch.Tensor  # float32 [Hq] on q's device (1 for dense heads)
    head_recall: torch.Tensor | None = None  # float32 [Hq]: recall of its launches on held-out rows (verify.py)
    head_error: torch.Tensor | None = None  # float32 [Hq]: their output error on those rows (verify.py)


def layer_attention(q, k, v, ctx: ForwardContext, patterns: Sequence[HeadPattern] | None = None, *,
                    density: float = 0.1, scale: float | None = None, recall: float | None = None,
                    families: Sequence[HeadPattern] | None = None) -> LayerResult:
    """Sparse causal attention of one layer: estimate -> choose -> index -> attend (-> verify), the
    only place these are composed (the op, the distributed path, the CLI and the benchmarks call it).
    Each launch group is launched as soon as its index is built (``launch_groups``; dense heads
    first), so the host builds the next group's index while the GPU runs the last one.
    ``patterns``: one per query head (a plan's, a fixed policy's), or None for the online choice
    (``policy.choose_patterns`` with budget cap ``density``). The estimate is computed once and
    shared by the choice and the index builders. ``recall``: a target; what each head's launches
    kept of the attention mass of held-out rows (not the estimation rows) is read off the kernel's
    log-sum-exp (``verify.held_out_recall``), and their output error against dense on those rows
    (``verify.held_out_error``), per query modality; a head's rows below the target, or above
    ``error_tolerance``, are recomputed with the policy's fallbacks (its best original-order
    pattern grown to the density cap, then Grid: ``policy.choose_with_fallbacks``), and rows still
    below it dense (``_checked``). ``families``: one pattern per query head (a plan's) whose
    types, not sizes, the online choice keeps (``patterns`` must be None)."""

    scale = q.shape[-1] ** -0.5 if scale is None else scale
    estimates, patterns, fallbacks = choose_layer(q, k, ctx, patterns, density=density, scale=scale,
                                                  families=families)
    if all(_runs_dense(head) for head in patterns):  # every head dense: one SDPA call (cuDNN), no lse
        indexes = build_layer_indexes(q, k, patterns, ctx, scale, estimates=estimates)
        out, lse = attend(q, k, v, indexes, scale, return_lse=True)
    else:  # each launch group as soon as it is built: the GPU runs it while the host builds the next
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
        side = _side_stream(q.device)  # the dense work, beside the index building and sparse launches
        if recall is not None:
            with _on(side):
                estimates.held_out_dense(v)  # the check's dense rows, queued now: they need only q, k, v
        indexes = []
        for group in launch_groups(q, k, patterns, ctx, scale, estimates=estimates):  # dense heads first
            attend(q, k, v, [group], scale, out=out, lse=lse, dense_stream=side)
            indexes.append(group)
        if side is not None:
            torch.cuda.current_stream(q.device).wait_stream(side)
    head_recall = head_error = None
    if recall is not None and lse is not None:
        out, patterns, indexes, head_recall, head_error = _checked(q, k, v, out, lse, estimates, ctx, patterns,
                                                                   fallbacks, indexes, recall, scale, density)
    return LayerResult(out, patterns, indexes, _head_density(indexes, q.shape[1], ctx.n, q.device), head_recall,
                       head_error)


def _checked(q, k, v, out, lse, estimates, ctx: ForwardContext, patterns, fallbacks: dict, indexes, recall: float,
             scale: float, density: float):
    """The held-out check and what follows it, per query modality (row set): a head's sets that
    miss (``_check``) run its fallbacks' patterns there in turn (``policy.choose_with_fallbacks``),
    measured again after each, unless their rows are few enough that running them dense costs
    less than recomputing the head at the cap (``_dense_rows_first``). Sets still missing run
    dense in a launch over those rows alone (``_dense_rows_index``); the head's other sets keep
    their pattern (the question rows that Vertical-Slash serves badly need not take the video
    rows' Grid with them). A head whose every set misses, or whose pattern is not per query
    modality, runs dense whole (SDPA). Returns (out, patterns, indexes, recall [Hq], error [Hq]):
    each head's worst set."""
    from . import verify

    sets = ctx.row_sets()
    head_recall, head_error, failing = _check(out, lse, v, estimates, ctx, indexes, recall)  # one host sync
    for stage in range(max((len(f) for f in fallbacks.values()), default=0)):
        trial = {h: _rows_replaced(patterns[h], fallbacks[h][stage], rows, sets) for h, rows in failing.items()
                 if len(fallbacks.get(h, ())) > stage and not _dense_rows_first(patterns[h], rows, ctx, density)}
        trial = {h: head for h, head in trial.items() if head != patterns[h]}
        if trial:  # rows that missed: the head's next fallback there, measured again
            indexes, patterns = _recompute(q, k, v, out, lse, estimates, ctx, patterns, indexes, trial, scale)
            head_recall, head_error, failing = _check(out, lse, v, estimates, ctx, indexes, recall)  # only then
    apart = {h: rows for h, rows in failing.items() if _dense_rows_apart(patterns[h], rows, ctx)}
    whole = [h for h in failing if h not in apart]
    if apart:  # those rows against every causal key, in one launch per row set: exact there
        by_rows = defaultdict(list)
        for h, rows in apart.items():
            for m in rows:
                by_rows[m].append(h)
        groups = [(ids, _dense_rows_index(len(ids), m, ctx)) for m, ids in by_rows.items()]
        attend(q, k, v, groups, scale, out=out, lse=lse)
        indexes = list(indexes) + groups
        patterns = tuple(_rows_replaced(head, HeadPattern(), apart[h], sets) if h in apart else head
                         for h, head in enumerate(patterns))
        exact = torch.zeros_like(head_recall, dtype=torch.bool)
        for h, rows in apart.items():
            exact[h, [sets.index(m) for m in rows]] = True
        head_recall, head_error = head_recall.masked_fill(exact, 1.0), head_error.masked_fill(exact, 0.0)
    if whole:  # recomputed dense, in place: these heads cannot meet the target with this input
        _sdpa_heads(q, k, v, whole, scale, out, lse)
        indexes, patterns = verify.demote(indexes, patterns, whole)
        ids = device_list(whole, q.device)
        head_recall, head_error = head_recall.index_fill(0, ids, 1.0), head_error.index_fill(0, ids, 0.0)
    return out, patterns, indexes, head_recall.amin(-1), head_error.amax(-1)


def _recompute(q, k, v, out, lse, estimates, ctx: ForwardContext, patterns, indexes, trial: dict, scale: float):
    """(indexes, patterns) after the heads of ``trial`` {head: pattern} ran again with those
    patterns, written over their rows of ``out`` and ``lse``."""
    from . import verify

    heads = tuple(trial.get(h, HeadPattern()) for h in range(len(patterns)))
    redo = [(ids, index) for ids, index in build_layer_indexes(q, k, heads, ctx, scale, estimates)
            if index is not None]
    attend(q, k, v, redo, scale, out=out, lse=lse)
    return verify.replace_heads(indexes, patterns, list(trial), redo, heads)


def _rows_replaced(head: HeadPattern, other: HeadPattern, rows: list[str], sets: list[str]) -> HeadPattern:
    """``head`` with ``other``'s pattern on the query modalities ``rows`` (``"*"``, or all of
    ``sets``: ``other`` whole), the others as they were."""
    if "*" in rows or set(rows) >= set(sets):
        return other
    return HeadPattern("q-boundary", tuple((m, other.pattern_for(m) if m in rows else head.pattern_for(m))
                                          for m in sets))


DENSE_ROWS_AREA = 0.5  # rows that miss run dense apart while they hold at most this share of the causal pairs


def _dense_rows_apart(head: HeadPattern, rows: list[str], ctx: ForwardContext) -> bool:
    """Whether a head's missing ``rows`` (query modalities) run dense without the rest of it: some
    of its modalities pass, its pattern is one per query modality (not a boundary of keys), every
    sample has as many rows of each (one launch lists them: ``_dense_rows_index``), and they hold
    at most ``DENSE_ROWS_AREA`` of the causal pairs (more, and SDPA on the whole head is cheaper
    than our kernel on those rows after the head's sparse work)."""
    return ("*" not in rows and not set(rows) >= set(ctx.row_sets()) and head.inter in ("none", "q-boundary")
            and all(ctx.equal_rows(m) for m in rows) and ctx.row_area(rows) <= DENSE_ROWS_AREA)


def _dense_rows_first(head: HeadPattern, rows: list[str], ctx: ForwardContext, density: float) -> bool:
    """Whether missing ``rows`` run dense at once rather than try the head's fallback first:
    dense they cost their share of the causal pairs, the fallback recomputes the head at the cap
    (``density``) and may miss again (a video's question: at once; a mixed layout's text: not)."""
    return _dense_rows_apart(head, rows, ctx) and ctx.row_area(rows) <= density


def _dense_rows_index(heads: int, rows: str, ctx: ForwardContext) -> SparseIndex:
    """One launch of ``heads`` heads over the rows of modality ``rows`` alone, each against every
    causal key (``_rows_alone_index``)."""
    if rows not in ctx.dense_rows:  # the same for every layer of the forward
        ctx.dense_rows[rows] = _rows_alone(ctx.rows_of(rows), ctx.row_counts[rows], ctx)
    return _rows_alone_index(heads, *ctx.dense_rows[rows], ctx)


def _band_gap_index(heads: int, rows: str, ctx: ForwardContext) -> SparseIndex | None:
    """For a Q-boundary Grid with a band over modality ``rows``: one launch computing, against
    every causal key, that modality's rows in query blocks shared with other rows (None if there
    are none). Those rows get no band (``_band_rows``), and the grid alone misses their own frame
    and the keys of the segment before them: a grid-temporal head's video rows at segment edges
    lost a third of their mass, 2 rows in 100 that held most of its output error (CPU, 32K)."""
    if not ctx.shared_rows.get(rows):
        return None
    key = ("band gap", rows)
    if key not in ctx.dense_rows:  # the same for every layer of the forward
        gap = (ctx.modality == _modality_id(rows)) & (_band_rows(ctx, rows) == 0)
        ctx.dense_rows[key] = _rows_alone(gap, ctx.shared_rows[rows], ctx)
    return _rows_alone_index(heads, *ctx.dense_rows[key], ctx)


def _rows_alone(mask: torch.Tensor, slots: int, ctx: ForwardContext) -> tuple:
    """(q_order int32 [B, slots], span int32 [B, M, 2]) of a launch over the rows ``mask`` [B, N]
    alone (``slots``: the most any sample has, from ``forward_context``: no host sync here; they
    come ascending, and a sample with fewer also lists its first other rows, which it then computes
    exactly too), each query block's span from key 0 to its last row."""
    batch, n, block_m = ctx.batch, ctx.n, ctx.block_m
    pos = torch.arange(n, device=mask.device)
    q_order = torch.where(mask, pos, n + pos).sort(-1).values[:, :slots] % n  # [B, slots]: the rows, ascending
    num_m = -(-slots // block_m)
    last = torch.nn.functional.pad(q_order, (0, num_m * block_m - slots), value=-1).view(batch, num_m, block_m)
    span = torch.stack([torch.zeros_like(last[..., 0]), last.amax(-1) + 1], -1)  # [B, M, 2]
    return q_order.to(torch.int32), span.to(torch.int32)


def _rows_alone_index(heads: int, q_order: torch.Tensor, span: torch.Tensor, ctx: ForwardContext) -> SparseIndex:
    """The launch of ``_rows_alone``'s rows for ``heads`` heads: ``q_order`` lists them, keys stay
    in original order and are all visited (a span to each block's last row, and its diagonal
    block), masked causally, so it writes those rows, exactly, and no other."""
    zeros = torch.zeros(ctx.batch, heads, span.shape[1], dtype=torch.int32, device=span.device)
    return SparseIndex(zeros, zeros[..., None], zeros.clone(), zeros[..., None].clone(), ctx.block_m, ctx.block_n,
                       q_order=q_order[:, None, :].expand(-1, heads, -1).contiguous(),
                       span=span[:, None].expand(-1, heads, -1, -1).contiguous())


def _check(out, lse, v, estimates: "Estimates", ctx: ForwardContext, indexes, recall: float):
    """(recall [Hq, S], output error [Hq, S], {head: its row sets that fail}): what each head's
    launches kept of the held-out rows' mass and how far their outputs are from dense, per row set
    (``ctx.row_sets()``); a set fails below ``recall`` or above an error of
    ``error_tolerance(recall)``. One host sync."""
    from . import verify

    exact = _dense_heads(indexes)
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


def plan_keywords(plan: Sequence[HeadPattern] | None, plan_sizes: str) -> dict:
    """``layer_attention``'s keywords for a plan's head patterns (one per query head; None: the
    online choice): ``plan_sizes="online"`` keeps their types and sizes them for this input
    (``families``), ``"plan"`` runs them as searched (``patterns``)."""
    if plan_sizes not in PLAN_SIZES:
        raise ValueError(f"plan_sizes must be one of {PLAN_SIZES}, got {plan_sizes!r}")
    return {"families": plan} if plan_sizes == "online" else {"patterns": plan}


def prepare_layer(q, k, ctx: ForwardContext, patterns: Sequence[HeadPattern] | None = None, *,
                  density: float = 0.1, scale: float | None = None, families: Sequence[HeadPattern] | None = None):
    """What ``layer_attention`` does before the kernel: ``choose_layer``, then the indexes.
    Returns (estimates, patterns, fallbacks {head: patterns in order}, indexes); ``benchmarks/index_memory.py``
    measures exactly this."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    estimates, patterns, fallbacks = choose_layer(q, k, ctx, patterns, density=density, scale=scale, families=families)
    return estimates, patterns, fallbacks, build_layer_indexes(q, k, patterns, ctx, scale, estimates=estimates)


def choose_layer(q, k, ctx: ForwardContext, patterns: Sequence[HeadPattern] | None = None, *,
                 density: float = 0.1, scale: float | None = None, families: Sequence[HeadPattern] | None = None):
    """The estimate (``Estimates``, shared with the index builders) and, when ``patterns`` is None,
    the head choice (restricted to the types of ``families`` when given), replayed from a CUDA
    graph where one was captured (``choice_graph``). Returns (estimates, patterns, fallbacks)."""
    from . import choice_graph, policy  # they build on this module

    if patterns is not None and families is not None:
        raise ValueError("give fixed head patterns (patterns=) or the families to size (families=), not both")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if patterns is not None:
        return Estimates(q, k, ctx, scale), tuple(patterns), {}
    families = None if families is None else tuple(families)
    choose = functools.partial(policy.choice_tables, ctx=ctx, density=density, target=policy.TARGET, families=families)
    key = (tuple(q.shape), tuple(k.shape), q.dtype, q.device, scale, density, families)
    estimates, tables = choice_graph.estimate_and_choose(q, k, ctx, scale, choose, key)
    patterns, fallbacks = policy.patterns_from_tables(policy.read_tables(tables, ctx), ctx, policy.MIN_RECALL, density,
                                                      families)
    return estimates, tuple(patterns), fallbacks


def _runs_dense(head: HeadPattern) -> bool:
    """Whether a head goes to the dense path (SDPA) rather than a sparse launch."""
    return head.inter != "2d-boundary" and all(isinstance(p, Dense) for _, p in head.intra)


def _dense_heads(indexes) -> list[int]:
    return [h for ids, index in indexes if index is None for h in ids]


def _head_density(indexes, heads_q: int, n: int, device) -> torch.Tensor:
    """Per query head, the sum over its launches (a head may run in two: ``_grid_rows``): dense
    heads count 1, and the sparse launches' densities are added in one ``index_add`` (in launch
    order, as one per launch would) rather than a few ops per launch group."""
    dense = set(_dense_heads(indexes))
    base = device_list([h in dense for h in range(heads_q)], device, torch.float32)  # cached: never written
    sparse = [(ids, index) for ids, index in indexes if index is not None]
    if not sparse:
        return base.clone()
    per_launch = [index.density(n) for _, index in sparse]  # [B, H of the launch] each
    values = (per_launch[0] if len(per_launch) == 1 else torch.cat(per_launch, dim=1)).mean(0)
    return base.index_add(0, device_list([h for ids, _ in sparse for h in ids], device), values)


def build_layer_indexes(q, k, heads: Sequence[HeadPattern], ctx: ForwardContext, scale: float | None = None,
                        estimates: "Estimates | None" = None):
    """Estimation and index building: [(query head ids, SparseIndex or None for dense heads)], one
    entry per launch group. ``estimates`` may be shared with the policy that chose ``heads``."""
    return list(launch_groups(q, k, heads, ctx, scale, estimates))


def launch_groups(q, k, heads: Sequence[HeadPattern], ctx: ForwardContext, scale: float | None = None,
                  estimates: "Estimates | None" = None):
    """``build_layer_indexes`` one launch group at a time, in launch order (dense heads first, then
    the original-order heads, those of fixed sets (A-shape) before those of estimated ones, the
    grid row sets, the 2D-boundary heads): a caller that launches each as it comes keeps the GPU
    busy while the host builds the next."""
    heads_q, d = q.shape[1], q.shape[-1]
    if len(heads) != heads_q:
        raise ValueError(f"{len(heads)} head patterns for {heads_q} query heads")
    scale = d ** -0.5 if scale is None else scale
    estimates = estimates if estimates is not None else Estimates(q, k, ctx, scale)
    if ctx.modality is None:  # no layout: a 2D head is its text>text pattern everywhere
        heads = [HeadPattern("none", (("*", pair_pattern(head, "text", "text")),)) if head.inter == "2d-boundary"
                 else head for head in heads]
    plain, grid, dense, boundary = [], defaultdict(list), [], defaultdict(list)
    plain_heads = list(heads)  # what the original-order launch runs for each head
    for h, head in enumerate(heads):
        if _runs_dense(head):
            dense.append(h)  # the dense fast path: no index, and no all-blocks lists widening the rest
        elif head.inter == "2d-boundary":
            boundary[head].append(h)  # modality-major order: grouped by the exact pattern
        elif any(isinstance(p, Grid) for _, p in head.intra):
            rows = _grid_rows(head, ctx)
            grid[(head, rows)].append(h)  # its own permutation: grouped by the exact pattern
            band = _grid_of(head).band
            if rows is not None:  # its other modalities' rows first, in original order (the grid's: its band)
                plain.append(h)
                plain_heads[h] = HeadPattern(head.inter, tuple((m, (AShape(0, band) if band else None)
                                                                if isinstance(p, Grid) else p) for m, p in head.intra))
            elif band:  # every row's band first, in original order
                plain.append(h)
                plain_heads[h] = HeadPattern("none", (("*", AShape(0, band)),))
        else:
            plain.append(h)
    if dense:
        yield dense, None
    # Heads whose original-order sets need no estimate (A-shape, Dense) first: their index takes
    # the host a fraction of the others', and the GPU runs them while the host builds the rest.
    fixed = {h for h in plain if all(isinstance(p, (AShape, Dense, type(None))) for _, p in plain_heads[h].intra)}
    for ids in ([h for h in plain if h in fixed], [h for h in plain if h not in fixed]):
        if ids:
            yield ids, _plain_index(ids, plain_heads, estimates, ctx)
    by_rows = defaultdict(dict)  # one grid launch per row set, after the original-order launch
    for (head, rows), ids in grid.items():  # (a row-subset grid overwrites its rows)
        by_rows[rows][head] = ids
    for rows, groups in by_rows.items():
        yield [h for ids in groups.values() for h in ids], _grid_index(groups, rows, estimates, ctx)
        banded = [h for head, ids in groups.items() if _grid_of(head).band for h in ids]
        gap = _band_gap_index(len(banded), rows, ctx) if banded and rows is not None else None
        if gap is not None:  # their rows in shared query blocks: exact, after the grid launch
            yield banded, gap
    if boundary:
        yield [h for ids in boundary.values() for h in ids], boundary2d_index(boundary, ctx, estimates)


def attend(q, k, v, indexes, scale: float | None = None, return_lse: bool = False, out=None, lse=None,
           dense_stream=None):
    """The kernel launches of one layer, all writing into one output (index None: dense heads,
    queued on ``dense_stream`` if given: ``_side_stream``).
    Returns out, or (out, lse [B, Hq, N] float32 natural log; None when SDPA ran every head).
    ``out``/``lse`` given: the launches write into them (their other heads are left as they are)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if out is None and len(indexes) == 1 and indexes[0][1] is None:  # every head dense: SDPA (cuDNN) is faster
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                               enable_gqa=q.shape[1] != k.shape[1])
        return (out, None) if return_lse else out
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    for head_ids, index in indexes:
        ids = device_list(head_ids, q.device, torch.int32)
        if index is None:
            _sdpa_heads(q, k, v, head_ids, scale, out, lse, stream=dense_stream)
        else:
            sparse_attention_forward(q, k, v, index, scale, head_ids=ids, out=out, lse=lse)
    return (out, lse) if return_lse else out


def _sdpa_heads(q, k, v, head_ids: list[int], scale: float, out, lse, stream=None) -> None:
    """Dense heads of a mixed layer through SDPA (cuDNN on Hopper: faster than the Triton dense
    path; math on a CPU: faster than the interpreter), written into ``out``, on ``stream`` if
    given (its head lists are made on the current one: a cached list must be on the device before
    any stream reads it). Their ``lse`` is not computed (NaN): they are exact, and
    ``verify.held_out_recall`` counts them so."""
    group = q.shape[1] // k.shape[1]
    ids = device_list(head_ids, q.device)
    kv = device_list([h // group for h in head_ids], q.device)
    with _on(stream):
        dense = torch.nn.functional.scaled_dot_product_attention(q.index_select(1, ids), k.index_select(1, kv),
                                                                 v.index_select(1, kv), is_causal=True, scale=scale)
        out.index_copy_(1, ids, dense)
        lse.index_fill_(1, ids, float("nan"))


def _side_stream(device: torch.device):
    """A stream forked from the current one (None on a CPU or while a CUDA graph is captured). On
    it the layer queues its dense work (dense heads: SDPA saturates the GPU for ~8 ms a head at
    128K; the check's dense log-sum-exp), so the small kernels of index building and the sparse
    launches' tails fill the GPU beside it. The layer joins it before reading those results.
    Eager cross-stream use is safe here: each fork waits for the current stream first, and every
    tensor the side stream reads (q, k, v, ``out``, ``lse``, cached head lists) outlives the join."""
    if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return None
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    return side


def _on(stream):
    """``torch.cuda.stream(stream)``, or nothing for None."""
    return contextlib.nullcontext() if stream is None else torch.cuda.stream(stream)


class Estimates:
    """Line scores (``estimate.LineScores``) per query modality ("*" = all), computed once per layer
    on first use for all heads and shared by the policy and the index builders."""

    def __init__(self, q, k, ctx: ForwardContext, scale: float):
        self.q, self.k, self.ctx, self.scale = q, k, ctx, scale
        self._cache = {}

    def lines(self, modality: str, head_ids: list[int]) -> estimate.LineScores:
        if modality not in self._cache:
            pos, valid, start, consecutive = self.ctx.last_rows[modality]
            self._cache[modality] = estimate.line_scores(self.q, self.k, pos, valid, self.scale,
                                                         self.ctx.key_pad, start, consecutive,
                                                         block_n=self.ctx.block_n)
        return self._cache[modality].heads(head_ids)

    def column_ranking(self, modality: str, head_ids: list[int]) -> torch.Tensor:
        """fp32 [B, H, N]: ``intra.column_scores`` of these heads' lines, computed once per layer
        and modality for all heads: the policy and the VS builder rank the same columns (~18 ops
        a call, per head and elementwise, so a slice of it is what a call on the slice returns)."""
        key = ("columns", modality)
        if key not in self._cache:
            self._cache[key] = intra.column_scores(self.lines(modality, list(range(self.q.shape[1]))), self.ctx.n)
        return estimate.select_heads(self._cache[key], head_ids)

    def adopting(self, q, k) -> "Estimates":
        """Estimates of ``q`` and ``k`` that start from this one's cached tensors (a replayed
        ``choice_graph``'s, computed from copies of q and k): what is computed anew reads q, k."""
        other = Estimates(q, k, self.ctx, self.scale)
        other._cache = dict(self._cache)
        return other

    def held_out_lse(self) -> torch.Tensor:
        """fp32 [B, Hq, S * L]: dense log-sum-exp of the held-out rows of every row set
        (``ctx.held_out``), in one pass: a layer that retries heads reads it twice."""
        if "held-out" not in self._cache:
            pos, valid = self.ctx.held_out
            self._cache["held-out"] = estimate.dense_row_lse(self.q, self.k, pos, valid, self.scale, self.ctx.key_pad)
        return self._cache["held-out"]

    def held_out_dense(self, v) -> tuple[torch.Tensor, torch.Tensor]:
        """(lse fp32 [B, Hq, S * L], out fp32 [B, Hq, S * L, D]): dense attention of the held-out
        rows (``verify.dense_rows``), once per layer; its lse serves ``held_out_lse`` too."""
        from . import verify

        if "held-out-out" not in self._cache:
            pos, valid = self.ctx.held_out
            lse, out = verify.dense_rows(self.q, self.k, v, pos, valid, self.scale, self.ctx.key_pad)
            self._cache["held-out"], self._cache["held-out-out"] = lse, out
        return self._cache["held-out"], self._cache["held-out-out"]

    def explained_by(self, lines: estimate.LineScores, head_ids: list[int]):
        """columns -> the slash mass of ``lines`` those key columns account for."""
        return lambda columns: estimate.column_slash(self.q, self.k, lines, head_ids, columns, self.scale)

    def column_probs(self, lines: estimate.LineScores, head_ids: list[int]):
        """columns -> the estimation rows' probabilities at those key columns."""
        return lambda columns: estimate.column_probs(self.q, self.k, lines, head_ids, columns, self.scale)

    def keep_vs_ranking(self, modality: str, head_ids: list[int], columns, order) -> None:
        """The policy's ranked columns [B, H, C] and block order [B, H, T] for these heads (all of
        the layer's, in order), from which the VS builder takes its sets: the index the policy
        predicted is the index built (``vs_ranking``)."""
        if head_ids == list(range(self.q.shape[1])):
            self._cache[("vs", modality)] = (columns, order)

    def vs_ranking(self, modality: str, head_ids: list[int]):
        """(columns, block order) the policy ranked for these heads, or None."""
        kept = self._cache.get(("vs", modality))
        return None if kept is None else tuple(estimate.select_heads(t, head_ids) for t in kept)


def _modality_id(name: str) -> int:
    return {v: k for k, v in MODALITY_NAMES.items()}[name]


def _selectors(head: HeadPattern, ctx: ForwardContext) -> list[tuple[str, object]]:
    """(query modality or "*", intra pattern) pairs a head needs for this input."""
    if head.inter != "q-boundary" or not ctx.present:  # one pattern for all rows: "*", else the first
        return [("*", dict(head.intra).get("*", head.intra[0][1]))]
    return [(name, head.pattern_for(name)) for name in ctx.present]


def _sets_for(kind, patterns, head_ids, selector, estimates: Estimates, ctx: ForwardContext) -> BlockSets:
    """Sets of heads whose pattern for ``selector`` is of one type (sizes may differ per head)."""
    batch, n, device = ctx.batch, ctx.n, estimates.q.device
    if kind is type(None):  # these heads have no pattern for this query modality
        return empty_sets(batch, len(head_ids), device)
    if kind is AShape:
        return intra.a_shape_sets(patterns, batch, n, ctx.block_n, device)
    if kind is Dense:
        return intra.dense_sets(patterns, batch, n, ctx.block_n, device)
    if kind is VerticalSlash:
        lines = estimates.lines(selector, head_ids)
        ranking, ranked = estimates.column_ranking(selector, head_ids), estimates.vs_ranking(selector, head_ids)
        if any(p.lines for p in patterns) and ctx.max_frame > 0:  # fallbacks: the policy's ranked sets are not theirs
            lined = device_list([p.lines for p in patterns], device).bool()[None, :, None]
            ranking = torch.where(lined, intra.line_class_scores(ranking, lines.vertical, ctx.modality == VIDEO,
                                                                 ctx.frame_stride, ctx.max_frame), ranking)
            ranked = None
        return intra.vertical_slash_sets(patterns, lines, n, ctx.block_m, ctx.block_n,
                                         explained=estimates.explained_by(lines, head_ids),
                                         ranking=ranking, ranked=ranked)
    if kind is BlockSparse:
        if len(set(patterns)) > 1:
            return stack_heads([_sets_for(kind, [p], [h], selector, estimates, ctx) for p, h in zip(patterns, head_ids)])
        group = estimates.q.shape[1] // estimates.k.shape[1]
        kv_heads = device_list([h // group for h in head_ids], device)
        queries = estimates.q.index_select(1, device_list(head_ids, device))
        return intra.block_sparse_sets(patterns[0], queries, estimates.k, kv_heads, n,
                                       ctx.block_m, ctx.block_n)
    raise TypeError(f"pattern {patterns[0]!r} is not an original-order pattern")


def _plain_index(head_ids: list[int], heads: Sequence[HeadPattern], estimates: Estimates, ctx: ForwardContext):
    """One index for all original-order heads: per query modality ("*" for all rows), the sets of
    each pattern type are built together, then put back in head order."""
    selectors_of = [dict(_selectors(heads[h], ctx)) for h in head_ids]
    entries = []
    for selector in sorted({s for sel in selectors_of for s in sel}):
        by_type = defaultdict(list)  # pattern type -> positions in head_ids
        for i, sel in enumerate(selectors_of):
            by_type[type(sel.get(selector))].append(i)
        parts, placed = [], []
        for kind, positions in by_type.items():
            patterns = [selectors_of[i].get(selector) for i in positions]
            parts.append(_sets_for(kind, patterns, [head_ids[i] for i in positions], selector, estimates, ctx))
            placed += positions
        back = sorted(range(len(placed)), key=placed.__getitem__)
        entries.append((None if selector == "*" else ctx.present[selector], _in_order(stack_heads(parts), back)))
    return build_index(entries, ctx.n, ctx.n, ctx.block_m, ctx.block_n)


def _grid_rows(head: HeadPattern, ctx: ForwardContext) -> str | None:
    """The modality whose rows alone a head's grid covers: a Q-boundary head whose Grid is one
    modality's pattern while other modalities of the input have theirs. None: all rows."""
    if head.inter != "q-boundary" or len(ctx.present) < 2:
        return None
    names = [m for m, p in head.intra if isinstance(p, Grid) and m in ctx.present]
    if len(names) != 1 or not ctx.equal_rows(names[0]):
        return None  # several grid modalities, or unequal row counts across the batch: all rows
    return names[0]


def _grid_index(heads: dict, rows: str | None, estimates: Estimates, ctx: ForwardContext):
    """One launch for grid heads ({pattern: head ids}) over the rows of modality ``rows`` (its
    query slots come first in each order), or over all rows (None). Grid lines are video
    structure: their stride and phase come from those rows' estimate, or from the last video rows
    when the input has video (the plain last rows are often the text question, which shows no grid)."""
    lines_of = rows or ("video" if "video" in ctx.last_rows else "*")
    mask = None if rows is None else ctx.rows_of(rows)
    slots = ctx.n if rows is None else ctx.row_counts[rows]
    shared = defaultdict(list)  # patterns equal but for their window and band: one grid_sets call
    for head, ids in heads.items():
        pattern = _grid_of(head)
        shared[dataclasses.replace(pattern, local_frames=0, band=0)] += [(h, pattern.local_frames) for h in ids]
    orders, parts, placed = [], [], []
    for pattern, members in shared.items():
        ids = [h for h, _ in members]
        order, sets = intra.grid_sets(pattern, estimates.lines(lines_of, ids).vertical, ctx.frame_stride,
                                      ctx.max_frame, ctx.n, ctx.block_m, ctx.block_n, mask, slots,
                                      local_frames=[f for _, f in members])
        orders.append(order)
        parts.append(sets)
        placed += ids
    wanted = [h for ids in heads.values() for h in ids]  # the launch group's head order
    back = [placed.index(h) for h in wanted]
    order = estimate.select_heads(orders[0] if len(orders) == 1 else torch.cat(orders, dim=1), back)
    index = build_index([(None, _in_order(stack_heads(parts), back))], slots, ctx.n, ctx.block_m, ctx.block_n,
                        order=order.contiguous())
    bands = [_grid_of(head).band or -1 for head, ids in heads.items() for _ in ids]
    if max(bands) < 0:
        return index
    return dataclasses.replace(index, near_keys=device_list(bands, order.device, torch.int32),
                               near_rows=_band_rows(ctx, rows))


def _grid_of(head: HeadPattern) -> Grid:
    return next(p for _, p in head.intra if isinstance(p, Grid))


def _band_rows(ctx: ForwardContext, rows: str | None) -> torch.Tensor:
    """int32 [B, N]: the rows whose original-order launch visited their Grid band alone: all
    (``rows`` None: that launch is the band), or the rows of modality ``rows`` in query blocks
    holding no other rows (a shared block's rows also get the other modality's sets there: they
    run exactly in a launch of their own after the grid's, ``_band_gap_index``, rather than count
    a key twice). Once per forward (``ctx.band_rows``)."""
    if rows not in ctx.band_rows:
        if rows is None:
            ctx.band_rows[rows] = torch.ones(ctx.batch, ctx.n, dtype=torch.int32, device=ctx.frame_stride.device)
        else:
            mine = ctx.modality == _modality_id(rows)  # [B, N]
            ctx.band_rows[rows] = (_in_pure_blocks(mine, ctx.block_m) & mine).to(torch.int32)
    return ctx.band_rows[rows]


def _in_pure_blocks(mine: torch.Tensor, block_m: int) -> torch.Tensor:
    """bool [B, N]: the positions in query blocks whose rows are all ``mine`` (the last block's
    padding counts as such)."""
    batch, n = mine.shape
    pure = torch.nn.functional.pad(mine, (0, -n % block_m), value=True).view(batch, -1, block_m).all(-1)
    return pure.repeat_interleave(block_m, 1)[:, :n]


def _in_order(sets: BlockSets, back: list[int]) -> BlockSets:
    """``sets`` of heads built group by group, put back in the launch's head order (``back``: the
    position of each launch head among them); as they are when already in order (no copies)."""
    if back == list(range(len(back))):
        return sets
    return head_slice(sets, device_list(back, sets.relative.device))
