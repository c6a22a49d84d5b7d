"""benchmarks/flex_baseline.flex_for_layer: one FlexAttention BlockMask equal, element by element,
to what our op computes for every head of a layer (VS columns, a grid permutation, dense heads)."""

import os
import sys

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, create_mask

from mmcompile.kernels import index_to_mask, sparse_attention_reference
from mmcompile.kernels.reference import causal_mask, dense_attention_reference
from mmcompile.patterns import TEXT, VIDEO, Dense, Grid, HeadPattern, VerticalSlash, forward_context, from_segments
from mmcompile.patterns.layer_index import build_layer_indexes
from mmcompile.patterns.planted import planted_qkv

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from flex_baseline import flex_block_density, flex_for_layer, layer_mask_mod  # noqa: E402

# 968 tokens: not a multiple of Flex's 128 or of our 64; 12 video frames of 8 x 8.
SEGMENTS = [[(TEXT, 100), (VIDEO, 768, 8, 8), (TEXT, 100)]]
KINDS = ["vertical-slash", "grid", "random", "a-shape"]
PATTERNS = [HeadPattern("none", (("*", VerticalSlash(24, 3)),)),
            HeadPattern("none", (("*", Grid(local_frames=2)),)),
            HeadPattern("none", (("*", Dense()),)),
            HeadPattern("none", (("*", VerticalSlash(40, 2)),))]


@pytest.fixture(scope="module", params=[(64, 64), (128, 64)], ids=["64x64", "128x64"])
def layer(request):
    """q, k, v, n and the real indexes of a planted layer, at our CPU and our GPU tile sizes."""
    layout = from_segments(SEGMENTS)
    n = layout.length
    q, k, v, _ = planted_qkv(layout, 4, 2, 32, "cpu", torch.float32, seed=3, kinds=KINDS)
    ctx = forward_context(layout, n, 1, "cpu", *request.param)
    return q, k, v, n, build_layer_indexes(q, k, PATTERNS, ctx)


def expected_mask(indexes, heads, n):
    """[H, N, N] from the reference of each launch group's index; dense heads: causal."""
    mask = torch.zeros(heads, n, n, dtype=torch.bool)
    for ids, index in indexes:
        mask[ids] = causal_mask(n, n) if index is None else index_to_mask(index, n, n)[0]
    return mask


def test_the_layer_has_every_kind_of_head(layer):
    *_, indexes = layer
    by_head = {h: index for ids, index in indexes for h in ids}
    assert by_head[2] is None  # the dense head
    assert by_head[1].q_order is not None and by_head[1].k_order is not None  # the grid permutation
    vs = by_head[0]
    assert vs.q_order is None and int(vs.column_count.sum()) > 0  # VS columns


def test_mask_mod_equals_reference_mask(layer):
    q, _, _, n, indexes = layer
    mask_mod = layer_mask_mod(indexes, n, q.shape[1], "cpu")
    flex = create_mask(mask_mod, 1, q.shape[1], n, n, device="cpu")[0]
    want = expected_mask(indexes, q.shape[1], n)
    assert torch.equal(flex, want)
    assert not (flex & ~causal_mask(n, n)).any()
    assert torch.equal(flex[2], causal_mask(n, n))
    # The comparison sees the columns: the same index without them is a different mask.
    ids, vs = next((ids, index) for ids, index in indexes if index is not None and index.q_order is None)
    no_cols = type(vs)(vs.block_count, vs.block_offset, torch.zeros_like(vs.column_count), vs.column_index,
                       vs.block_m, vs.block_n)
    without = expected_mask([(ids, no_cols)] + [e for e in indexes if e[0] != ids], q.shape[1], n)
    assert not torch.equal(flex, without)


def dense_blocks(num, indices, n_kv_blocks):
    """bool [H, nQ, nKV] from a BlockMask's (num_blocks, indices) pair, batch 0."""
    listed = torch.arange(indices.shape[-1]) < num[0, ..., None]
    out = torch.zeros(*num.shape[1:], n_kv_blocks + 1, dtype=torch.bool)
    out.scatter_(-1, torch.where(listed, indices[0].long(), n_kv_blocks), True)
    return out[..., :n_kv_blocks]


def test_block_mask_partial_and_full_blocks_match_the_element_mask(layer):
    q, _, _, n, indexes = layer
    heads = q.shape[1]
    block_mask = create_block_mask(layer_mask_mod(indexes, n, heads, "cpu"), 1, heads, n, n, device="cpu",
                                   _compile=True)
    bs = block_mask.BLOCK_SIZE[0]
    nb = -(-n // bs)
    want = torch.nn.functional.pad(expected_mask(indexes, heads, n), (0, nb * bs - n, 0, nb * bs - n))
    valid = torch.nn.functional.pad(torch.ones(n, n, dtype=torch.bool), (0, nb * bs - n, 0, nb * bs - n))
    want = want.view(heads, nb, bs, nb, bs)
    valid = valid.view(nb, bs, nb, bs)
    any_ = want.any(4).any(2)
    all_ = (want | ~valid).all(4).all(2)
    full = dense_blocks(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, nb)
    partial = dense_blocks(block_mask.kv_num_blocks, block_mask.kv_indices, nb)
    assert torch.equal(full | partial, any_)
    assert not (full & ~all_).any()  # a full block skips the mask_mod: it must be all True
    causal_blocks = nb * (nb + 1) // 2
    assert flex_block_density(block_mask, n) == pytest.approx(any_.sum().item() / (heads * causal_blocks))


def test_compiled_flex_equals_the_reference(layer):
    q, k, v, n, indexes = layer
    call, build_ms, density = flex_for_layer(q, k, v, indexes, n)
    assert build_ms > 0 and 0 < density <= 1
    out = call()
    group = q.shape[1] // k.shape[1]
    for ids, index in indexes:
        kv = [h // group for h in ids]
        if index is None:
            ref, _ = dense_attention_reference(q[:, ids], k[:, kv], v[:, kv])
        else:
            ref, _ = sparse_attention_reference(q[:, ids], k[:, kv], v[:, kv], index)
        err = ((out[:, ids] - ref).norm() / ref.norm()).item()
        assert err < 1e-5, (ids, err)


def test_uncovered_heads_are_refused(layer):
    q, _, _, n, indexes = layer
    with pytest.raises(ValueError, match="cover query heads"):
        layer_mask_mod(indexes[1:], n, q.shape[1], "cpu")
