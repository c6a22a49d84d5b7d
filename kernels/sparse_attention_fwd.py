"""Causal attention forward over a SparseIndex (see ``sparse_index.py`` for the contract).

Algorithm: FlashAttention-2 style forward; one program per (query block, batch * query head) keeps
one online-softmax state (m, l, acc) per row across three pieces: the diagonal block, the listed key
blocks (contiguous key slots, start not aligned) and the listed key columns (gathered 'sparse load,
dense compute', as PIT / MInference's ``pit_sparse_flash_attention_v2``). Orders are applied as
gathered addressing (never copies); causality is tested on original positions, so permuted tiles
stay exact; the output and log-sum-exp are stored back in original token order.

The dense fast path (``IS_DENSE``) visits every causal key block: tiles wholly before the diagonal
without any mask, then the diagonal with the causal mask, like Triton's tutorial
``06-fused-attention.py``.

Caveats:
* bf16 ``tl.dot`` is wrong in the Triton interpreter (triton-lang/triton#11584): when interpreting,
  operands are upcast to fp32 (``DOT_FP32``).
* fp32 inputs on a GPU use TF32 dots (Triton's default): expect ~1e-3 relative error there.
* K/V loads carry no predicate: out-of-set lanes read a clamped in-range row and get probability 0.
  Inputs must be finite (a NaN/inf in any K/V row may then reach rows that did not select it).
* Sequence lengths are runtime ints, never constexpr, so a new length does not recompile.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .placement import interpreting, triton_runs_on
from .sparse_index import SparseIndex, check_index, check_inputs

LOG2E = 1.4426950408889634
FAR_SLOT = tl.constexpr(1 << 30)  # past every key slot, and far from int32 overflow when a block is added


@triton.jit
def _scores(q, k, qk_scale, DOT_FP32: tl.constexpr):
    """q k^T of a tile, scaled to log2 units (fp32 operands in the interpreter for bf16)."""
    if DOT_FP32:
        qk = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)))
    else:
        qk = tl.dot(q, tl.trans(k))
    return qk * qk_scale


@triton.jit
def _update(acc, m_i, l_i, q, k, v, mask, qk_scale,
            MASKED: tl.constexpr, DOT_FP32: tl.constexpr):
    """One online-softmax step over a [BLOCK_M, BLOCK_N] tile; NaN-free when a row is all masked.
    ``MASKED`` (compile time) applies ``mask``."""
    qk = _scores(q, k, qk_scale, DOT_FP32)
    if MASKED:
        qk = tl.where(mask, qk, float("-inf"))
    return _softmax_step(acc, m_i, l_i, qk, v, DOT_FP32)


@triton.jit
def _softmax_step(acc, m_i, l_i, qk, v, DOT_FP32: tl.constexpr):
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(qk - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if DOT_FP32:
        acc = tl.dot(p, v.to(tl.float32), acc)
    else:
        acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_new, l_i


@triton.jit
def _attend_listed(acc, m_i, l_i, q, q_abs, k, v, k_abs, valid, needs_mask, qk_scale,
                   DOT_FP32: tl.constexpr):
    """A tile of listed keys: the causal/validity mask is applied only when ``needs_mask`` (a
    runtime scalar) says some pair of the tile is invalid or in the future; most are not."""
    qk = _scores(q, k, qk_scale, DOT_FP32)
    if needs_mask:
        qk = tl.where(valid[None, :] & (k_abs[None, :] <= q_abs[:, None]), qk, float("-inf"))
    return _softmax_step(acc, m_i, l_i, qk, v, DOT_FP32)


@triton.jit
def _contiguous_tile(acc, m_i, l_i, q, q_abs, q_min, start, hi, diag_lo, diag_hi, n_k, k_offset,
                     k_base, v_base, k_order_row, stride_kn, stride_vn, offs_n, offs_d, qk_scale,
                     HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, HAS_K_ORDER: tl.constexpr,
                     DOT_FP32: tl.constexpr):
    """Key slots [start, start + BLOCK_N) below ``hi``, outside the diagonal block: a listed
    block (``hi`` = n_k) or a tile of a span stretch."""
    slots = start + offs_n
    end = tl.minimum(hi, n_k)
    valid = (slots >= 0) & (slots < end) & ((slots < diag_lo) | (slots >= diag_hi))
    all_valid = (start >= 0) & (start + BLOCK_N <= end) & ((start + BLOCK_N <= diag_lo) | (start >= diag_hi))
    k_pos = _key_positions(k_order_row, slots, n_k, HAS_K_ORDER)
    if HAS_K_ORDER:
        k_last = tl.max(tl.where(valid, k_pos, 0), 0)
    else:
        k_last = start + BLOCK_N - 1
    k = _load_rows(k_base, k_pos, stride_kn, offs_d, valid, HEAD_DIM, False)
    v = _load_rows(v_base, k_pos, stride_vn, offs_d, valid, HEAD_DIM, False)
    needs_mask = (not all_valid) | (k_last + k_offset > q_min)
    return _attend_listed(acc, m_i, l_i, q, q_abs, k, v, k_pos + k_offset, valid, needs_mask, qk_scale, DOT_FP32)


@triton.jit
def _outside_listed(slots, in_row, valid, p, start, block_row, num_blocks, BLOCK_N: tl.constexpr,
                    FAR: tl.constexpr):
    """Shared column rows: ``valid`` without the lanes inside a listed block. Both lists ascend,
    so one walk serves the whole row: ``p``/``start`` (index and offset of the first block that may
    still cover a column) only move forward; each tile tests the few blocks its columns
    (``in_row``: the lanes holding row entries) span."""
    first = tl.min(tl.where(in_row, slots, FAR), 0)
    last = tl.max(tl.where(in_row, slots, -1), 0)
    while start + BLOCK_N <= first:  # blocks wholly before this tile cover no later column
        p += 1
        start = tl.load(block_row + p, mask=p < num_blocks, other=FAR)
    j = p
    other = start
    while other <= last:
        valid = valid & ((slots < other) | (slots >= other + BLOCK_N))
        j += 1
        other = tl.load(block_row + j, mask=j < num_blocks, other=FAR)
    return valid, p, start


@triton.jit
def _column_tile(acc, m_i, l_i, q, q_abs, q_min, slots, valid, n_k, k_offset, k_base, v_base, k_order_row,
                 stride_kn, stride_vn, offs_d, qk_scale,
                 HEAD_DIM: tl.constexpr, HAS_K_ORDER: tl.constexpr, DOT_FP32: tl.constexpr):
    """A tile of single key columns (gathered rows), masked by ``valid`` and causally; the mask is
    applied only when a lane is invalid or a column follows the block's earliest row (most tiles
    of a per-block list are whole and in the past)."""
    k_pos = _key_positions(k_order_row, slots, n_k, HAS_K_ORDER)
    k = _load_rows(k_base, k_pos, stride_kn, offs_d, valid, HEAD_DIM, False)
    v = _load_rows(v_base, k_pos, stride_vn, offs_d, valid, HEAD_DIM, False)
    k_abs = k_pos + k_offset
    needs_mask = (tl.min(valid.to(tl.int32), 0) == 0) | (tl.max(tl.where(valid, k_abs, -1), 0) > q_min)
    return _attend_listed(acc, m_i, l_i, q, q_abs, k, v, k_abs, valid, needs_mask, qk_scale, DOT_FP32)


@triton.jit
def _key_positions(k_order_row, slots, n_k, HAS_K_ORDER: tl.constexpr):
    """Original positions of key slots, clamped into [0, n_k) so that every K/V load is in bounds
    and needs no predicate; lanes outside the visited set are masked in the scores instead."""
    safe = tl.minimum(tl.maximum(slots, 0), n_k - 1)
    if HAS_K_ORDER:
        return tl.load(k_order_row + safe)
    else:
        return safe


@triton.jit
def _load_rows(base, positions, stride_n, offs_d, valid, HEAD_DIM: tl.constexpr, MASK_ROWS: tl.constexpr):
    ptrs = base + positions[:, None] * stride_n + offs_d[None, :]
    if MASK_ROWS:
        return tl.load(ptrs, mask=valid[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    elif HEAD_DIM == offs_d.shape[0]:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)


@triton.jit
def _sparse_attention_fwd(
    Q, K, V, Out, Lse,
    BlockCount, BlockOffset, ColumnCount, ColumnIndex, QOrder, KOrder, HeadIds, Span, ColumnRow, NearKeys, NearRows,
    qk_scale, n_q, n_k, q_offset, k_offset, heads_run, group,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_lb, stride_lh,
    stride_cb, stride_ch,
    stride_bob, stride_boh, stride_bom,
    stride_cib, stride_cih, stride_cim,
    stride_qob, stride_qoh,
    stride_kob, stride_koh,
    stride_sb, stride_sh, stride_sm,
    stride_crb, stride_crh,
    stride_nrb,
    column_width,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_DENSE: tl.constexpr, HAS_Q_ORDER: tl.constexpr, HAS_K_ORDER: tl.constexpr,
    HAS_HEAD_IDS: tl.constexpr, DOT_FP32: tl.constexpr, HAS_SPAN: tl.constexpr,
    SHARED_COLUMNS: tl.constexpr, HAS_NEAR: tl.constexpr,
):
    # Longest (last) query blocks first: with causal work that shrinks the tail of the launch.
    start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # head * head stride passes 2**31 at 1M tokens, 28 heads
    b = bh // heads_run
    h = bh % heads_run  # head of the index (and of its orders)
    if HAS_HEAD_IDS:  # the launch covers a subset of the query heads
        h_q = tl.load(HeadIds + h).to(tl.int64)
    else:
        h_q = h
    h_kv = h_q // group
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)

    # Query rows of this block, in original positions.
    q_slots = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q_valid = q_slots < n_q
    if HAS_Q_ORDER:
        q_pos = tl.load(QOrder + b * stride_qob + h * stride_qoh + q_slots, mask=q_valid, other=0)
    else:
        q_pos = q_slots
    q = _load_rows(Q + b * stride_qb + h_q * stride_qh, q_pos, stride_qn, offs_d, q_valid, HEAD_DIM, True)
    q_abs = q_pos + q_offset
    if HAS_NEAR:  # rows that leave the keys an earlier launch visited (``near_keys``) and continue its softmax
        near = tl.load(NearKeys + h)
        near_on = (near >= 0) & (tl.load(NearRows + b * stride_nrb + q_pos, mask=q_valid, other=0) != 0)
        # Every mask below compares a key with q_abs: the last key this launch may visit per row.
        q_abs = tl.where(near_on, (q_abs // BLOCK_M) * BLOCK_M - near - 1, q_abs)

    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh
    k_order_row = KOrder + b * stride_kob + h * stride_koh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if HAS_NEAR:  # the earlier launch's rows as the softmax state: m = its lse (log2 units), l = 1
        prior_ok = q_valid & near_on
        prior_lse = tl.load(Lse + b * stride_lb + h_q * stride_lh + q_pos, mask=prior_ok, other=float("-inf"))
        seen = prior_lse > float("-inf")
        m_i = tl.where(seen, prior_lse * 1.4426950408889634, m_i)
        l_i = tl.where(seen, 1.0, l_i)
        prior = tl.load(Out + b * stride_ob + h_q * stride_oh + q_pos[:, None] * stride_on + offs_d[None, :],
                        mask=prior_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
        acc = tl.where(seen[:, None], prior.to(tl.float32), acc)

    # The diagonal block, in key slots, clipped to [0, n_k).
    shift = q_offset - k_offset
    diag_lo = tl.minimum(tl.maximum(start_m * BLOCK_M + shift, 0), n_k)
    diag_hi = tl.minimum(tl.maximum((start_m + 1) * BLOCK_M + shift, 0), n_k)

    if IS_DENSE:
        # Every key slot before the diagonal is visible to every row: no mask at all.
        lo_aligned = (diag_lo // BLOCK_N) * BLOCK_N
        for start in range(0, lo_aligned, BLOCK_N):
            slots = start + offs_n
            k = _load_rows(k_base, slots, stride_kn, offs_d, slots < n_k, HEAD_DIM, False)
            v = _load_rows(v_base, slots, stride_vn, offs_d, slots < n_k, HEAD_DIM, False)
            acc, m_i, l_i = _update(acc, m_i, l_i, q, k, v, q_valid[:, None], qk_scale, False, DOT_FP32)
        diag_lo = lo_aligned

    for start in range(diag_lo, diag_hi, BLOCK_N):
        slots = start + offs_n
        valid = slots < diag_hi
        k_pos = _key_positions(k_order_row, slots, n_k, HAS_K_ORDER)
        k = _load_rows(k_base, k_pos, stride_kn, offs_d, valid, HEAD_DIM, False)
        v = _load_rows(v_base, k_pos, stride_vn, offs_d, valid, HEAD_DIM, False)
        mask = valid[None, :] & ((k_pos + k_offset)[None, :] <= q_abs[:, None])
        acc, m_i, l_i = _update(acc, m_i, l_i, q, k, v, mask, qk_scale, True, DOT_FP32)

    if not IS_DENSE:
        # Earliest query position of the block: a tile whose keys all precede it needs no mask.
        q_min = tl.min(tl.where(q_valid, q_abs, 2147483647), 0)
        count_off = b * stride_cb + h * stride_ch + start_m
        # Key blocks from the list (diagonal slots excluded: visited above).
        block_row = BlockOffset + b * stride_bob + h * stride_boh + start_m * stride_bom
        num_blocks = tl.load(BlockCount + count_off)
        for i in range(0, num_blocks):
            acc, m_i, l_i = _contiguous_tile(acc, m_i, l_i, q, q_abs, q_min, tl.load(block_row + i), n_k,
                                             diag_lo, diag_hi, n_k, k_offset, k_base, v_base, k_order_row,
                                             stride_kn, stride_vn, offs_n, offs_d, qk_scale,
                                             HEAD_DIM, BLOCK_N, HAS_K_ORDER, DOT_FP32)

        span_lo = 0
        span_hi = 0
        if HAS_SPAN:  # a stretch of key slots: before the diagonal block, then after it
            span_row = Span + b * stride_sb + h * stride_sh + start_m * stride_sm
            span_lo = tl.maximum(tl.load(span_row), 0)
            span_hi = tl.minimum(tl.load(span_row + 1), n_k)
            for start in range(span_lo, tl.minimum(span_hi, diag_lo), BLOCK_N):
                acc, m_i, l_i = _contiguous_tile(acc, m_i, l_i, q, q_abs, q_min, start, span_hi,
                                                 diag_lo, diag_hi, n_k, k_offset, k_base, v_base, k_order_row,
                                                 stride_kn, stride_vn, offs_n, offs_d, qk_scale,
                                                 HEAD_DIM, BLOCK_N, HAS_K_ORDER, DOT_FP32)
            for start in range(tl.maximum(span_lo, diag_hi), span_hi, BLOCK_N):
                acc, m_i, l_i = _contiguous_tile(acc, m_i, l_i, q, q_abs, q_min, start, span_hi,
                                                 diag_lo, diag_hi, n_k, k_offset, k_base, v_base, k_order_row,
                                                 stride_kn, stride_vn, offs_n, offs_d, qk_scale,
                                                 HEAD_DIM, BLOCK_N, HAS_K_ORDER, DOT_FP32)

        # Single key columns, gathered BLOCK_N at a time: the block's own list (its count), or
        # its shared row up to the end (up to the diagonal without orders: later keys are future).
        if SHARED_COLUMNS:
            row = tl.load(ColumnRow + b * stride_crb + h * stride_crh + start_m)
            column_row = ColumnIndex + b * stride_cib + h * stride_cih + row.to(tl.int64) * stride_cim
            if HAS_Q_ORDER or HAS_K_ORDER:
                limit = n_k
            else:
                limit = diag_lo
            p = 0
            next_block = tl.load(block_row, mask=num_blocks > 0, other=FAR_SLOT)
            c = 0
            next_column = tl.load(column_row, mask=column_width > 0, other=FAR_SLOT)
            while next_column < limit:
                slots = tl.load(column_row + c + offs_n, mask=c + offs_n < column_width, other=FAR_SLOT)
                in_row = (slots >= 0) & (slots < n_k)
                valid = in_row & ((slots < diag_lo) | (slots >= diag_hi))
                if HAS_SPAN:
                    valid &= (slots < span_lo) | (slots >= span_hi)
                valid, p, next_block = _outside_listed(slots, in_row, valid, p, next_block, block_row, num_blocks,
                                                       BLOCK_N, FAR_SLOT)
                acc, m_i, l_i = _column_tile(acc, m_i, l_i, q, q_abs, q_min, slots, valid, n_k, k_offset, k_base,
                                             v_base, k_order_row, stride_kn, stride_vn, offs_d, qk_scale,
                                             HEAD_DIM, HAS_K_ORDER, DOT_FP32)
                c += BLOCK_N
                next_column = tl.load(column_row + c, mask=c < column_width, other=FAR_SLOT)
        else:
            column_row = ColumnIndex + b * stride_cib + h * stride_cih + start_m * stride_cim
            num_columns = tl.load(ColumnCount + count_off)
            for c in range(0, num_columns, BLOCK_N):
                listed = c + offs_n < num_columns
                slots = tl.load(column_row + c + offs_n, mask=listed, other=-1)
                valid = listed & (slots >= 0) & (slots < n_k) & ((slots < diag_lo) | (slots >= diag_hi))
                acc, m_i, l_i = _column_tile(acc, m_i, l_i, q, q_abs, q_min, slots, valid, n_k, k_offset, k_base,
                                             v_base, k_order_row, stride_kn, stride_vn, offs_d, qk_scale,
                                             HEAD_DIM, HAS_K_ORDER, DOT_FP32)

    # Rows that saw nothing keep acc = 0, l = 0: write 0 and lse = -inf instead of NaN.
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    o_ptrs = Out + b * stride_ob + h_q * stride_oh + q_pos[:, None] * stride_on + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=q_valid[:, None] & (offs_d[None, :] < HEAD_DIM))
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.math.log2(l_safe)) / 1.4426950408889634)
    tl.store(Lse + b * stride_lb + h_q * stride_lh + q_pos, lse, mask=q_valid)


def _launch_config(head_dim: int, block_m: int, block_n: int, dtype: torch.dtype) -> dict:
    """num_warps / num_stages per shape. One config (no autotune): it runs in the interpreter and
    under Inductor/AOTInductor unchanged. Values measured on the H100 (see BENCHMARKS.md)."""
    if interpreting():
        return dict(num_warps=4, num_stages=1)
    warps = 8 if block_m >= 128 and head_dim > 64 else 4
    stages = 3 if head_dim <= 128 else 2
    return dict(num_warps=warps, num_stages=stages)


# Dense-path tiles: 128 x 128 measured fastest on the H100 (515 vs 482 TFLOP/s for 128 x 64 at 128K).
DENSE_BLOCK_M, DENSE_BLOCK_N = 128, 128


def _prepare(q, k, v, scale, out=None, lse=None, rows_listed=True):
    """Checked inputs, the scale, and the outputs: ``out``/``lse`` as given, else new ones (0 and
    -inf on rows the launch does not list, ``rows_listed=False``). A launch into given outputs
    allocates and clears nothing: a layer's launches share one pair."""
    check_inputs(q, k, v)
    if not triton_runs_on(q):
        raise RuntimeError("the Triton attention kernel needs a CUDA device, or TRITON_INTERPRET=1 set "
                           "before mmcompile is imported to run it on the CPU")
    # The kernel addresses the last dim with unit stride.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    head_dim = q.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if not rows_listed:
            out.zero_()
    if lse is None:
        lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
        if not rows_listed:
            lse.fill_(float("-inf"))
    return q, k, v, scale, out, lse


