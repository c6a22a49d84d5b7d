"""Intra-modality patterns reduced to BlockSets (index_builder.py), vectorized over batch and heads.

A-shape and Dense are static (sizes may differ per head). Vertical-Slash takes the top columns off
the last-query estimate and the key blocks at fixed distances before the diagonal that hold the
most diagonal mass once the columns' own mass is removed (MInference's 30 sink columns and 100
nearest diagonals are forced). Grid finds stride
and phase per head, then works in the residue-major order that makes grid lines contiguous:
vertical lines are the last band of key slots, periodic slashes are the key blocks just before the
diagonal, horizontal lines the last query blocks; the first ``sink`` tokens are added as columns.
"""

from __future__ import annotations

import functools

import torch

from mmcompile.kernels import triton_runs_on
from mmcompile.kernels.index_factories import grid_order

from . import estimate, window_max_kernel
from .index_builder import FAR, INVALID, BlockSets, device_list
from .specs import AShape, BlockSparse, Dense, Grid, VerticalSlash

FORCED_SINK_COLUMNS = 30
FORCED_LOCAL_DIAGONALS = 100


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def a_shape_sets(patterns: list[AShape], batch, n, block_n, device) -> BlockSets:
    """One A-shape per head (sizes may differ): sink blocks plus local blocks before the diagonal.
    Static, so built once per (patterns, shape) and reused by every layer (never modified later)."""
    return _a_shape_sets(tuple(patterns), batch, n, block_n, torch.device(device))


@functools.lru_cache(maxsize=64)
def _a_shape_sets(patterns: tuple, batch, n, block_n, device) -> BlockSets:
    local_list = [_ceil_div(p.local, block_n) for p in patterns]  # sizes stay on the host: no sync
    sink_list = [_ceil_div(p.sink, block_n) for p in patterns]
    local, sink = device_list(local_list, device), device_list(sink_list, device)
    rel = torch.arange(-max(local_list), 0, device=device)
    rel = torch.where(rel[None, :] >= -local[:, None], rel, FAR)
    ab = torch.arange(max(sink_list), device=device)
    ab = torch.where(ab[None, :] < sink[:, None], ab, INVALID)
    return BlockSets(rel.expand(batch, -1, -1), ab.expand(batch, -1, -1),
                     torch.empty(batch, len(patterns), 0, dtype=torch.long, device=device))


def dense_sets(patterns: list[Dense], batch, n, block_n, device) -> BlockSets:
    return _dense_sets(len(patterns), batch, n, block_n, torch.device(device))


@functools.lru_cache(maxsize=64)
def _dense_sets(heads, batch, n, block_n, device) -> BlockSets:
    empty = torch.empty(batch, heads, 0, dtype=torch.long, device=device)
    return BlockSets(empty, empty.clone(), empty.clone(),
                     span_from=torch.zeros(batch, heads, dtype=torch.long, device=device))  # every causal block


