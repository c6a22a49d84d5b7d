"""The estimation rows' softmax, vertical sums and log-sum-exp in two Triton passes.

``estimate.line_scores`` in PyTorch spends ~4 ms per query modality at 128K (BENCHMARKS.md): the
bf16 scores, an fp32 softmax and two max reductions each re-read a [rows, N] tensor per head. Here
pass 1 computes each row's log-sum-exp per key split (an online softmax over score tiles, like
FlashAttention) and pass 2 recomputes the scores tile by tile and reduces the column sums and each
row's sums per key block. For rows at regular positions (row l at pos[0] - step l) it also
reduces the slash sums (each tile's anti-diagonals, ``step`` apart) and writes no probabilities;
for other rows it writes the normalised probabilities once, and the slash sums are a gathered read
of them in PyTorch. Scores are fp32 accumulations of the inputs' dtype, causal in original
positions, padding keys excluded.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmcompile.kernels import interpreting

SPLIT = 4096  # keys per pass-1 program (finer splits, 4x the programs at 128K, were no faster: BENCHMARKS.md)
BLOCK_K = 128  # key tile
MAX_PROBS_BYTES = 1 << 29  # heads are processed in chunks whose probabilities fit in this (2 heads at 1M)


@triton.jit
def _tile_scores(q, K, kv_base, keys, stride_kn, offs_d, n, scale, pos, row_ok, KeyPad, pad_base,
                 HEAD_DIM: tl.constexpr, HAS_PAD: tl.constexpr, DOT_FP32: tl.constexpr):
    """Scores [ROWS, BLOCK_K] of one key tile, -inf where the key is in a row's future, padding,
    or past the end."""
    k = tl.load(K + kv_base + keys[:, None] * stride_kn + offs_d[None, :],
                mask=(keys[:, None] < n) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    if DOT_FP32:
        s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)))
    else:
        s = tl.dot(q, tl.trans(k))
    ok = row_ok[:, None] & (keys[None, :] <= pos[:, None]) & (keys[None, :] < n)
    if HAS_PAD:
        pad = tl.load(KeyPad + pad_base + keys, mask=keys < n, other=1)
        ok &= (pad == 0)[None, :]
    return tl.where(ok, s * scale, float("-inf"))


@triton.jit
def _estimation_rows(Q, Pos, Valid, b, h, rows, stride_qb, stride_qh, stride_qn, stride_pb,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr, first):
    """Sample b's estimation rows ``first`` .. ``first + ROWS - 1`` for head h: (exists, valid,
    positions, q rows [ROWS, BLOCK_D])."""
    offs_l = first + tl.arange(0, ROWS)
    offs_d = tl.arange(0, BLOCK_D)
    exists = offs_l < rows
    pos = tl.load(Pos + b * stride_pb + offs_l, mask=exists, other=0)
    row_ok = exists & (tl.load(Valid + b * stride_pb + offs_l, mask=exists, other=0) != 0)
    q = tl.load(Q + b * stride_qb + h * stride_qh + pos[:, None] * stride_qn + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    return exists, row_ok, pos, q


@triton.jit
def _row_stats_kernel(Q, K, V, Pos, Valid, KeyPad, MaxOut, SumOut, AccOut,
                      n, scale, head0, heads, group, rows, splits, chunks,
                      stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_pb,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr,
                      BLOCK_K: tl.constexpr, SPLIT: tl.constexpr, HAS_PAD: tl.constexpr,
                      DOT_FP32: tl.constexpr, WITH_V: tl.constexpr):
    """Pass 1: per (key split, chunk of ``ROWS`` rows, batch * head) the running max and sum of exp
    of every row; with ``WITH_V`` also the unnormalised output sum_k exp(s - max) v_k (V strided
    like K). Heads, then row chunks, vary fastest: the programs reading a K (and V) tile run
    together, so it is read from memory once, not once per query head and chunk."""
    pid = tl.program_id(0).to(tl.int64)  # offsets past 2**31 at 1M tokens
    head_rows = tl.num_programs(0) // (splits * chunks)  # batch * heads
    bh = pid % head_rows
    chunk = (pid // head_rows) % chunks
    split = pid // (head_rows * chunks)
    b = bh // heads
    h = head0 + bh % heads
    offs_l = tl.arange(0, ROWS)
    offs_d = tl.arange(0, BLOCK_D)
    _, row_ok, pos, q = _estimation_rows(Q, Pos, Valid, b, h, rows, stride_qb, stride_qh, stride_qn, stride_pb,
                                         HEAD_DIM, BLOCK_D, ROWS, chunk * ROWS)
    kv_base = b * stride_kb + (h // group) * stride_kh
    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, BLOCK_D], tl.float32)
    for start in range(split * SPLIT, split * SPLIT + SPLIT, BLOCK_K):
        keys = start + tl.arange(0, BLOCK_K)
        s = _tile_scores(q, K, kv_base, keys, stride_kn, offs_d, n, scale, pos, row_ok, KeyPad, b * n,
                         HEAD_DIM, HAS_PAD, DOT_FP32)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if WITH_V:
            v = tl.load(V + kv_base + keys[:, None] * stride_kn + offs_d[None, :],
                        mask=(keys[:, None] < n) & (offs_d[None, :] < HEAD_DIM), other=0.0)
            if DOT_FP32:
                pv = tl.dot(p, v.to(tl.float32))
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
        m_i = m_new
    out = ((bh * splits + split) * chunks + chunk) * ROWS + offs_l  # [B Hs, splits, chunks, ROWS]
    tl.store(MaxOut + out, m_i)
    tl.store(SumOut + out, l_i)
    if WITH_V:
        tl.store(AccOut + out[:, None] * BLOCK_D + offs_d[None, :], acc)


@triton.jit
def _probs_kernel(Q, K, Pos, Valid, KeyPad, Lse, Probs, Vertical, Blocks, ByKey,
                  n, width, scale, head0, heads, group, rows, key_blocks, by_key_width,
                  stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_pb,
                  stride_vb, stride_vh, stride_bb, stride_bh, stride_bl,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
                  HAS_PAD: tl.constexpr, DOT_FP32: tl.constexpr, BLOCK_N: tl.constexpr,
                  WRITE_PROBS: tl.constexpr, SKEW: tl.constexpr, STEP: tl.constexpr):
    """Pass 2: per (key tile, batch * head) the probabilities (zero where masked, and in the pad
    columns n .. width) and their sum over the valid rows; with ``BLOCK_N`` (> 0, dividing
    ``BLOCK_K``) also each row's sum per key block of that size, so nothing reads them again for it.
    ``SKEW`` (row l at pos[0] - STEP l, latest first): ByKey[c] += p[l, c - STEP l] summed over
    rows l, the slash mass of row 0's offset pos[0] - c (``estimate._slash_skewed`` without the
    probabilities in memory); a key gets it from at most two tiles (STEP (ROWS - 1) < BLOCK_K),
    each added once onto zero, so the sums do not depend on the order the atomics land in."""
    pid = tl.program_id(0).to(tl.int64)
    head_rows = tl.num_programs(0) // tl.cdiv(width, BLOCK_K)  # batch * heads
    tile = pid // head_rows  # heads vary fastest: a K tile's heads run together (one read of it from memory)
    bh = pid % head_rows
    b = bh // heads
    local = bh % heads
    h = head0 + local
    offs_l = tl.arange(0, ROWS)
    offs_d = tl.arange(0, BLOCK_D)
    exists, row_ok, pos, q = _estimation_rows(Q, Pos, Valid, b, h, rows, stride_qb, stride_qh, stride_qn, stride_pb,
                                              HEAD_DIM, BLOCK_D, ROWS, 0)
    lse = tl.load(Lse + bh * ROWS + offs_l)
    keys = tile * BLOCK_K + tl.arange(0, BLOCK_K)
    s = _tile_scores(q, K, b * stride_kb + (h // group) * stride_kh, keys, stride_kn, offs_d, n, scale, pos,
                     row_ok, KeyPad, b * n, HEAD_DIM, HAS_PAD, DOT_FP32)
    p = tl.where(s == float("-inf"), 0.0, tl.exp(s - tl.where(lse == float("-inf"), 0.0, lse)[:, None]))
    if WRITE_PROBS:
        tl.store(Probs + ((bh * rows + offs_l[:, None]) * width + keys[None, :]), p,
                 mask=exists[:, None] & (keys[None, :] < width))
    if SKEW:  # the tile's anti-diagonals: element (l, key) goes to key + STEP l
        # Row l rotated right by STEP l (one gather of the tile's size): column m then holds the
        # element that goes to m (m >= STEP l) or, wrapped around, to m + BLOCK_K (m < STEP l).
        m = tl.arange(0, BLOCK_K)
        shift = offs_l[:, None] * STEP
        rotated = tl.gather(p, (m[None, :] - shift + BLOCK_K) % BLOCK_K, 1)
        low = m[None, :] >= shift
        c = tile * BLOCK_K + m
        by_key = ByKey + bh * by_key_width + c
        tl.atomic_add(by_key, tl.sum(tl.where(low, rotated, 0.0), 0), mask=c < n, sem="relaxed")
        tl.atomic_add(by_key + BLOCK_K, tl.sum(tl.where(low, 0.0, rotated), 0),
                      mask=(m < STEP * (ROWS - 1)) & (c + BLOCK_K < n), sem="relaxed")
    tl.store(Vertical + b * stride_vb + h * stride_vh + keys, tl.sum(p, 0), mask=keys < n)
    if BLOCK_N > 0:  # keys past n have p = 0: a partial last block sums what it has
        PER_TILE: tl.constexpr = BLOCK_K // BLOCK_N
        sums = tl.sum(tl.reshape(p, (ROWS, PER_TILE, BLOCK_N)), 2)
        kb = tile * PER_TILE + tl.arange(0, PER_TILE)
        tl.store(Blocks + b * stride_bb + h * stride_bh + offs_l[:, None] * stride_bl + kb[None, :], sums,
                 mask=exists[:, None] & (kb[None, :] < key_blocks))


def _launch_args(q, k, pos, valid, key_pad, rows_per_program: int | None = None):
    d, rows = q.shape[-1], pos.shape[1]
    rows_pad = max(16, triton.next_power_of_2(min(rows, rows_per_program or rows)))
    pos32 = pos.to(torch.int32).contiguous()
    valid8 = valid.to(torch.int8).contiguous()
    pad = key_pad.to(torch.int8).contiguous() if key_pad is not None else pos32
    common = dict(HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)), ROWS=rows_pad, BLOCK_K=BLOCK_K,
                  HAS_PAD=key_pad is not None, DOT_FP32=interpreting() and q.dtype != torch.float32, num_warps=4)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), pos32.stride(0))
    return pos32, valid8, pad, common, strides, rows_pad


def row_lse(q, k, pos, valid, scale: float, key_pad, heads: slice, v=None, rows_per_program: int | None = None):
    """fp32 [B * Hs, rows padded]: each row's log-sum-exp over its causal keys (pass 1 alone),
    -inf where a row sees no key. ``row_lse_of`` trims it to [B, Hs, L]. With ``v`` (strided as
    ``k``): (lse, out fp32 [B * Hs, rows padded, BLOCK_D]), the rows' dense attention output
    (0 where a row sees no key), from the same pass. ``rows_per_program``: the rows one program
    holds (its fp32 accumulator [rows, D] must stay in registers); more rows run in chunks of
    that many within the one launch."""
    batch, _, n, d = q.shape
    count = heads.stop - heads.start
    pos32, valid8, pad, common, strides, rows_pad = _launch_args(q, k, pos, valid, key_pad, rows_per_program)
    chunks = triton.cdiv(pos.shape[1], rows_pad)
    if v is not None and v.stride() != k.stride():
        v = v.contiguous() if k.is_contiguous() else torch.empty_strided(k.shape, k.stride(), dtype=v.dtype,
                                                                        device=v.device).copy_(v)
    splits = triton.cdiv(n, SPLIT)
    maxes = torch.empty(batch * count, splits, chunks * rows_pad, dtype=torch.float32, device=q.device)
    sums = torch.empty_like(maxes)
    accs = maxes if v is None else torch.empty(*maxes.shape, common["BLOCK_D"], dtype=torch.float32, device=q.device)
    _row_stats_kernel[(splits * chunks * batch * count,)](
        q, k, k if v is None else v, pos32, valid8, pad, maxes, sums, accs, n, scale, heads.start, count,
        q.shape[1] // k.shape[1], pos.shape[1], splits, chunks, *strides, SPLIT=SPLIT, WITH_V=v is not None,
        **common)
    top = maxes.amax(1, keepdim=True)
    safe = torch.where(top == float("-inf"), 0.0, top)
    weight = torch.exp(maxes - safe)  # [B * Hs, splits, chunks * ROWS]
    total = (sums * weight).sum(1)
    lse = (safe[:, 0] + total.log()).contiguous()  # -inf: no key seen
    if v is None:
        return lse
    out = (accs * weight[..., None]).sum(1) / total.clamp(min=1e-30)[..., None]
    return lse, torch.where((total > 0)[..., None], out, 0.0)


def row_lse_of(q, k, pos, valid, scale: float, key_pad) -> torch.Tensor:
    """fp32 [B, Hq, L]: ``row_lse`` for every query head."""
    lse = row_lse(q, k, pos, valid, scale, key_pad, slice(0, q.shape[1]), rows_per_program=OUT_ROWS)
    return lse.view(q.shape[0], q.shape[1], -1)[..., :pos.shape[1]]


OUT_ROWS = 64  # rows per program of the check's dense rows: with V, its fp32 accumulator [rows, D] stays in registers


def row_lse_and_out_of(q, k, v, pos, valid, scale: float, key_pad):
    """(lse fp32 [B, Hq, L], out fp32 [B, Hq, L, D]): ``row_lse`` with ``v`` for every query head,
    ``OUT_ROWS`` rows per program, all in one launch."""
    batch, heads, _, d = q.shape
    rows = pos.shape[1]
    lse, out = row_lse(q, k, pos, valid, scale, key_pad, slice(0, heads), v=v, rows_per_program=OUT_ROWS)
    return lse.view(batch, heads, -1)[..., :rows], out.view(batch, heads, -1, out.shape[-1])[:, :, :rows, :d]


def fuses_block_sums(block_n: int | None) -> bool:
    """Whether ``line_probs`` can write per-block sums of this size itself (it divides the key tile)."""
    return block_n is not None and 0 < block_n <= BLOCK_K and BLOCK_K % block_n == 0


def line_probs(q, k, pos, valid, scale: float, key_pad, heads: slice, width: int, vertical: torch.Tensor,
               blocks: torch.Tensor | None = None, block_n: int | None = None):
    """For query heads ``heads``: (probs fp32 [B, Hs, L, width], zero where masked and from column
    N on; lse fp32 [B, Hs, L]); writes their column sums over the valid rows into ``vertical``
    [B, Hq, N] (fp32, contiguous in N) and, when given (``fuses_block_sums(block_n)``), each row's
    sums per key block into ``blocks`` [B, Hq, L, ceil(N / block_n)] (contiguous in the last dim)."""
    batch, _, n, _ = q.shape
    probs = torch.empty(batch, heads.stop - heads.start, pos.shape[1], width, dtype=torch.float32, device=q.device)
    lse = _pass2(q, k, pos, valid, scale, key_pad, heads, vertical, blocks, block_n, probs=probs, width=width)
    return probs, lse


def line_skew_sums(q, k, pos, valid, scale: float, key_pad, heads: slice, vertical: torch.Tensor,
                   blocks: torch.Tensor | None = None, block_n: int | None = None, step: int = 1):
    """``line_probs`` for rows at regular positions (row l at pos[:, 0] - step l), without the
    probabilities: (by_key fp32 [B, Hs, N], lse fp32 [B, Hs, L]) where by_key[c] is the sum over
    the rows of p[l, c - step l] (``estimate._slash_skewed`` turns it into slash sums)."""
    batch, _, n, _ = q.shape
    if step * (pos.shape[1] - 1) >= BLOCK_K:
        raise ValueError(f"skewed sums take rows spanning under {BLOCK_K} positions, got {pos.shape[1]} rows "
                         f"{step} apart")
    count = heads.stop - heads.start
    by_key = torch.zeros(batch, count, n + 2 * BLOCK_K, dtype=torch.float32, device=q.device)
    lse = _pass2(q, k, pos, valid, scale, key_pad, heads, vertical, blocks, block_n, by_key=by_key, width=n,
                 step=step)
    return by_key[..., :n], lse


def _pass2(q, k, pos, valid, scale, key_pad, heads, vertical, blocks, block_n, *, width, probs=None, by_key=None,
           step=1):
    """Pass 1, then pass 2 writing ``probs`` and/or the skewed sums ``by_key``; returns lse [B, Hs, L]."""
    batch, _, n, _ = q.shape
    rows = pos.shape[1]
    count = heads.stop - heads.start
    group = q.shape[1] // k.shape[1]
    fused = blocks is not None
    if fused and not (fuses_block_sums(block_n) and blocks.stride(-1) == 1):
        raise ValueError(f"block sums of {block_n} keys need a divisor of {BLOCK_K} and contiguous blocks")
    pos32, valid8, pad, common, strides, rows_pad = _launch_args(q, k, pos, valid, key_pad)
    lse = row_lse(q, k, pos, valid, scale, key_pad, heads)
    block_args = (blocks, blocks.shape[-1], blocks.stride(0), blocks.stride(1), blocks.stride(2)) if fused \
        else (vertical, 0, 0, 0, 0)
    _probs_kernel[(triton.cdiv(width, BLOCK_K) * batch * count,)](
        q, k, pos32, valid8, pad, lse, vertical if probs is None else probs, vertical, block_args[0],
        vertical if by_key is None else by_key, n, width, scale, heads.start, count, group, rows, block_args[1],
        0 if by_key is None else by_key.shape[-1], *strides, vertical.stride(0), vertical.stride(1),
        *block_args[2:], BLOCK_N=block_n if fused else 0, WRITE_PROBS=probs is not None, SKEW=by_key is not None,
        STEP=step, **common)
    return lse.view(batch, count, rows_pad)[..., :rows]


def head_chunk(rows: int, width: int) -> int:
    """Query heads per chunk whose probabilities ([rows, width] fp32 each) fit in
    ``MAX_PROBS_BYTES`` (at least one; a chunk may split a KV group: heads read their KV head)."""
    return max(1, MAX_PROBS_BYTES // (rows * width * 4))