def _run(q, k, v, out, lse, scale, q_offset, k_offset, lists, orders, block_m, block_n, is_dense,
         config=None, head_ids=None, query_slots=None, near=None):
    batch, heads_q, n_q, head_dim = q.shape
    n_q = n_q if query_slots is None else query_slots  # the kernel's rows are slots
    heads_run = heads_q if head_ids is None else head_ids.shape[0]
    block_count, block_offset, column_count, column_index, span, column_row = lists
    q_order, k_order = orders
    dummy = block_count  # stands in for an absent order, span or row map; never read (constexpr-guarded)
    qo = q_order if q_order is not None else dummy
    ko = k_order if k_order is not None else dummy
    sp = span if span is not None else dummy[..., None]
    cr = column_row if column_row is not None else dummy
    near_keys, near_rows = near if near is not None else (dummy, dummy)
    grid = (triton.cdiv(n_q, block_m), batch * heads_run)
    cfg = config or _launch_config(head_dim, block_m, block_n, q.dtype)
    _sparse_attention_fwd[grid](
        q, k, v, out, lse,
        block_count, block_offset, column_count, column_index, qo, ko,
        head_ids if head_ids is not None else dummy, sp, cr, near_keys, near_rows,
        scale * LOG2E, n_q, k.shape[2], q_offset, k_offset, heads_run, heads_q // k.shape[1],
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1),
        block_count.stride(0), block_count.stride(1),
        block_offset.stride(0), block_offset.stride(1), block_offset.stride(2),
        column_index.stride(0), column_index.stride(1), column_index.stride(2),
        qo.stride(0), qo.stride(1),
        ko.stride(0), ko.stride(1),
        sp.stride(0), sp.stride(1), sp.stride(2),
        cr.stride(0), cr.stride(1),
        near_rows.stride(0),
        column_index.shape[-1],
        HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_M=block_m, BLOCK_N=block_n,
        IS_DENSE=is_dense, HAS_Q_ORDER=q_order is not None, HAS_K_ORDER=k_order is not None,
        HAS_HEAD_IDS=head_ids is not None, DOT_FP32=interpreting() and q.dtype != torch.float32,
        HAS_SPAN=span is not None, SHARED_COLUMNS=column_row is not None, HAS_NEAR=near is not None,
        **cfg,
    )
    return out, lse