def relative_block_mass(slash: torch.Tensor, block_m: int, block_n: int) -> torch.Tensor:
    """fp32 [B, H, T]: mass that key block t in 1..T before a query block's diagonal holds, averaged
    over the block's rows, from the slash scores (mass per diagonal offset o, [B, H, N]).

    Row r' of a query block sees in block t the offsets r' + BN(t-1) + 1 .. r' + BN t. Summed over
    the BN rows r' of one key-block-sized stretch a, offset BN a + j counts j times and offset
    BN (a+1) + j counts BN - j times: V[a] = M[a] + BN S[a+1] - M[a+1], with S and M the sum and
    first moment of each BN-bucket of offsets. E[t] sums V over the BM / BN stretches the block's
    rows span. One read of the scores, no long prefix sums. VS no longer ranks its blocks by this
    mean but by the heaviest row (``relative_block_peak``, which says why); it stays as what the
    average row finds in each block.
    """
    batch, heads, n = slash.shape
    steps = -(-n // block_n)
    ratio = block_m // block_n
    buckets = torch.nn.functional.pad(slash, (0, (steps + ratio + 1) * block_n - n)).view(batch, heads, -1, block_n)
    weight = torch.arange(block_n, device=slash.device, dtype=slash.dtype)
    sums, moments = buckets.sum(-1), buckets @ weight
    stretch = moments[..., :-1] + block_n * sums[..., 1:] - moments[..., 1:]  # V[a]
    return sum(stretch[..., i:i + steps] for i in range(ratio)) / block_m  # E[t] = sum of V[t-1 .. t-2+ratio]


def relative_block_peak(slash: torch.Tensor, block_m: int, block_n: int) -> torch.Tensor:
    """fp32 [B, H, T]: the most mass any row of a query block finds in key block t in 1..T before
    its diagonal (``relative_block_mass`` takes the mean over the rows), from the slash scores.

    The order VS takes its slash blocks in. A narrow band at offset o falls, for the rows of one
    query block, into two or three neighbouring relative blocks: most rows need one of them, the
    rows at the block's end (or start) the next. Ranked by the mean, the block a few rows need
    comes late and the mean recall reaches the target without it, so those rows of *every*
    query block lose the whole band (slash-bands on the mixed layout at 8K, seed 4: a head with
    recall 0.978 and output error 0.136, its last text rows of each block at 0.75-0.82). Ranked
    by the heaviest row, all of a band's blocks come together.
    Row r' sees in block t the offsets r' + BN(t-1) + 1 .. r' + BN t: a window of BN offsets
    starting at BN(t-1) + 1 + r', so the peak is the max of the window sums over BM starts."""
    n = slash.shape[-1]
    steps = -(-n // block_n)
    flat = torch.nn.functional.pad(slash, (0, block_n + block_m + steps * block_n - n)).flatten(0, 1)[:, None]
    window = torch.nn.functional.avg_pool1d(flat, block_n, stride=1)[:, 0] * block_n  # [B H, S]: sum of BN offsets from s
    peak = window_max(window, block_m)  # max over the block's rows r' (starts s .. s + BM - 1)
    return peak[:, 1::block_n][:, :steps].view(*slash.shape[:2], steps)


SLASH_DOMINANCE = 0.5  # see column_scores
LOCAL_GUARD = 1024  # keys this close before the estimation rows (at most N/16) are left to slash blocks
GUARD_DOMINANCE = 4.0  # ... unless their vertical mass is this many times the heaviest offset reaching them
RUN_FLOOR = 0.1  # a key of a heavy run stays a column from this share of the heaviest offset reaching it


def column_scores(lines: estimate.LineScores, n: int) -> torch.Tensor:
    """[B, H, N] ranking of key columns: the vertical scores, the first 30 keys forced (+inf) and the
    keys just before the estimation rows zeroed (their mass is the local band's, which slash
    blocks cover; as columns they would look useful only from these rows), unless a key's vertical
    mass is ``GUARD_DOMINANCE`` times the heaviest offset reaching it: then it is a line, such as
    a grid-decay head's line key in the last frame, which every row after it weighs. Left to slash
    blocks, it was lost to the rows between it and the estimation rows (their blocks sit at other
    offsets): 0.3-0.4 of those rows' mass, output error 0.32 on such a head at 8K.

    Keys whose mass a diagonal explains are zeroed too. Over L consecutive estimation rows a band of
    w diagonals (mass m per row) puts L m on each of its offsets but only min(w, L) m on each key
    it crosses, while a run of K heavy keys puts L m on each key and min(K, L) m on the offsets
    reaching it. So a key whose vertical mass is under ``SLASH_DOMINANCE`` times the heaviest
    offset reaching it is a band narrower than L / 2, not a column; wider bands and runs of keys
    (sinks) look alike from these rows and stay columns. (Rows ``step`` apart, ``estimate.ROW_STEP``:
    a band crosses a key from w / step rows, so bands narrower than step L / 2 are told apart.)
    Taken as columns, a band's keys serve only the estimation rows (a row elsewhere sees it at
    other keys): that cost the slash-band family of the independent planted generator half of its
    held-out recall.

    A run's keys are judged together: a key also stays a column when some L consecutive keys
    holding it carry, on average (each at most its own heaviest offset), ``SLASH_DOMINANCE`` times
    the heaviest offset reaching any of them (``_in_heavy_run``) and it holds ``RUN_FLOOR`` of its
    own (not the empty keys beside a few sinks): a band's keys average what each holds (under the
    bar), a run of sinks about that offset's mass. Judged alone, the lighter keys of a run of sinks
    fell under the bar (0.46-0.48 in a run whose masses vary 0.2-2.6x), were left to the one far
    offset that crosses the run from these rows, and were lost to every other row: 0.012 of a
    held-out row's mass on three sinks, output error 0.10 there against 0.03 on the estimation rows
    (planted heads, 128K, CPU, 2026-12-07; on the H100 the mixed layout's op went from 134.5 to
    33.4 ms at the same error: BENCHMARKS.md)."""
    vertical = lines.vertical
    reaching = _reaching_slash(lines, n)
    near = torch.arange(n, device=vertical.device)[None, :] >= \
        lines.pos.min(-1).values[:, None] - min(LOCAL_GUARD, n // 16)
    scores = vertical.masked_fill(near[:, None, :] & (vertical < GUARD_DOMINANCE * reaching), 0.0)
    run = _in_heavy_run(vertical, reaching, int(lines.pos.shape[-1])) & (vertical >= RUN_FLOOR * reaching)
    band = (vertical < SLASH_DOMINANCE * reaching) & ~run
    scores = scores.masked_fill(band, 0.0)
    scores[..., :FORCED_SINK_COLUMNS] = float("inf")
    return scores


LINE_RANK = 1e6  # above any column score (a mass summed over the estimation rows), below the forced sink's inf


def line_class_scores(scores: torch.Tensor, vertical: torch.Tensor, video_keys: torch.Tensor,
                      frame_stride: torch.Tensor, max_frame: int) -> torch.Tensor:
    """``scores`` [B, H, N] (``column_scores``) with every video key of each head's heaviest phase
    class modulo the frame stride ranked first (then by score): the grid's vertical lines, all
    frames of them, as columns in original order.

    Why: a line over recent frames only (a window or a decay) is heavy at the estimation rows for
    their own recent frames; an earlier row needs the same spatial position in *its* recent
    frames, which the plain ranking never takes, while the phase class holds them all (N / stride
    keys). In the grid order the lines are cheap but the local band inside a frame is lost; as
    columns beside slash blocks both are kept. The phase is taken on video keys alone (a sink in
    the prompt would otherwise pick its own residue)."""
    on_video = vertical * video_keys[:, None, :]
    _, phase = frame_phase(on_video, frame_stride, max_frame)
    stride = frame_stride.clamp(min=1).long()
    pos = torch.arange(vertical.shape[-1], device=vertical.device)
    in_class = video_keys[:, None, :] & ((pos[None, None, :] - phase[..., None]) % stride[:, None, None] == 0)
    return torch.where(in_class, torch.maximum(scores, vertical) + LINE_RANK, scores)


def _in_heavy_run(vertical: torch.Tensor, reaching: torch.Tensor, rows: int) -> torch.Tensor:
    """bool [B, H, N]: keys inside ``rows`` consecutive keys whose mean vertical mass (each key's
    at most its own heaviest offset) is at least ``SLASH_DOMINANCE`` times the heaviest offset
    reaching any of them: a run of heavy keys that ``rows`` consecutive estimation rows cannot tell
    from a band by its keys one at a time. Capped per key, one heavy line among a band's keys does
    not make them a run (a grid-all head's video rows: held-out error 0.037 -> 0.065 uncapped)."""
    n = vertical.shape[-1]
    width = min(rows, n)
    held = torch.minimum(vertical, reaching)  # a key counts at most its own heaviest offset: one heavy line makes no run
    mean = torch.nn.functional.avg_pool1d(held.flatten(0, 1)[:, None], width, stride=1)[:, 0]
    heavy = mean.view(*vertical.shape[:2], -1) >= SLASH_DOMINANCE * window_max(reaching, width)[..., :n - width + 1]
    starts = torch.nn.functional.pad(heavy.float(), (width - 1, width - 1))  # window starts -(width - 1) .. n - 1
    return window_max(starts, width)[..., :n] > 0  # key j: a heavy window starting at j - width + 1 .. j


def _reaching_slash(lines: estimate.LineScores, n: int) -> torch.Tensor:
    """[B, H, N]: per key j, the largest slash mass among the offsets p - j of the estimation rows
    p (a window of the offsets between the first and last row's: exact for consecutive rows, a
    close bound for rows ``step`` apart, an approximation for irregular rows)."""
    span = lines.span
    first = lines.pos[:, 0]  # the latest row
    window = window_max(lines.slash, span)  # max slash[o .. o+span-1]
    offset = (first[:, None] - span + 1 - torch.arange(n, device=first.device)[None, :]).clamp(min=0)  # [B, N]
    return window.gather(2, offset[:, None, :].expand_as(window))


def window_max(x: torch.Tensor, width: int) -> torch.Tensor:
    """[..., N]: the max of x[..., o : o + width] for every o (zeros past the end; x >= 0), by
    doubling: log2(width) + 1 elementwise maxima instead of ``max_pool1d``'s width reads per output
    (0.19 ms per call at 128K with 28 heads on the H100). Exact: a max may count an element twice.
    Where Triton runs (a GPU), one pass of ``window_max_kernel`` instead, equal to this."""
    if triton_runs_on(x, has_reference=True) and width <= window_max_kernel.MAX_WIDTH:
        return window_max_kernel.window_max(x, width)
    return window_max_doubling(x, width)


def window_max_doubling(x: torch.Tensor, width: int) -> torch.Tensor:
    """``window_max`` in PyTorch: the CPU's path and the kernel's reference."""
    n = x.shape[-1]
    m = torch.nn.functional.pad(x, (0, width))
    span = 1
    while span * 2 <= width:  # m[o] = max x[o .. o + 2 span - 1]
        m = torch.maximum(m[..., :-span], m[..., span:])
        span *= 2
    if span < width:  # two windows of ``span`` overlapping to cover ``width``
        m = torch.maximum(m[..., :span - width], m[..., width - span:])
    return m[..., :n]


def vertical_slash_sets(patterns: list[VerticalSlash], lines: estimate.LineScores, n, block_m, block_n,
                        explained=None, ranking: torch.Tensor | None = None, ranked: tuple | None = None) -> BlockSets:
    """One VS pattern per head (sizes may differ), from these heads' last-query line scores. The
    first 30 columns and the blocks holding the first 100 diagonals are always taken (MInference).
    ``explained(columns)`` -> [B, H, N]: the slash mass those columns account for
    (``estimate.column_slash``); it is removed before blocks are ranked. ``ranking``: these heads'
    ``column_scores`` when already computed (``Estimates.column_ranking``). ``ranked``: the
    policy's (ranked columns, block order) for these heads (``policy._vertical_slash``), taken as
    they are when they are long enough: the sets the policy's recall was computed on."""
    want_list = [min(n, max(p.vertical, FORCED_SINK_COLUMNS)) for p in patterns]
    forced = _ceil_div(FORCED_LOCAL_DIAGONALS, block_n)  # row r' = 0 reaches offset 100 in block t = ceil(100 / BN)
    blocks_list = [min(_ceil_div(n, block_n), max(p.slash_blocks, forced)) for p in patterns]
    if ranked is not None and ranked[0].shape[-1] >= max(want_list):
        columns = _first_per_head(ranked[0][..., :max(want_list)], want_list, INVALID)
        blocks = ranked[1][..., :max(blocks_list)]
    else:
        columns = (column_scores(lines, n) if ranking is None else ranking).topk(max(want_list), dim=-1).indices
        columns = _first_per_head(columns, want_list, INVALID)
        slash = lines.slash if explained is None else (lines.slash - explained(columns)).clamp(min=0)
        mass = relative_block_peak(slash, block_m, block_n)
        mass[..., :forced] = float("inf")
        blocks = mass.topk(max(blocks_list), dim=-1).indices  # t - 1: blocks before the diagonal
    return BlockSets(_first_per_head(-1 - blocks, blocks_list, FAR), torch.empty_like(columns[..., :0]), columns)


def _first_per_head(t: torch.Tensor, counts: list[int], pad: int) -> torch.Tensor:
    """``t`` [B, H, K] with entries from ``counts[h]`` on set to ``pad`` (heads of one call may
    want different sizes); ``t`` itself when every head wants all K (no mask to build)."""
    if all(c == t.shape[-1] for c in counts):
        return t
    keep = torch.arange(t.shape[-1], device=t.device) < device_list(counts, t.device)[:, None]
    return torch.where(keep, t, pad)


def frame_phase(vertical: torch.Tensor, frame_stride: torch.Tensor, max_frame: int):
    """(mass [B, H], phase int64 [B, H]): the heaviest position class modulo each sample's frame
    stride in ``vertical`` [B, H, N] (column mass), and its mass: the grid's vertical lines, as the
    policy prices them and ``grid_sets`` builds them."""
    stride = frame_stride.clamp(min=1).long()
    residue = torch.arange(vertical.shape[-1], device=vertical.device)[None, None, :] % stride[:, None, None]
    mass = torch.zeros(*vertical.shape[:2], max(max_frame, 1), device=vertical.device)
    mass.scatter_add_(2, residue.expand_as(vertical), vertical)
    return mass.max(-1)


def grid_sets(pattern: Grid, vertical, frame_stride: torch.Tensor, max_frame: int, n, block_m, block_n,
              rows: torch.Tensor | None = None, row_count: int | None = None, local_frames=None):
    """vertical: fp32 [B, H, N] these heads' column scores (``LineScores.vertical``). Returns (order
    int32 [B, H, N], BlockSets in slot space). ``max_frame``: the largest frame stride of the batch
    as a Python int (known once per forward: no per-layer sync).

    ``rows`` (bool [B, N], ``row_count`` True per sample): the grid covers only these queries (a
    Q-boundary head's video rows). They take the first ``row_count`` slots, residue-major; the other
    keys follow in original order (the sink among them, as columns), so the lines, the periodic
    slashes and the horizontal band are the same blocks as in a video-only input.

    ``local_frames`` (one int per head, on the host): heads whose patterns differ only there share
    one call (one sort for all of them), each with its own periodic-slash window."""
    batch, heads = vertical.shape[:2]
    device = vertical.device
    if pattern.stride_kind == "frame":
        stride = frame_stride.clamp(min=1).long()[:, None].expand(batch, heads)
        # The lines' phase on the grid's own rows' keys: a sink in the prompt (kept as a column
        # anyway) once outweighed the lines seen from rows spread over 128 positions (2K, CPU).
        _, phase = frame_phase(vertical if rows is None else vertical * rows[:, None, :], frame_stride, max_frame)
    else:
        # At least 8 periods: with fewer, one heavy key makes any long stride look like a grid.
        candidates = estimate.stride_candidates(max_frame, min(pattern.max_stride, n // 8))
        stride, phase = estimate.grid_stride_phase(vertical, candidates)
    if rows is None:
        order, slots = grid_order(n, stride, phase), n
        line_count = (n - 1 - phase) // stride + 1  # tokens in the phase class
    else:
        order, slots = _subset_grid_order(rows, stride, phase, n), row_count
        in_phase = rows[:, None, :] & ((torch.arange(n, device=device) - phase[..., None]) % stride[..., None] == 0)
        line_count = in_phase.sum(-1)
    band_start = slots - line_count  # first slot of the vertical-line band
    empty = torch.empty(batch, heads, 0, dtype=torch.long, device=device)
    band = band_start // block_n if pattern.vline else None  # the band's key blocks: a span
    band_end = None if band is None else _band_end(order, slots, band_start, block_m, block_n)
    relative = empty
    if pattern.slash:
        windows = [_ceil_div(f, block_n) for f in (local_frames or [pattern.local_frames] * heads)]
        relative = torch.arange(-max(windows), 0, device=device)
        relative = torch.where(relative[None, :] >= -device_list(windows, device)[:, None], relative, FAR)
        relative = relative.expand(batch, heads, -1)
    full_rows = None
    if pattern.hline:
        m_end = (torch.arange(-(-slots // block_m), device=device) + 1) * block_m
        full_rows = m_end[None, None, :] > band_start[..., None]
    slots_of = torch.empty_like(order, dtype=torch.long).scatter_(  # inverse order (no second sort)
        -1, order.long(), torch.arange(n, device=device).expand(batch, heads, n))
    columns = slots_of[..., :min(pattern.sink, n)] if pattern.sink else empty
    return order, BlockSets(relative, empty, columns, full_rows, band, band_end)


def _band_end(order, slots: int, band_start, block_m: int, block_n: int) -> torch.Tensor:
    """int64 [B, H, M]: per query block, the key block after the last band key it can see. The band
    (slots [band_start, slots)) holds the phase class in position order, so a query block sees its
    keys up to its latest row's position; the rest are all in the future (on average half the
    band: each such tile was computed, then masked whole). No host sync."""
    num_m = -(-slots // block_m)
    rows = torch.nn.functional.pad(order[..., :slots], (0, num_m * block_m - slots), value=-1)
    latest = rows.view(*rows.shape[:2], num_m, block_m).amax(-1)  # [B, H, M] int32
    in_band = torch.arange(slots, device=order.device) >= band_start[..., None]
    ascending = torch.where(in_band, order[..., :slots], -1)  # -1 before the band: sorted as a whole
    seen = torch.searchsorted(ascending, latest, right=True)  # band_start + band keys at or before it
    return -(-seen // block_n)


def _subset_grid_order(rows, stride, phase, n):
    """int32 [B, H, N]: the ``rows`` (bool [B, N]) residue-major modulo ``stride`` with the
    ``phase`` class last (as ``grid_order``), then every other position in original order."""
    pos = torch.arange(n, device=rows.device)
    residue = (pos - phase[..., None]) % stride[..., None]
    residue = torch.where(residue == 0, stride[..., None], residue)
    after = (stride.max() + 1) * n  # past every residue class
    key = torch.where(rows[:, None, :], residue * n + pos, after + pos)
    return key.argsort(dim=-1).to(torch.int32)


def block_sparse_sets(pattern: BlockSparse, q, k, kv_heads, n, block_m, block_n) -> BlockSets:
    """MInference's block-sparse estimate: mean-pooled queries per query block against mean-pooled
    keys per key block (no scaling or softmax: only the ranking matters), block-causal, and the
    top ``top_k`` earlier key blocks of every query block (per query block: absolute ids [B,H,M,K]).
    q: the heads to index [B, Hs, N, D]; k: all KV heads; kv_heads: int64 [Hs], each head's KV head."""
    batch, heads_q = q.shape[:2]
    num_m, nkb = -(-n // block_m), -(-n // block_n)
    qp = _pool(q, num_m, block_m)  # [B, Hs, M, D]
    kp = _pool(k, nkb, block_n)[:, kv_heads]  # pooled once per KV head, then picked: [B, Hs, NKB, D]
    scores = qp @ kp.transpose(-1, -2)
    earlier = torch.arange(nkb, device=q.device)[None, :] < (torch.arange(num_m, device=q.device) *
                                                              (block_m // block_n))[:, None]
    scores = scores.masked_fill(~earlier, float("-inf"))
    top, ids = scores.topk(min(pattern.top_k, nkb), dim=-1)
    ids = torch.where(torch.isinf(top), INVALID, ids)
    empty = torch.empty(batch, heads_q, 0, dtype=torch.long, device=q.device)
    return BlockSets(empty, ids, empty.clone())


def _pool(t, blocks, size):
    """Mean over blocks of ``size`` tokens along dim 2 (the last block may be short), in fp32."""
    n = t.shape[2]
    padded = torch.nn.functional.pad(t.float(), (0, 0, 0, blocks * size - n))
    sums = padded.view(*t.shape[:2], blocks, size, t.shape[-1]).sum(3)
    counts = (n - torch.arange(blocks, device=t.device) * size).clamp(max=size).to(sums.dtype)
    return sums / counts[:, None]
