"""Bad inputs to the kernel and the reference raise clear errors (no silent wrong results)."""

import pytest
import torch

from mmcompile.kernels import SparseIndex, index_to_mask, sparse_attention_forward, sparse_attention_reference
from mmcompile.kernels.index_factories import causal_index, random_index


def qkv(n=130, heads_q=2, heads_kv=1, d=64, dtype=torch.float32):
    return (torch.randn(1, heads_q, n, d, dtype=dtype), torch.randn(1, heads_kv, n, d, dtype=dtype),
            torch.randn(1, heads_kv, n, d, dtype=dtype))


def replace(index, **fields):
    return SparseIndex(**{**index.__dict__, **fields})


@pytest.mark.parametrize("call", [sparse_attention_forward, sparse_attention_reference])
def test_bad_tensors_raise(call):
    q, k, v = qkv()
    index = causal_index(1, 2, 130, 130)
    with pytest.raises(ValueError, match="dtype"):
        call(q.to(torch.int32), k, v, index)
    with pytest.raises(ValueError, match="dtypes differ"):
        call(q.half(), k, v, index)
    with pytest.raises(ValueError, match=r"\[batch, heads, seq, head_dim\]"):
        call(q[0], k, v, index)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        call(*qkv(heads_q=3, heads_kv=2), causal_index(1, 3, 130, 130))
    with pytest.raises(ValueError, match="k and v shapes differ"):
        call(q, k, v[:, :, :100], index)
    with pytest.raises(ValueError, match="devices differ"):
        call(q, k.to("meta"), v, index)


