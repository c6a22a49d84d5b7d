"""Online estimation from the last queries (MInference Alg. 2, MMInference Alg. 1).

``last_queries`` picks, per sample, ``last_q`` of the last tokens (of one modality, for boundary
heads): every other one of the last ``2 last_q`` (``ROW_STEP``) where the set is twice that long,
so the rows sit in every part of a query block, as the rows they stand for do. ``line_scores``
reads off their float32 softmax over all keys (causal in original positions) what every pattern
needs: the mass per key column (vertical) and per diagonal offset (slash), and each row's mass per
key block. The softmax itself is never kept: on the GPU the kernel reduces the rows' tiles as it
computes them (nothing [L, N] in memory); otherwise it is built a few heads at a time and reduced
at once (``line_scores_kernel.MAX_PROBS_BYTES``).
``last_query_probs`` is the plain reference of the same softmax, for tests.
``held_out_queries`` and ``dense_row_lse`` give the rows (disjoint from the estimation rows) and
dense log-sum-exp on which ``verify`` measures what a layer's launches really kept.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from mmcompile.kernels import triton_runs_on

from . import line_scores_kernel
from .index_builder import device_list
from .layout import PAD

LAST_Q = 64
# Estimation rows are every ROW_STEP-th of the last LAST_Q * ROW_STEP rows: over 128 consecutive
# positions they sit at every in-block position of a 128-row query block (one parity), where the
# last 64 rows are its second half alone. Block-granular bands (A-shape's local blocks, VS's slash
# blocks, Grid's band launch) reach back from a query block's start, so a second-half row sees half
# a block more of them than a typical row: the estimates of band-heavy heads were optimistic by that
# much (per 64-key bin a Grid launch kept [64, 64, 32.5] of the estimation rows' nearest keys against
# [64, 49.6, 16.5] of held-out rows, 128K, CPU, 2026-12-07). The same rows, the same cost.
ROW_STEP = 2
HELD_OUT = 128  # held-out rows per row set (``held_out_queries``): as many in each half as the later half had


@dataclasses.dataclass(frozen=True)
class LineScores:
    """Per head, the estimation rows' attention mass summed over the valid rows.

    vertical: fp32 [B, H, N], mass on each key column;
    slash:    fp32 [B, H, N], mass on each diagonal offset o (key = query position - o);
    pos, valid: int64/bool [B, L], the rows (latest first) and which exist;
    step: row l at pos[:, 0] - step l in every sample (``row_step``), 0 when they are not so regular;
    lse: fp32 [B, H, L], the rows' log-sum-exp (to recompute single entries of their softmax);
    blocks: fp32 [B, H, L, ceil(N / block_n)], each row's mass per key block, when ``line_scores``
    was given a ``block_n`` (the exact recall of candidate indexes on these rows: ``row_recall``).
    """
    vertical: torch.Tensor
    slash: torch.Tensor
    pos: torch.Tensor
    valid: torch.Tensor
    lse: torch.Tensor
    blocks: torch.Tensor | None = None
    step: int = 1

    def heads(self, ids: list[int]) -> "LineScores":
        if ids == list(range(self.vertical.shape[1])):
            return self
        pick = functools.partial(select_heads, ids=ids)
        return dataclasses.replace(self, vertical=pick(self.vertical), slash=pick(self.slash), lse=pick(self.lse),
                                   blocks=None if self.blocks is None else pick(self.blocks))

    @property
    def span(self) -> int:
        """Positions from the earliest estimation row to the latest (irregular rows: as many as rows)."""
        return max(self.step, 1) * (self.pos.shape[-1] - 1) + 1

    @functools.cached_property
    def rows(self) -> torch.Tensor:
        """fp32 [B, 1, 1]: valid rows per sample (at least 1), to turn sums into per-row means.
        Computed once per instance: the policy reads it a dozen times a layer."""
        return self.valid.sum(-1).clamp(min=1)[:, None, None].float()


def select_heads(t: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """``t`` [B, H, ...] restricted to heads ``ids`` (itself when they are all its heads, in order)."""
    if ids == list(range(t.shape[1])):
        return t
    return t.index_select(1, device_list(ids, t.device))  # a list index would copy it synchronously


def last_queries(modality: torch.Tensor | None, n: int, batch: int, want: int | None = None,
                 last_q: int = LAST_Q, device=None, step: int = ROW_STEP):
    """Positions int64 [B, L] of ``last_q`` of the last tokens (of modality ``want``; non-pad if
    None), latest first: every ``step``-th of the last ``step * last_q`` where the set is long
    enough (``_spreads``; a shorter set keeps its earlier rows for ``held_out_queries``), else the
    last ``last_q``; and a bool [B, L] saying which exist."""
    last_q = min(last_q, n)
    if modality is None:
        step = step if _spreads(n, last_q, step) else 1
        pos = torch.arange(n - 1, n - 1 - step * last_q, -step, device=device).expand(batch, last_q)
        return pos, torch.ones(batch, last_q, dtype=torch.bool, device=device)
    hit = modality != PAD if want is None else modality == want
    score = torch.where(hit, torch.arange(n, device=modality.device), -1)
    top = score.topk(min(step * last_q, n), dim=1).values  # latest first
    ranks = torch.arange(last_q, device=modality.device)
    spread = _spreads(hit.sum(-1, keepdim=True), last_q, step)  # [B, 1]
    top = top.gather(1, torch.where(spread, ranks * step, ranks))
    return top.clamp(min=0), top >= 0


def _spreads(count, last_q: int, step: int):
    """Whether a set of ``count`` rows (int or tensor) takes its estimation rows ``step`` apart: it
    holds at least twice the ``step * last_q`` rows they span."""
    return count >= 2 * step * last_q


def estimation_span(count: torch.Tensor, last_q: int = LAST_Q, step: int = ROW_STEP) -> torch.Tensor:
    """How many of a set's last rows ``last_queries`` spans, for sets of ``count`` rows (int64 [B]):
    ``step * last_q`` where they spread, else ``last_q``, at most the set. Held-out rows stay before them."""
    return torch.minimum(torch.where(_spreads(count, last_q, step), step * last_q, last_q), count)


def held_out_queries(modality: torch.Tensor | None, n: int, batch: int, want: int | None = None,
                     count: int = HELD_OUT, device=None):
    """Positions int64 [B, L] (ascending) and valid bool [B, L] of ``count`` rows of the same set
    as ``last_queries`` but disjoint from them: evenly spaced over all the set's other rows. The
    recall a layer reports is measured here, on rows the index was not built from, so a pattern
    fitted to the last rows alone (columns only those rows use) shows. Over the whole set, not its
    later half: the estimation rows see only the last part of a prompt, and where an earlier part
    has another structure (several videos of different frame sizes: their own lines) only rows
    there show what the pattern misses (128K, several videos, H100: 12 heads of 364 off by 0.06-0.52
    on rows the later half never held)."""
    hit = (torch.ones(batch, n, dtype=torch.bool, device=device) if modality is None else
           modality != PAD if want is None else modality == want)
    rank = hit.long().cumsum(-1)  # [B, N]: rows of the set up to each position
    others = (rank[:, -1] - estimation_span(rank[:, -1])).clamp(min=0)  # rows before the estimation rows
    step = torch.arange(count, device=hit.device)
    wanted = 1 + ((step[None, :] + 0.5) * others[:, None] / count).long()  # 1-based ranks, evenly spaced
    wanted = torch.minimum(wanted, others[:, None])
    pos = torch.searchsorted(rank, wanted.contiguous()).clamp(max=n - 1)
    valid = (wanted >= 1) & (others[:, None] >= 1)
    valid[:, 1:] &= wanted[:, 1:] != wanted[:, :-1]  # few rows: each once
    return pos, valid


def row_step(pos: torch.Tensor, valid: torch.Tensor) -> int:
    """s when every sample's valid rows are at pos[:, 0] - s l (s = 1: consecutive tokens; s =
    ``ROW_STEP``: spread), else 0 (one host sync: call once per forward). Then slash scores need
    no gather (``line_scores``)."""
    if pos.shape[1] < 2:
        return 1
    gaps = pos[:, :-1] - pos[:, 1:]
    return next((s for s in (1, ROW_STEP) if bool(((gaps == s) | ~valid[:, 1:]).all())), 0)


def line_scores(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, scale: float,
                key_pad: torch.Tensor | None = None, start: int = 0, step: int = 0,
                use_kernel: bool | None = None, block_n: int | None = None) -> LineScores:
    """Vertical and slash scores of all query heads from the rows ``pos`` (GQA without K copies).

    The product runs in the inputs' dtype (fp32 accumulate), the softmax in fp32: enough to rank
    columns and diagonals. ``start`` (<= every valid position, known once per forward) limits the
    causal masking to the keys from there on. ``step`` (``row_step``; 0: irregular rows): row l is
    at pos[:, 0] - step l, so the slash sums are read off a skewed view of the softmax instead of a
    gathered copy; K then gets step L zero rows so that the skew never reads a neighbouring row's
    keys. ``use_kernel`` (default: where Triton runs, ``kernels.triton_runs_on``): softmax, column
    sums, block sums and log-sum-exp by the Triton passes of ``line_scores_kernel`` (fp32 scores);
    the slash sums there too for regular rows (nothing [L, N] in memory), else from their
    probabilities as here.
    ``block_n``: also each row's mass per key block of that size (``LineScores.blocks``).
    """
    if triton_runs_on(q, has_reference=True) if use_kernel is None else use_kernel:
        return _line_scores_kernel(q, k, pos, valid, scale, key_pad, step, block_n)
    batch, heads_q, n, d = q.shape
    heads_kv, last = k.shape[1], pos.shape[1]
    group = heads_q // heads_kv
    rows = q.gather(2, pos[:, None, :, None].expand(batch, heads_q, last, d)) * scale
    width = n + step * last
    weight = valid.to(torch.float32)
    future = torch.arange(start, width, device=q.device)[None, None, :] > pos[:, :, None]  # [B, L, W - start]
    vertical = torch.empty(batch, heads_q, n, dtype=torch.float32, device=q.device)
    slash = torch.empty_like(vertical)
    lse = torch.empty(batch, heads_q, last, dtype=torch.float32, device=q.device)
    blocks = _empty_blocks(batch, heads_q, last, n, block_n, q.device)
    # Per head the bf16 scores, their fp32 copy in the softmax, the probabilities and a copy of the
    # skewed view: about four times the kernel path's probabilities, so a quarter of its chunk.
    chunk = min(group, line_scores_kernel.head_chunk(last, 4 * width))
    chunks = [slice(h, min(h + chunk, (g + 1) * group)) for g in range(heads_kv)
              for h in range(g * group, (g + 1) * group, chunk)]
    keys, skew = None, _skew_keys(pos[:, 0], n) if step else None
    for heads in chunks:  # heads of one KV group at a time: one [chunk, L, W] softmax
        count, first = heads.stop - heads.start, heads.start
        if first % group == 0:  # this group's keys (zero rows after them for the skew: a copy of one KV head)
            keys = torch.nn.functional.pad(k[:, first // group], (0, 0, 0, step * last)) if step else k[:, first // group]
        scores = torch.matmul(rows[:, heads].reshape(batch, count * last, d),
                              keys.transpose(-1, -2)).view(batch, count, last, width)
        scores[..., start:].masked_fill_(future[:, None], float("-inf"))
        if key_pad is not None:  # padding: all-masked rows become zeros
            scores[..., :n].masked_fill_(key_pad[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        if key_pad is not None:
            probs.nan_to_num_(0.0)
        # log-sum-exp without another pass in fp32: at the row's top key, p = exp(s - lse), and
        # p >= 1/N there, so lse = s_max - log p_max is exact to fp32 rounding.
        lse[:, heads] = scores.amax(-1).float() - probs.amax(-1).log()
        vertical[:, heads] = torch.matmul(weight[:, None, None, :], probs)[:, :, 0, :n]
        slash[:, heads] = (_slash_skewed(probs, skew, weight, n, step) if step
                           else _slash_gathered(probs, pos, weight))
        if blocks is not None:
            blocks[:, heads] = _block_sums(probs, n, block_n)
    return LineScores(vertical, slash, pos, valid, lse, blocks, step)


def _line_scores_kernel(q, k, pos, valid, scale, key_pad, step, block_n=None) -> LineScores:
    batch, heads_q, n, _ = q.shape
    last = pos.shape[1]
    vertical = torch.empty(batch, heads_q, n, dtype=torch.float32, device=q.device)
    blocks = _empty_blocks(batch, heads_q, last, n, block_n, q.device)
    skew = _skew_keys(pos[:, 0], n) if step else None
    fused = blocks is not None and line_scores_kernel.fuses_block_sums(block_n)
    if step and (fused or blocks is None) and step * (last - 1) < line_scores_kernel.BLOCK_K:
        # Every sum in the kernel, no probabilities in memory: all heads in one launch.
        by_key, row_lse = line_scores_kernel.line_skew_sums(q, k, pos, valid, scale, key_pad, slice(0, heads_q),
                                                            vertical, blocks, block_n, step)
        return LineScores(vertical, _offsets_of_keys(by_key, skew), pos, valid, row_lse.contiguous(), blocks, step)
    # Otherwise the probabilities, a few heads at a time, and the sums the kernel did not make.
    width = n + step * last  # zero pad columns for the skewed view
    weight = valid.to(torch.float32)
    slash, lse = [], []  # per chunk; one chunk (up to ~64K tokens with 64 rows) needs no copy
    chunk = line_scores_kernel.head_chunk(last, width)
    for first in range(0, heads_q, chunk):  # bounded memory: ``MAX_PROBS_BYTES`` of probabilities
        heads = slice(first, min(heads_q, first + chunk))
        probs, chunk_lse = line_scores_kernel.line_probs(q, k, pos, valid, scale, key_pad, heads, width, vertical,
                                                         blocks if fused else None, block_n)
        lse.append(chunk_lse)
        slash.append(_slash_skewed(probs, skew, weight, n, step) if step else _slash_gathered(probs, pos, weight))
        if blocks is not None and not fused:
            blocks[:, heads] = _block_sums(probs, n, block_n)
    return LineScores(vertical, _cat_heads(slash), pos, valid, _cat_heads(lse), blocks, step)


def _empty_blocks(batch, heads, rows, n, block_n, device):
    if block_n is None:
        return None
    return torch.empty(batch, heads, rows, -(-n // block_n), dtype=torch.float32, device=device)


def _block_sums(probs, n, block_n):
    """[B, H, L, ceil(N / block_n)]: the probabilities [B, H, L, >= N] summed per key block (no copy
    of them: the whole blocks as a view, the last partial block apart)."""
    whole = n // block_n
    sums = probs[..., :whole * block_n].unflatten(-1, (whole, block_n)).sum(-1)
    if whole * block_n < n:
        sums = torch.cat([sums, probs[..., whole * block_n:n].sum(-1, keepdim=True)], -1)
    return sums


def _cat_heads(chunks: list[torch.Tensor]) -> torch.Tensor:
    return chunks[0].contiguous() if len(chunks) == 1 else torch.cat(chunks, dim=1)


def dense_row_lse(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, scale: float,
                  key_pad: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 [B, Hq, L]: the log-sum-exp of rows ``pos`` over their causal keys (padding excluded),
    -inf where a row sees no key: the denominator of the recall measured on held-out rows. One
    KV group at a time in PyTorch; the first Triton pass of ``line_scores_kernel`` where it runs."""
    if triton_runs_on(q, has_reference=True):
        return line_scores_kernel.row_lse_of(q, k, pos, valid, scale, key_pad)
    batch, heads_q, n, d = q.shape
    group, last = heads_q // k.shape[1], pos.shape[1]
    rows = q.gather(2, pos[:, None, :, None].expand(batch, heads_q, last, d))
    future = torch.arange(n, device=q.device)[None, None, :] > pos[:, :, None]
    if key_pad is not None:
        future = future | key_pad[:, None, :]
    out = torch.empty(batch, heads_q, last, dtype=torch.float32, device=q.device)
    for g in range(k.shape[1]):
        heads = slice(g * group, (g + 1) * group)
        scores = torch.matmul(rows[:, heads], k[:, g, None].transpose(-1, -2)).float() * scale
        out[:, heads] = scores.masked_fill(future[:, None], float("-inf")).logsumexp(-1)
    return out


