"""Per-query-block key columns of a SparseIndex, compacted by one Triton kernel.

Every query block keeps the columns of its head's sorted column set that its rows may see (their
modality lists the column; causal or outside the diagonal block) and that no listed key block or
span already covers. The PyTorch way (``index_columns.per_block_reference``) materialises int64
[B, H, M, K] candidates several times over (about 10 GB of traffic at 128K with 8192 columns: half
of index building, BENCHMARKS.md); here one program per (query block, head) streams the sorted set,
tests block membership by binary search in the sorted block list and writes the kept columns in
order into rows already -1 (``build_index`` fills them once). It stops at the first future column
(causal) or at the set's tail, so a head with few columns does not stream the widest head's
padding. Output equals the reference exactly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SEARCH_STEPS = 16  # binary-search steps: enough for 65535 listed blocks (4M keys at block 64)
CHUNK = 256


@triton.jit
def _compact_columns_kernel(Values, Bits, Present, Blocks, BlockCount, Span, Out, OutCount,
                            n_k, heads, width, first_block, stride_vb, stride_vh, stride_pb,
                            stride_bb, stride_bh, stride_bm, stride_cb, stride_ch,
                            stride_ob, stride_oh, stride_om,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
                            SEARCH_STEPS: tl.constexpr, CAUSAL: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)  # output offsets pass 2**31 at 1M tokens with 28 heads
    bh = tl.program_id(1).to(tl.int64)
    b = bh // heads
    h = bh % heads
    lo = (m + first_block) * BLOCK_M  # the launch covers query blocks first_block on
    present = tl.load(Present + b * stride_pb + m)
    listed = tl.load(BlockCount + b * stride_cb + h * stride_ch + m)
    span_lo = tl.load(Span + (b * stride_cb + h * stride_ch + m) * 2)  # [B, H, M, 2] beside [B, H, M]
    span_hi = tl.load(Span + (b * stride_cb + h * stride_ch + m) * 2 + 1)
    blocks = Blocks + b * stride_bb + h * stride_bh + m * stride_bm
    values = Values + b * stride_vb + h * stride_vh
    bits_row = Bits + b * stride_vb + h * stride_vh
    out = Out + b * stride_ob + h * stride_oh + m * stride_om
    count = tl.zeros([], dtype=tl.int32)
    start = 0
    done = False
    while (start < width) & (not done):
        offs = start + tl.arange(0, CHUNK)
        inside = offs < width
        c = tl.load(values + offs, mask=inside, other=-1)
        bits = tl.load(bits_row + offs, mask=inside, other=0)
        keep = (c >= 0) & (c < n_k) & ((bits & present) != 0)
        # A chunk without any column is the set's tail: gaps inside a set are repeats of one value
        # (at most one per other column entry), never a whole chunk; short sets stop there.
        done = tl.max(c, 0) < 0
        if CAUSAL:
            keep &= c < lo
            done |= tl.max(c, 0) >= lo  # sorted (gaps are -1): every later column is in the future
        else:
            keep &= (c < lo) | (c >= lo + BLOCK_M)
        keep &= (c < span_lo) | (c >= span_hi)
        cb = c // BLOCK_N
        left = tl.zeros([CHUNK], dtype=tl.int32)
        right = left + listed
        for _ in tl.static_range(SEARCH_STEPS):  # lower bound of cb among the listed blocks
            mid = (left + right) // 2
            go = left < right
            val = tl.load(blocks + mid, mask=go, other=0)
            left = tl.where(go & (val < cb), mid + 1, left)
            right = tl.where(go & (val >= cb), mid, right)
        covered = tl.load(blocks + left, mask=left < listed, other=-1) == cb
        kept = (keep & ~covered).to(tl.int32)
        tl.store(out + count + tl.cumsum(kept, 0) - 1, c, mask=kept != 0)
        count += tl.sum(kept, 0)
        start += CHUNK
    tl.store(OutCount + b * stride_cb + h * stride_ch + m, count)  # same layout as BlockCount


def compact_columns(values: torch.Tensor, bits: torch.Tensor, present: torch.Tensor, block_ids: torch.Tensor,
                    block_count: torch.Tensor, span: torch.Tensor, first_block: int, n_k: int, block_m: int,
                    block_n: int, causal: bool, out: torch.Tensor | None = None, count: torch.Tensor | None = None):
    """values/bits int [B, H, K]: each head's sorted column set (-1 = gap) and the modality bits of
    each column; present int [B, M]: modality bits of each query block's rows; block_ids/block_count
    [B, H, M, KB]/[B, H, M]: sorted listed key blocks; span [B, H, M, 2]: the key slots [lo, hi) of
    each block's span. The M query blocks are ``first_block`` on. Returns
    (columns int32 [B, H, M, K] padded -1, count int32 [B, H, M]), as
    ``index_columns.per_block_reference``; ``out`` given (a view of the index being filled, rows
    contiguous, already -1: only the kept columns are written, at the front of each row) and
    ``count`` (contiguous), written there."""
    batch, heads, width = values.shape
    num_m = present.shape[1]
    values = values.to(torch.int32).contiguous()
    bits = bits.to(torch.int32).contiguous()
    present = present.to(torch.int32).contiguous()
    block_ids = block_ids.to(torch.int32).contiguous()
    block_count = block_count.to(torch.int32).contiguous()
    span = span.to(torch.int32).contiguous()
    if out is None:
        out = torch.full((batch, heads, num_m, width), -1, dtype=torch.int32, device=values.device)
        count = torch.empty(batch, heads, num_m, dtype=torch.int32, device=values.device)
    assert out.stride(-1) == 1 and count.is_contiguous(), "out: rows contiguous; count contiguous"
    _compact_columns_kernel[(num_m, batch * heads)](
        values, bits, present, block_ids, block_count, span, out, count,
        n_k, heads, width, first_block, values.stride(0), values.stride(1), present.stride(0),
        block_ids.stride(0), block_ids.stride(1), block_ids.stride(2), block_count.stride(0), block_count.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        BLOCK_M=block_m, BLOCK_N=block_n, CHUNK=CHUNK, SEARCH_STEPS=SEARCH_STEPS, CAUSAL=causal, num_warps=4)
    return out, count
