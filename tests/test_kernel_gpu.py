"""The kernel checks repeated on a GPU in bf16/fp16: error against a float32 reference at most
twice SDPA's error in the same precision on the same mask (flash-attention's test rule)."""

import pytest
import torch
import torch.nn.functional as F

from mmcompile.kernels import dense_attention_forward, index_to_mask, sparse_attention_forward
from mmcompile.kernels.index_factories import causal_index, grid_index, random_index
from mmcompile.kernels.reference import masked_attention

pytestmark = pytest.mark.gpu


def err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def check(q, k, v, index, dtype, q_offset=0):
    n_q, n_k = q.shape[2], k.shape[2]
    q, k, v = (t.to(dtype) for t in (q, k, v))
    if index is None:
        out, lse = dense_attention_forward(q, k, v, q_offset=q_offset)
        mask = (torch.arange(n_k, device="cuda")[None, :] <= torch.arange(n_q, device="cuda")[:, None] + q_offset)
        mask = mask[None, None].expand(1, q.shape[1], n_q, n_k)
    else:
        out, lse = sparse_attention_forward(q, k, v, index, q_offset=q_offset, check_values=True)
        mask = index_to_mask(index, n_q, n_k, q_offset)
    ref, ref_lse = masked_attention(q.float(), k.float(), v.float(), mask)
    group = q.shape[1] // k.shape[1]
    sdpa = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                          attn_mask=mask)
    assert not out.isnan().any()
    assert err(out, ref) <= 2 * err(sdpa, ref) + 1e-4, (err(out, ref), err(sdpa, ref))
    torch.testing.assert_close(lse, ref_lse, atol=2e-2, rtol=1e-3)


def rand(heads_q, heads_kv, n, d=128, n_k=None):
    n_k = n if n_k is None else n_k
    return (torch.randn(1, heads_q, n, d, device="cuda"), torch.randn(1, heads_kv, n_k, d, device="cuda"),
            torch.randn(1, heads_kv, n_k, d, device="cuda"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("group", [1, 4, 7])
@pytest.mark.parametrize("n", [232, 1000, 4099])
def test_random_index(dtype, group, n):
    q, k, v = rand(group, 1, n)
    index = random_index(1, group, n, n, 0.2, max_columns=100, unaligned=True, device="cuda")
    check(q, k, v, index, dtype)


@pytest.mark.parametrize("block", [(64, 64), (128, 64), (128, 128)])
def test_full_index_and_dense(block):
    q, k, v = rand(28, 4, 3000)
    check(q, k, v, causal_index(1, 28, 3000, 3000, *block, device="cuda"), torch.bfloat16)
    check(q, k, v, None, torch.bfloat16)


@pytest.mark.parametrize("head_dim", [64, 80, 96, 128])
def test_head_dims_and_permutations(head_dim):
    q, k, v = rand(4, 2, 2000, head_dim)
    order = torch.stack([torch.randperm(2000, device="cuda") for _ in range(4)])[None].int()
    check(q, k, v, random_index(1, 4, 2000, 2000, 0.2, 64, q_order=order, k_order=order, device="cuda"),
          torch.bfloat16)
    check(q, k, v, grid_index(1, 4, 2000, 100, 7, 2, device="cuda"), torch.bfloat16)


def test_offsets():
    q, k, v = rand(4, 1, 500, n_k=1524)
    check(q, k, v, None, torch.bfloat16, q_offset=1024)
    check(q, k, v, causal_index(1, 4, 500, 1524, 64, 64, q_offset=1024, device="cuda"), torch.bfloat16,
          q_offset=1024)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_row_subset_launch(dtype):
    """A q_order listing some rows (a Q-boundary head's video rows in the grid order): those rows
    within 2x SDPA's error on the same mask, the others 0 and -inf."""
    from mmcompile.kernels import SparseIndex

    n, heads = 3000, 7
    q, k, v = (t.to(dtype) for t in rand(heads, 1, n))
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = torch.randperm(n, device="cuda", generator=g)[:1700]
    sub = random_index(1, heads, 1700, n, 0.3, max_columns=64, unaligned=True, device="cuda")
    rest = torch.ones(n, dtype=torch.bool, device="cuda")
    rest[rows] = False  # keys: the rows' own first (each row's diagonal block holds its key), then the rest
    k_order = torch.cat([rows, rest.nonzero()[:, 0]]).int().expand(1, heads, -1).contiguous()
    index = SparseIndex(sub.block_count, sub.block_offset, sub.column_count, sub.column_index, 64, 64,
                        rows.int().expand(1, heads, -1).contiguous(), k_order)
    out, lse = sparse_attention_forward(q, k, v, index, check_values=True)
    mask = index_to_mask(index, n, n)[:, :, rows]
    ref, ref_lse = masked_attention(q[:, :, rows].float(), k.float(), v.float(), mask)
    sdpa = F.scaled_dot_product_attention(q[:, :, rows], k.repeat_interleave(heads, 1), v.repeat_interleave(heads, 1),
                                          attn_mask=mask)
    assert err(out[:, :, rows], ref) <= 2 * err(sdpa, ref) + 1e-4
    torch.testing.assert_close(lse[:, :, rows], ref_lse, atol=2e-2, rtol=1e-3)
    assert out[:, :, rest].eq(0).all() and lse[:, :, rest].eq(float("-inf")).all()


@pytest.mark.parametrize("block_m", [64, 128])
def test_near_keys_continue_an_a_shape_launch(block_m):
    """A grid launch continuing an A-shape launch's softmax (``near_keys``: its own query block and
    the 256 keys before, left to that launch) in bf16: within 2x SDPA's error on the union mask.
    The partial output passes through bf16 once more than a single launch's (an extra rounding)."""
    import dataclasses

    from mmcompile.kernels.index_factories import a_shape_index

    n, heads = 3000, 4
    q, k, v = (t.to(torch.bfloat16) for t in rand(heads, 1, n))
    band = a_shape_index(1, heads, n, 0, 256, block_m, 64, device="cuda")
    out, lse = sparse_attention_forward(q, k, v, band)
    grid = dataclasses.replace(grid_index(1, heads, n, 100, 7, 2, block_m, 64, device="cuda"),
                               near_keys=torch.tensor([256, 256, -1, 256], dtype=torch.int32, device="cuda"),
                               near_rows=torch.ones(1, n, dtype=torch.int32, device="cuda"))
    out, lse = sparse_attention_forward(q, k, v, grid, out=out, lse=lse, check_values=True)
    band_mask, grid_mask = index_to_mask(band, n, n), index_to_mask(grid, n, n)
    union = torch.where(torch.tensor([True, True, False, True], device="cuda")[None, :, None, None],
                        band_mask | grid_mask, grid_mask)
    ref, ref_lse = masked_attention(q.float(), k.float(), v.float(), union)
    sdpa = F.scaled_dot_product_attention(q, k.repeat_interleave(heads, 1), v.repeat_interleave(heads, 1),
                                          attn_mask=union)
    assert err(out, ref) <= 2 * err(sdpa, ref) + 1e-4, (err(out, ref), err(sdpa, ref))
    torch.testing.assert_close(lse, ref_lse, atol=2e-2, rtol=1e-3)