@pytest.mark.parametrize("call", [sparse_attention_forward, sparse_attention_reference])
def test_bad_index_raises(call):
    q, k, v = qkv()
    index = random_index(1, 2, 130, 130, 0.5, max_columns=4)
    kwargs = dict(check_values=True) if call is sparse_attention_forward else {}
    cases = [
        (replace(index, block_count=index.block_count[:, :, :1]), "block_count has shape"),
        (replace(index, block_offset=index.block_offset.long()), "must be int32"),
        (replace(index, block_offset=index.block_offset + 10_000, block_count=torch.ones_like(index.block_count)),
         r"block_offset must lie in \[0, 130\)"),
        (replace(index, column_index=torch.full_like(index.column_index, -3),
                 column_count=torch.ones_like(index.column_count)), "column_index must lie"),
        (replace(index, block_count=index.block_count + 99), "block_count must lie"),
        (replace(index, q_order=torch.zeros(1, 2, 130, dtype=torch.int32)), "q_order must list distinct"),
        (replace(index, q_order=torch.zeros(1, 2, 131, dtype=torch.int32)), "q_order has shape"),
        (replace(index, k_order=torch.zeros(1, 2, 7, dtype=torch.int32)), "k_order has shape"),
        (replace(index, block_m=48), "block sizes"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            call(q, k, v, bad, **kwargs)


def test_reference_rejects_a_key_listed_twice():
    index = causal_index(1, 1, 256, 256)
    # Query block 3 lists blocks 0, 64, 128; add column 70, already inside block 64.
    cols = torch.zeros(1, 1, 4, 1, dtype=torch.int32)
    cols[0, 0, 3, 0] = 70
    count = torch.zeros(1, 1, 4, dtype=torch.int32)
    count[0, 0, 3] = 1
    with pytest.raises(ValueError, match="more than once"):
        index_to_mask(replace(index, column_index=cols, column_count=count), 256, 256)


def test_entries_inside_the_diagonal_block_are_ignored():
    """Builders may list the diagonal block; the mask is the same as without it."""
    base = causal_index(1, 1, 256, 256)
    with_diag = base.block_offset.clone()
    count = base.block_count.clone()
    with_diag = torch.cat([with_diag, torch.zeros(1, 1, 4, 1, dtype=torch.int32)], dim=-1)
    for m in range(4):
        with_diag[0, 0, m, count[0, 0, m]] = m * 64
    count += 1
    assert torch.equal(index_to_mask(replace(base, block_offset=with_diag, block_count=count), 256, 256),
                       index_to_mask(base, 256, 256))


def test_cpu_tensors_without_interpreter_raise(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = qkv()
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        sparse_attention_forward(q, k, v, causal_index(1, 2, 130, 130))


def test_public_op_checks_index_contents_by_default():
    """The malformed indexes a hostile caller can pass to ``torch.ops.mminference.sparse_attention``:
    each is a clear ValueError, never a crash, uninitialized memory or a key counted twice."""
    from mmcompile.ops import sparse_attention_op

    q, k, v = qkv(n=256, heads_q=1)
    base = causal_index(1, 1, 256, 256)
    one = torch.zeros(1, 1, 4, dtype=torch.int32)
    one[0, 0, 3] = 1
    three = torch.zeros(1, 1, 4, dtype=torch.int32)
    three[0, 0, 3] = 3
    out_of_range = torch.arange(256, dtype=torch.int32).view(1, 1, 256).clone()
    out_of_range[0, 0, 5] = 10_000
    not_a_permutation = torch.zeros(1, 1, 256, dtype=torch.int32)
    cases = [
        (replace(base, q_order=out_of_range), "q_order must list distinct"),
        (replace(base, k_order=not_a_permutation), "k_order must be a permutation"),
        (replace(base, column_index=torch.full((1, 1, 4, 3), 7, dtype=torch.int32), column_count=three),
         "a key column twice"),
        (replace(base, column_index=torch.full((1, 1, 4, 1), 70, dtype=torch.int32), column_count=one),
         "a key column inside a listed key block"),
        (replace(base, block_offset=torch.cat([base.block_offset, base.block_offset[..., :1] + 32], -1),
                 block_count=base.block_count + (base.block_count > 0).int()), "overlapping key blocks"),
        (replace(base, block_count=base.block_count + 5), "block_count must lie"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            sparse_attention_op(q, k, v, bad)
    sparse_attention_op(q, k, v, base)  # the valid index passes the same checks


def test_density_counts_the_pairs_the_reference_mask_holds():
    """``SparseIndex.density``: exact for original-order indexes whose lists lie before the diagonal."""
    for n in (130, 256, 300):
        for index in (causal_index(1, 2, n, n), random_index(1, 2, n, n, 0.5, generator=torch.Generator().manual_seed(1))):
            mask = index_to_mask(index, n, n)
            assert torch.allclose(index.density(n), mask.sum((-1, -2)).float() / (n * (n + 1) / 2))


def test_public_ops_refuse_a_meta_tensor_among_real_ones():
    from mmcompile.ops import sparse_attention_op

    q, k, v = qkv()
    with pytest.raises(ValueError, match="one device"):
        sparse_attention_op(q, k.to("meta"), v, causal_index(1, 2, 130, 130))
    with pytest.raises(ValueError, match="one device"):
        torch.ops.mminference.dense_attention(q, k, v.to("meta"), 0.125, 0, 0)


def test_spans_and_shared_rows_are_checked():
    """Spans must not share keys with listed blocks or own columns; shared rows must ascend, their
    blocks' lists too, and ``column_count`` must count what each block visits of its row."""
    q, k, v = qkv(n=256, heads_q=1)
    base = causal_index(1, 1, 256, 256)  # 4 query blocks of 64: every block before each diagonal
    m = torch.arange(4, dtype=torch.int32)
    span = torch.stack([m * 0 + 192, m * 0 + 256], -1)[None, None].contiguous()  # keys 192..255
    rows = torch.tensor([[[[3, 70, 300]]]], dtype=torch.int32)  # one shared row (300: padding)
    column_row = torch.zeros(1, 1, 4, dtype=torch.int32)
    shared = replace(base, column_index=rows, column_row=column_row, column_count=torch.zeros_like(base.column_count))
    cases = [
        (replace(base, span=span[..., :1]), "span has shape"),
        (replace(base, span=span + 100), r"span must lie in \[0, 256\]"),
        (replace(base, span=torch.zeros_like(span) + torch.tensor([0, 64], dtype=torch.int32)), "block inside its span"),
        (replace(shared, column_row=column_row[..., :2]), "column_row has shape"),
        (replace(shared, column_row=column_row + 1), r"column_row must lie in \[0, 1\)"),
        (replace(shared, column_index=rows.flip(-1).contiguous()), "must be ascending"),
        (replace(shared, column_count=torch.ones_like(base.column_count)), "column_count must count"),
        (replace(shared, block_offset=base.block_offset.flip(-1).contiguous(), column_count=torch.zeros_like(
            base.column_count)), "block offsets must be ascending"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            sparse_attention_reference(q, k, v, bad)
    no_blocks = replace(shared, block_count=torch.zeros_like(base.block_count),
                        column_count=torch.tensor([[[0, 1, 2, 2]]], dtype=torch.int32))
    sparse_attention_reference(q, k, v, no_blocks)  # keys 3 and 70 where visible: valid
    sparse_attention_reference(q, k, v, shared)  # the blocks visit both keys, so no block counts them


def test_density_counts_spans_and_shared_rows_exactly():
    """Aligned spans before the diagonal and shared rows: ``density`` equals the mask's pairs."""
    from mmcompile.kernels.index_factories import random_span_index
    from mmcompile.kernels.sparse_index import shared_columns

    for n in (130, 300):
        g = torch.Generator().manual_seed(n)
        index = random_span_index(1, 2, n, n, 0.0, columns=40, rows=3, block_m=64, block_n=32, generator=g)
        m = torch.arange(index.num_query_blocks)
        first = (torch.rand(1, 2, m.numel(), generator=g) * (m * 2 + 1)).long() * 32  # aligned, before the diagonal
        index = replace(index, span=torch.stack([first, (m * 64).expand_as(first)], -1).to(torch.int32).contiguous())
        index = replace(index, column_count=shared_columns(index, n)[1].sum(-1).to(torch.int32))
        mask = index_to_mask(index, n, n)
        assert int(index.column_count.sum()) > 0
        assert torch.allclose(index.density(n), mask.sum((-1, -2)).float() / (n * (n + 1) / 2))


def test_near_keys_are_checked():
    """``near_keys`` needs its ``near_rows`` (and the reverse), one entry per head and per (batch,
    row), int32; the reference needs the earlier launch's (out, lse) to continue."""
    q, k, v = qkv()
    index = causal_index(1, 2, 130, 130)
    keys, rows = torch.tensor([64, -1], dtype=torch.int32), torch.ones(1, 130, dtype=torch.int32)
    bad = {"come together": dict(near_keys=keys), "near_rows has shape": dict(near_keys=keys, near_rows=rows[:, :7]),
           "near_keys has shape": dict(near_keys=keys[:1], near_rows=rows),
           "must be int32": dict(near_keys=keys.long(), near_rows=rows)}
    for message, fields in bad.items():
        with pytest.raises(ValueError, match=message):
            sparse_attention_reference(q, k, v, replace(index, **fields), prior=(q, q[..., 0]))
    with pytest.raises(ValueError, match="pass its \\(out, lse\\) as prior"):
        sparse_attention_reference(q, k, v, replace(index, near_keys=keys, near_rows=rows))