def sparse_attention_forward(q, k, v, index: SparseIndex, scale=None, q_offset: int = 0,
                             k_offset: int = 0, check_values: bool = False, config=None,
                             head_ids=None, out=None, lse=None):
    """Causal attention of q [B, Hq, Nq, D] over k, v [B, Hkv, Nk, D] restricted to ``index``.

    Returns (out [B, Hq, Nq, D] in q's dtype, lse [B, Hq, Nq] float32, natural log).
    ``check_values`` validates the index contents (a host sync); shapes are always checked.
    ``head_ids`` (int32 [Hs]) runs only those query heads, with an index of Hs heads, writing into
    ``out``/``lse`` (given, or new): one launch per pattern group of a layer. An index whose
    ``q_order`` lists a subset of rows writes only those (new outputs: 0 and -inf elsewhere).
    An index with ``near_keys`` continues, on its ``near_rows`` of heads with ``near_keys >= 0``,
    the softmax an earlier launch wrote into ``out``/``lse`` (which must then be given).
    """
    if index.near_keys is not None and (out is None or lse is None):
        raise ValueError("an index with near_keys continues an earlier launch: pass its out and lse")
    q, k, v, scale, out, lse = _prepare(q, k, v, scale, out, lse, index.query_slots(q.shape[2]) == q.shape[2])
    if head_ids is not None:
        if head_ids.dtype != torch.int32 or head_ids.dim() != 1:
            raise ValueError("head_ids must be a 1-D int32 tensor of query heads")
        sub = q[:, :head_ids.shape[0]]  # shape stand-in: the index covers len(head_ids) heads
        check_index(index, sub, k, check_values=check_values)
    else:
        check_index(index, q, k, check_values=check_values)
    lists = (index.block_count, index.block_offset, index.column_count, index.column_index, index.span,
             index.column_row)
    lists = tuple(None if t is None else t.contiguous() for t in lists)
    orders = tuple(o.contiguous() if o is not None else None for o in (index.q_order, index.k_order))
    near = None if index.near_keys is None else (index.near_keys.contiguous(), index.near_rows.contiguous())
    return _run(q, k, v, out, lse, scale, q_offset, k_offset, lists, orders,
                index.block_m, index.block_n, False, config, head_ids, index.query_slots(q.shape[2]), near)


def dense_attention_forward(q, k, v, scale=None, q_offset: int = 0, k_offset: int = 0,
                            block_m: int = DENSE_BLOCK_M, block_n: int = DENSE_BLOCK_N, config=None,
                            head_ids=None, out=None, lse=None):
    """Dense causal attention (every causal key block) through the same kernel: the fast path.
    ``head_ids``/``out``/``lse`` as in ``sparse_attention_forward``."""
    q, k, v, scale, out, lse = _prepare(q, k, v, scale, out, lse)
    no_lists = torch.zeros(1, 1, 1, 1, dtype=torch.int32, device=q.device)
    lists = (no_lists[..., 0], no_lists, no_lists[..., 0], no_lists, None, None)
    return _run(q, k, v, out, lse, scale, q_offset, k_offset, lists, (None, None),
                block_m, block_n, True, config, head_ids)
