"""The column-compaction kernel (interpreter) equals its PyTorch reference exactly."""

import pytest
import torch

from mmcompile.patterns.columns_kernel import compact_columns
from mmcompile.patterns.index_builder import _dedup_compact
from mmcompile.patterns.index_columns import merge_column_sets, per_block_reference


def _inputs(seed, batch=2, heads=3, n=700, block_m=64, block_n=32, width=300, modalities=2, unused=(0.2,)):
    g = torch.Generator().manual_seed(seed)
    num_m = -(-n // block_m)
    sets = []
    share = torch.tensor(unused * heads)[:heads, None]  # per head: the share of unused entries
    for i in range(modalities):  # column sets with duplicates across modalities and unused entries
        cols = torch.randint(0, n, (batch, heads, width // modalities), generator=g)
        cols[torch.rand(cols.shape, generator=g) < share] = -1
        rows = torch.rand(batch, num_m, generator=g) < 0.7
        sets.append((rows if modalities > 1 else None, cols))
    values, bits = merge_column_sets(sets, batch, heads, "cpu")
    present = torch.zeros(batch, num_m, dtype=torch.long)
    for i, (rows, _) in enumerate(sets):
        present |= (torch.ones_like(present, dtype=torch.bool) if rows is None else rows).long() << i
    listed = torch.randint(-1, -(-n // block_n), (batch, heads, num_m, 9), generator=g)
    block_ids, count = _dedup_compact(listed)
    lo = torch.randint(0, n, (batch, heads, num_m, 1), generator=g)  # spans, some empty
    span = torch.cat([lo, lo + torch.randint(-50, 200, lo.shape, generator=g).clamp(min=0)], -1)
    return values, bits, present, block_ids, count, span, n, num_m


@pytest.mark.interpreter
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("modalities", [1, 2])
def test_compact_columns_equals_reference(causal, modalities):
    values, bits, present, block_ids, count, span, n, num_m = _inputs(3 + modalities, modalities=modalities)
    ref_ids, ref_count = per_block_reference(values, bits, present, block_ids, span, 0, 64, 32, n, causal)
    ids, got_count = compact_columns(values, bits, present, block_ids, count, span, 0, n, 64, 32, causal)
    assert ref_count.sum() > 0 and (ref_count < values.shape[-1]).all()  # the test exercises dropping
    assert torch.equal(got_count.long(), ref_count)
    assert torch.equal(ids.long(), ref_ids)


@pytest.mark.interpreter
@pytest.mark.parametrize("causal", [True, False])
def test_short_sets_beside_a_wide_one_equal_reference(causal):
    """A head with a few columns in a launch whose widest head has 1100: its set's tail (several
    chunks of -1) ends its stream, gaps inside a set (repeats) do not."""
    values, bits, present, block_ids, count, span, n, num_m = _inputs(11, batch=1, n=1200, width=1100,
                                                                      unused=(0.99, 0.2, 0.9))
    ref_ids, ref_count = per_block_reference(values, bits, present, block_ids, span, 0, 64, 32, n, causal)
    ids, got_count = compact_columns(values, bits, present, block_ids, count, span, 0, n, 64, 32, causal)
    assert 0 < ref_count[:, 0].sum() and ref_count[:, 0].max() < 20 < ref_count[:, 1].max()
    assert torch.equal(got_count.long(), ref_count)
    assert torch.equal(ids.long(), ref_ids)


@pytest.mark.interpreter
def test_compact_columns_of_later_query_blocks_equals_reference():
    """A launch over query blocks ``first_block`` on (the builder's chunks) tests their own diagonals."""
    values, bits, present, block_ids, count, span, n, num_m = _inputs(7)
    first = 4
    ref_ids, ref_count = per_block_reference(values, bits, present, block_ids, span, 0, 64, 32, n, True)
    ids, got_count = compact_columns(values, bits, present[:, first:], block_ids[:, :, first:], count[:, :, first:],
                                     span[:, :, first:], first, n, 64, 32, True)
    assert torch.equal(got_count.long(), ref_count[:, :, first:])
    assert torch.equal(ids.long(), ref_ids[:, :, first:])


@pytest.mark.interpreter
def test_index_built_through_the_kernel_equals_the_reference(monkeypatch):
    """``build_index`` with the kernel writing into chunks of the index (heads and query blocks)
    gives the index the PyTorch path builds."""
    from mmcompile.patterns import AShape, VerticalSlash, index_columns, intra
    from mmcompile.patterns.estimate import last_queries, line_scores
    from mmcompile.patterns.index_builder import build_index

    n, heads = 500, 3
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, heads, n, 16, generator=g), torch.randn(1, 1, n, 16, generator=g)
    lines = line_scores(q, k, *last_queries(None, n, 1), 0.25)
    rows = torch.arange(-(-n // 64))[None] % 2 == 0
    entries = [(rows, intra.vertical_slash_sets([VerticalSlash(40, 3)] * heads, lines, n, 64, 32)),
               (~rows, intra.a_shape_sets([AShape(30, 60)] * heads, 1, n, 32, "cpu"))]
    reference = build_index(entries, n, n, 64, 32)
    monkeypatch.setattr(index_columns, "triton_runs_on", lambda t, has_reference=False: True)
    for max_entries in (10 ** 6, 20):  # all at once; a head and two query blocks per chunk
        got = build_index(entries, n, n, 64, 32, max_entries=max_entries)
        assert torch.equal(got.column_index, reference.column_index)
        assert torch.equal(got.column_count, reference.column_count)