def column_slash(q: torch.Tensor, k: torch.Tensor, lines: LineScores, head_ids: list[int], columns: torch.Tensor,
                 scale: float) -> torch.Tensor:
    """fp32 [B, H, N]: the part of ``lines.slash`` that key columns ``columns`` (int64 [B, H, C],
    negative = unused; H = len(head_ids)) account for. A heavy key seen by consecutive rows spreads
    over consecutive offsets and looks like a band of slashes; subtracting it lets slash blocks
    be chosen for what columns do not already cover (the sink, above all)."""
    return slash_of_columns(column_probs(q, k, lines, head_ids, columns, scale), lines, columns, q.shape[2])


def column_probs(q: torch.Tensor, k: torch.Tensor, lines: LineScores, head_ids: list[int], columns: torch.Tensor,
                 scale: float) -> torch.Tensor:
    """fp32 [B, H, L, C]: each estimation row's probability at key columns ``columns`` (int64
    [B, H, C], negative = unused; H = len(head_ids)), 0 where the column is unused, in the row's
    future, or the row does not exist."""
    batch, _, n, d = q.shape
    group = q.shape[1] // k.shape[1]
    last = lines.pos.shape[1]  # the rows of all heads first (small), then the heads: q itself is never copied
    rows = select_heads(q.gather(2, lines.pos[:, None, :, None].expand(batch, q.shape[1], last, d)), head_ids)
    # Key rows picked straight from K viewed as [B, Hkv * N, D]: no per-query-head copy of K.
    kv_start = device_list([h // group * n for h in head_ids], q.device)  # each head's KV head's first row
    flat = kv_start[None, :, None] + columns.clamp(min=0)  # [B, H, C]
    keys = k.reshape(batch, -1, d).gather(1, flat.flatten(1)[..., None].expand(-1, -1, d)).view(*columns.shape, d)
    scores = torch.matmul(rows, keys.transpose(-1, -2)).float() * scale  # [B, H, L, C]
    keep = ((lines.pos[:, None, :, None] >= columns[:, :, None, :]) & (columns >= 0)[:, :, None, :]
            & lines.valid[:, None, :, None])
    return torch.where(keep, torch.exp(scores - lines.lse[..., None]), 0.0)


def slash_of_columns(probs: torch.Tensor, lines: LineScores, columns: torch.Tensor, n: int) -> torch.Tensor:
    """fp32 [B, H, N]: ``column_probs`` summed per diagonal offset (row position - column)."""
    offsets = lines.pos[:, None, :, None] - columns[:, :, None, :]
    offsets = torch.where((offsets >= 0) & (columns >= 0)[:, :, None, :], offsets, 0)  # their probs are 0
    out = torch.zeros(*probs.shape[:2], n, dtype=torch.float32, device=probs.device)
    return out.scatter_add_(2, offsets.flatten(2), probs.flatten(2))


def _skew_keys(first, n):
    """(key int64 [B, 1, N] of each offset o for row 0 at ``first``, clamped at 0; bool [B, 1, N]:
    offsets reaching before key 0): what ``_slash_skewed`` reads, the same for every head chunk."""
    key = first[:, None] - torch.arange(n, device=first.device)[None, :]
    return key.clamp(min=0)[:, None, :], (key < 0)[:, None, :]


def _slash_skewed(probs, skew_keys, weight, n, step: int = 1):
    """probs [B, G, L, N + step L] with zero pad columns, row l at position first - step l
    (``skew_keys``: ``_skew_keys(first, n)``). The view skew[c, l] = probs[l, c - step l] (row
    stride W - step) lands on pad zeros when c < step l; summing it over l gives the mass per key c
    of row 0's diagonal, i.e. offset first - c."""
    batch, group, last, width = probs.shape
    skew = probs.as_strided((batch, group, n, last), (group * last * width, last * width, 1, width - step),
                            probs.storage_offset())
    return _offsets_of_keys(torch.matmul(skew, weight[:, None, :, None])[..., 0], skew_keys)  # by key [B, G, n]


def _offsets_of_keys(by_key, skew_keys):
    """Slash sums [B, G, N] per offset o from the sums per key c of row 0's diagonal (o = first - c)."""
    batch, group, n = by_key.shape
    key, before = skew_keys
    return by_key.gather(2, key.expand(batch, group, n)).masked_fill_(before, 0.0)


def _slash_gathered(probs, pos, weight):
    """Any rows: gather each row's keys at every offset, then sum over rows."""
    batch, group, last, n = probs.shape
    keys = pos[:, :, None] - torch.arange(n, device=probs.device)[None, None, :]  # [B, L, N]
    gathered = probs.gather(3, keys.clamp(min=0)[:, None].expand(batch, group, last, n))
    return torch.einsum("bhln,bln->bhn", gathered, weight[:, :, None] * (keys >= 0))


def last_query_probs(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor,
                     scale: float, key_pad: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: float32 [B, Hq, L, N] softmax of the chosen rows over all keys (rows that do not
    exist hold garbage). ``line_scores`` must equal sums of it."""
    batch, heads_q, n, d = q.shape
    group = heads_q // k.shape[1]
    rows = q.gather(2, pos[:, None, :, None].expand(batch, heads_q, pos.shape[1], d)).float() * scale
    scores = rows @ k.float().repeat_interleave(group, dim=1).transpose(-1, -2)
    future = torch.arange(n, device=q.device)[None, None, :] > pos[:, :, None]
    scores = scores.masked_fill(future[:, None], float("-inf"))
    if key_pad is not None:
        scores = scores.masked_fill(key_pad[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


def grid_stride_phase(vertical: torch.Tensor, candidates: list[int]):
    """Best (stride, phase) per (b, h) among candidate strides.

    Score of a stride s: the heaviest phase's share of the mass times s, i.e. its mass over the
    uniform 1/s baseline, so small strides are not favoured just for holding more tokens. Multiples
    of the true stride score the same up to noise while the true stride beats its divisors by ~2x,
    so a larger stride must win by 30% to replace a smaller one.
    """
    batch, heads, n = vertical.shape
    total = vertical.sum(-1).clamp(min=1e-20)
    best_score = torch.full((batch, heads), -1.0, device=vertical.device)
    best_stride = torch.ones(batch, heads, dtype=torch.long, device=vertical.device)
    best_phase = torch.zeros(batch, heads, dtype=torch.long, device=vertical.device)
    for s in candidates:  # a few strides; each is one O(N) view-and-sum
        padded = torch.nn.functional.pad(vertical, (0, (-n) % s))
        mass = padded.view(batch, heads, -1, s).sum(2)
        top, phase = mass.max(-1)
        score = top / total * s
        better = score > best_score * 1.3
        best_score = torch.where(better, score, best_score)
        best_stride = torch.where(better, s, best_stride)
        best_phase = torch.where(better, phase, best_phase)
    return best_stride, best_phase


def stride_candidates(frame: int, max_stride: int) -> list[int]:
    """Candidate strides for a searched grid: the frame size, its halves and doubles, and a coarse
    log-spaced set up to ``max_stride``."""
    coarse = {int(round(2 ** (e / 4))) for e in range(16, 4 * max_stride.bit_length())}
    around = {frame, frame // 2, frame * 2, frame // 4} if frame > 0 else set()
    return sorted(v for v in coarse | around if 8 <= v <= max_stride)
