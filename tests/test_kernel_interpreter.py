"""The sparse-attention kernel against its PyTorch reference, in the Triton interpreter (CPU)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mmcompile.kernels import (SparseIndex, dense_attention_forward, dense_attention_reference,
                               sparse_attention_forward, sparse_attention_reference)
from mmcompile.kernels.index_factories import a_shape_index, causal_index, grid_index, random_index, random_span_index
from mmcompile.kernels.reference import groups_to_mask, index_to_mask, masked_attention

pytestmark = pytest.mark.interpreter

TOL = {torch.float32: 2e-5, torch.float16: 2e-3}


def inputs(heads_q, heads_kv, n, head_dim=64, dtype=torch.float32, seed=0, n_k=None):
    g = torch.Generator().manual_seed(seed)
    n_k = n if n_k is None else n_k
    return (torch.randn(1, heads_q, n, head_dim, generator=g).to(dtype),
            torch.randn(1, heads_kv, n_k, head_dim, generator=g).to(dtype),
            torch.randn(1, heads_kv, n_k, head_dim, generator=g).to(dtype))


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def assert_matches_reference(q, k, v, index, q_offset=0, k_offset=0):
    out, lse = sparse_attention_forward(q, k, v, index, q_offset=q_offset, k_offset=k_offset,
                                        check_values=True)
    ref, ref_lse = sparse_attention_reference(q, k, v, index, q_offset=q_offset, k_offset=k_offset)
    assert not out.isnan().any() and not lse.isnan().any()
    assert rel_err(out, ref) < TOL[q.dtype]
    torch.testing.assert_close(lse, ref_lse, atol=1e-3, rtol=1e-4)


def random_order(heads, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g) for _ in range(heads)])[None].to(torch.int32)


@pytest.mark.parametrize("group", [1, 4, 7])
@pytest.mark.parametrize("n", [232, 1000])
def test_random_index_with_columns_matches_reference(group, n):
    q, k, v = inputs(group, 1, n, seed=n + group)
    g = torch.Generator().manual_seed(group)
    index = random_index(1, group, n, n, 0.25, max_columns=40, unaligned=True, generator=g)
    assert int(index.column_count.sum()) > 0 and int(index.block_count.sum()) > 0
    assert_matches_reference(q, k, v, index)


@pytest.mark.parametrize("orders", ["none", "keys"])
def test_long_column_lists_in_whole_and_partial_tiles(orders):
    """Blocks listing several tiles of columns: a whole tile of past columns runs without the mask,
    a partial last tile, and (with a key order) columns after some rows of the block, with it."""
    n, heads = 1000, 2
    q, k, v = inputs(heads, 1, n, seed=11)
    k_order = random_order(heads, n, 12) if orders == "keys" else None
    index = random_index(1, heads, n, n, 0.05, max_columns=200, unaligned=True, k_order=k_order,
                         generator=torch.Generator().manual_seed(11))
    assert int(index.column_count.max()) >= 128
    assert_matches_reference(q, k, v, index)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_random_permutations_of_queries_and_keys(dtype):
    n, heads = 300, 2
    q, k, v = inputs(heads, 1, n, dtype=dtype, seed=3)
    g = torch.Generator().manual_seed(5)
    for q_order, k_order in [(random_order(heads, n, 1), None), (None, random_order(heads, n, 2)),
                             (random_order(heads, n, 3), random_order(heads, n, 4))]:
        index = random_index(1, heads, n, n, 0.4, max_columns=16, unaligned=True, q_order=q_order,
                             k_order=k_order, generator=g)
        assert_matches_reference(q, k, v, index)


def test_grid_permutation_matches_reference():
    n = 600
    q, k, v = inputs(2, 1, n, seed=7)
    index = grid_index(1, 2, n, stride=36, phase=5, local_blocks=1)
    assert_matches_reference(q, k, v, index)


def test_only_the_diagonal_and_empty_column_lists():
    n = 232
    q, k, v = inputs(2, 2, n, seed=9)
    m = -(-n // 64)
    zeros = torch.zeros(1, 2, m, dtype=torch.int32)
    index = SparseIndex(zeros, torch.zeros(1, 2, m, 4, dtype=torch.int32), zeros,
                        torch.zeros(1, 2, m, 4, dtype=torch.int32), 64, 64)
    out, _ = sparse_attention_forward(q, k, v, index)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for b in range(m):  # brute force: each row sees the causal part of its own 64-block
        mask[b * 64:(b + 1) * 64, b * 64:(b + 1) * 64] = True
    mask &= torch.ones(n, n, dtype=torch.bool).tril()
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
    assert rel_err(out, ref) < 2e-5


@pytest.mark.parametrize("n", [232, 1000])
def test_full_density_index_equals_dense_sdpa(n):
    q, k, v = inputs(4, 1, n, seed=11)
    sdpa = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True, enable_gqa=True)
    out, _ = sparse_attention_forward(q, k, v, causal_index(1, 4, n, n, 64, 64), check_values=True)
    assert rel_err(out, sdpa) < 2e-5
    dense, _ = dense_attention_forward(q, k, v)
    assert rel_err(dense, sdpa) < 2e-5


@pytest.mark.parametrize("head_dim", [64, 80, 96, 128])
def test_head_dims(head_dim):
    q, k, v = inputs(2, 1, 200, head_dim=head_dim, seed=head_dim)
    index = random_index(1, 2, 200, 200, 0.5, max_columns=8, unaligned=True,
                         generator=torch.Generator().manual_seed(head_dim))
    assert_matches_reference(q, k, v, index)
    out, lse = dense_attention_forward(q, k, v)
    ref, ref_lse = dense_attention_reference(q, k, v)
    assert rel_err(out, ref) < 2e-5


def test_block_m_128_index():
    q, k, v = inputs(2, 1, 400, seed=13)
    index = random_index(1, 2, 400, 400, 0.3, max_columns=20, block_m=128, block_n=64, unaligned=True,
                         generator=torch.Generator().manual_seed(1))
    assert_matches_reference(q, k, v, index)


def test_query_offset_for_chunked_prefill():
    """The last 200 queries of a 456-token prefix: q_offset puts them at positions 256..455."""
    q, k, v = inputs(2, 1, 200, seed=17, n_k=456)
    out, lse = dense_attention_forward(q, k, v, q_offset=256)
    ref, ref_lse = dense_attention_reference(q, k, v, q_offset=256)
    assert rel_err(out, ref) < 2e-5
    index = causal_index(1, 2, 200, 456, 64, 64, q_offset=256)
    assert_matches_reference(q, k, v, index, q_offset=256)
    full_q, full_k, full_v = inputs(2, 1, 456, seed=18)
    whole, _ = dense_attention_forward(full_q, full_k, full_v)
    tail, _ = dense_attention_forward(full_q[:, :, 256:], full_k, full_v, q_offset=256)
    assert rel_err(tail, whole[:, :, 256:]) < 2e-5


def test_rows_with_nothing_visible_give_zero_not_nan():
    q, k, v = inputs(2, 1, 100, seed=19)
    # Queries at positions -60..39: the first 60 rows see no key at all.
    out, lse = dense_attention_forward(q, k, v, q_offset=-60)
    assert not out.isnan().any()
    assert torch.equal(out[:, :, :60], torch.zeros_like(out[:, :, :60]))
    assert torch.isinf(lse[:, :, :60]).all() and torch.isfinite(lse[:, :, 60:]).all()
    ref, _ = dense_attention_reference(q, k, v, q_offset=-60)
    assert rel_err(out, ref) < 2e-5


def test_a_shape_index_is_sink_plus_local():
    n, sink, local = 520, 64, 128
    index = a_shape_index(1, 1, n, sink, local)
    q, k, v = inputs(1, 1, n, seed=23)
    out, _ = sparse_attention_forward(q, k, v, index)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    row_block_start = (i // 64) * 64
    # Blocks of 64: sink blocks, blocks ending within `local` before the row's block, own block.
    j_block = j // 64 * 64
    mask = (j <= i) & ((j_block < sink) | (j_block + 64 > row_block_start - local))
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
    assert rel_err(out, ref) < 2e-5


def test_head_subsets_write_only_their_heads():
    """Two launches over disjoint query-head subsets (sparse and dense paths) fill one output."""
    q, k, v = inputs(4, 2, 200, seed=29)
    index = random_index(1, 2, 200, 200, 0.4, max_columns=8, generator=torch.Generator().manual_seed(2))
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:3], float("nan"))
    sparse_ids = torch.tensor([3, 0], dtype=torch.int32)
    sparse_attention_forward(q, k, v, index, head_ids=sparse_ids, out=out, lse=lse)
    dense_attention_forward(q, k, v, head_ids=torch.tensor([1, 2], dtype=torch.int32), out=out, lse=lse)
    assert not out.isnan().any() and not lse.isnan().any()
    ref, _ = sparse_attention_reference(q[:, [3, 0]], k.repeat_interleave(2, 1)[:, [3, 0]],
                                        v.repeat_interleave(2, 1)[:, [3, 0]], index)
    assert rel_err(out[:, [3, 0]], ref) < 2e-5
    dense, _ = dense_attention_reference(q, k, v)
    assert rel_err(out[:, [1, 2]], dense[:, [1, 2]]) < 2e-5


def test_a_row_subset_launch_writes_only_its_rows():
    """q_order listing some rows (a Q-boundary head's video rows in the grid order): those rows
    equal the reference, the others keep what an earlier launch of the same head wrote."""
    n, heads = 300, 2
    q, k, v = inputs(heads, 1, n, seed=31)
    g = torch.Generator().manual_seed(7)
    rows = torch.randperm(n, generator=g)[:170]
    q_order = rows.to(torch.int32).expand(1, heads, -1).contiguous()
    full = random_index(1, heads, n, n, 0.3, max_columns=8, generator=g)
    subset = random_index(1, heads, 170, n, 0.4, max_columns=8, unaligned=True, generator=g)
    subset = SparseIndex(subset.block_count, subset.block_offset, subset.column_count, subset.column_index,
                         64, 64, q_order, random_order(heads, n, 9))
    out, lse = sparse_attention_forward(q, k, v, full)
    sparse_attention_forward(q, k, v, subset, out=out, lse=lse, check_values=True)
    ref_full, _ = sparse_attention_reference(q, k, v, full)
    ref_sub, ref_lse = sparse_attention_reference(q, k, v, subset)
    others = torch.ones(n, dtype=torch.bool)
    others[rows] = False
    assert rel_err(out[:, :, rows], ref_sub[:, :, rows]) < 2e-5
    torch.testing.assert_close(lse[:, :, rows], ref_lse[:, :, rows], atol=1e-3, rtol=1e-4)
    assert rel_err(out[:, :, others], ref_full[:, :, others]) < 2e-5
    alone, alone_lse = sparse_attention_forward(q, k, v, subset)  # new outputs: 0 and -inf elsewhere
    assert alone[:, :, others].eq(0).all() and alone_lse[:, :, others].eq(float("-inf")).all()


@pytest.mark.parametrize("orders", ["none", "shared", "separate"])
@pytest.mark.parametrize("n", [232, 456])  # 456: 7+ query blocks, 14+ key blocks of 32, neither a multiple
def test_spans_and_shared_column_rows_match_reference(orders, n):
    heads = 3
    q, k, v = inputs(heads, 1, n, seed=n + len(orders))
    g = torch.Generator().manual_seed(n)
    q_order = k_order = None
    if orders == "shared":
        q_order = k_order = random_order(heads, n, 7)
    elif orders == "separate":
        q_order, k_order = random_order(heads, n, 8), random_order(heads, n, 9)
    index = random_span_index(1, heads, n, n, 0.2, columns=60, rows=4, block_m=64, block_n=32,
                              q_order=q_order, k_order=k_order, generator=g)
    assert int(index.column_count.sum()) > 0 and int((index.span[..., 1] > index.span[..., 0]).sum()) > 0
    assert_matches_reference(q, k, v, index)
    no_columns = random_span_index(1, heads, n, n, 0.3, block_m=64, block_n=32, q_order=q_order, k_order=k_order,
                                   generator=g)
    assert_matches_reference(q, k, v, no_columns)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_near_keys_continue_the_earlier_launch(dtype):
    """A grid launch whose first head leaves its original-order band (its own query block and the
    128 keys before it: ``near_keys``) to an earlier A-shape launch and continues that softmax
    on the ``near_rows`` equals one softmax over both launches' keys (disjoint: a key counted
    twice would show); elsewhere (the second head, -1; rows 320-383) the grid alone overwrites
    the earlier launch, and the first query block's rows get nothing from the grid."""
    n = 384
    q, k, v = inputs(2, 1, n, dtype=dtype, seed=5)
    band = a_shape_index(1, 2, n, sink=0, local=128)
    out, lse = sparse_attention_forward(q, k, v, band)
    grid = dataclasses.replace(grid_index(1, 2, n, stride=48, phase=7, local_blocks=1),
                               near_keys=torch.tensor([128, -1], dtype=torch.int32),
                               near_rows=(torch.arange(n) < 320).int()[None])
    with pytest.raises(ValueError, match="continues an earlier launch"):
        sparse_attention_forward(q, k, v, grid)
    got, got_lse = sparse_attention_forward(q, k, v, grid, out=out.clone(), lse=lse.clone(), check_values=True)

    band_mask, grid_mask = index_to_mask(band, n, n), index_to_mask(grid, n, n)
    near = (torch.arange(n) < 320)[None, :, None]
    assert not (band_mask[:, 0] & grid_mask[:, 0])[near.expand(1, n, n)].any()
    assert (band_mask[:, 0] & grid_mask[:, 0]).any() and (band_mask[:, 1] & grid_mask[:, 1]).any()
    assert grid_mask[:, 0, 64:].any() and not grid_mask[:, 0, :64].any()  # the first block: all near
    union = torch.stack([torch.where(near, band_mask[:, 0] | grid_mask[:, 0], grid_mask[:, 0]), grid_mask[:, 1]], 1)
    ref, ref_lse = masked_attention(q, k, v, union)
    assert rel_err(got, ref) < TOL[dtype]
    torch.testing.assert_close(got_lse, ref_lse, atol=1e-3, rtol=1e-4)
    same, same_lse = sparse_attention_reference(q, k, v, grid, prior=(out, lse))
    assert rel_err(same, ref) < TOL[dtype]
    torch.testing.assert_close(same_lse, ref_lse, atol=1e-4, rtol=1e-5)
    assert torch.equal(groups_to_mask([([0, 1], band), ([0, 1], grid)], 2, n, n), union)
