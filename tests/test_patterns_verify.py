"""Recall on held-out rows, read off the kernel's log-sum-exp (patterns/verify.py): it equals an
independent dense computation on the built indexes, and heads below the target run dense (exactly)."""

import pytest
import torch

from mmcompile.kernels import index_to_mask
from mmcompile.patterns import TEXT, VIDEO, forward_context, from_segments, layer_attention
from mmcompile.patterns.planted import planted_qkv
from mmcompile.patterns.specs import AShape, Dense, HeadPattern

LAYOUT = from_segments([[(TEXT, 100), (VIDEO, 512, 8, 8), (TEXT, 100)]])


def independent_recall(q, k, indexes, ctx, scale):
    """The same quantity from dense masks (``index_to_mask``) and a full softmax."""
    n, group = ctx.n, q.shape[1] // k.shape[1]
    probs = torch.softmax(((q[0] @ k[0].repeat_interleave(group, 0).transpose(-1, -2)) * scale)
                          .masked_fill(torch.ones(n, n, dtype=torch.bool).tril().logical_not(), float("-inf")), -1)
    masks = torch.ones(q.shape[1], n, n, dtype=torch.bool).tril()  # dense heads: every causal key
    for ids, index in indexes:  # in launch order: a row-subset launch replaces only its rows
        if index is None:
            continue
        mask = index_to_mask(index, n, n)[0]
        rows = (torch.arange(n) if index.q_order is None else index.q_order[0, 0].long())
        for i, h in enumerate(ids):
            masks[h, rows] = mask[i, rows]
    out = torch.ones(q.shape[1])
    for h in range(q.shape[1]):
        per_set = []
        for name in ctx.row_sets():
            pos, valid = ctx.check_rows[name]
            rows = pos[0][valid[0]]
            assert not set(rows.tolist()) & set(ctx.last_rows[name][0][0].tolist())  # held out
            per_set.append((probs[h, rows] * masks[h, rows]).sum(-1).mean())
        out[h] = min(per_set)
    return out


@pytest.mark.interpreter
def test_held_out_recall_equals_an_independent_computation_on_the_built_index():
    q, k, v, _ = planted_qkv(LAYOUT, 4, 2, 64, kinds=["grid", "a-shape", "vertical-slash", "boundary"])
    ctx = forward_context(LAYOUT, LAYOUT.length, 1, "cpu", 64, 64)
    result = layer_attention(q, k, v, ctx, density=0.2, recall=0.0)  # measured, nothing demoted
    got = result.head_recall
    torch.testing.assert_close(got, independent_recall(q, k, result.indexes, ctx, 0.125), atol=1e-5, rtol=1e-5)
    assert (got <= 1).all() and (got > 0).all() and (got < 0.999).any()  # some head really dropped mass


@pytest.mark.interpreter
def test_heads_below_the_target_run_dense_and_exactly():
    from mmcompile.kernels.reference import masked_attention

    q, k, v, _ = planted_qkv(LAYOUT, 4, 2, 64, kinds=["a-shape", "random", "a-shape", "random"])
    ctx = forward_context(LAYOUT, LAYOUT.length, 1, "cpu", 64, 64)
    narrow = [HeadPattern("none", (("*", AShape(64, 64)),))] * 4  # a fixed pattern, verified at 0.95
    result = layer_attention(q, k, v, ctx, narrow, recall=0.95)
    dense_heads = [h for h, p in enumerate(result.patterns) if p.intra[0][1] == Dense()]
    assert {1, 3} <= set(dense_heads)  # unstructured heads cannot keep 95% in a narrow window
    assert all(result.head_recall[h] >= 0.95 for h in range(4) if h not in dense_heads)
    n = LAYOUT.length
    exact, _ = masked_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                torch.ones(1, 4, n, n, dtype=torch.bool).tril(), 0.125)
    torch.testing.assert_close(result.out[:, dense_heads], exact[:, dense_heads].float(), atol=2e-5, rtol=2e-5)
    assert result.head_density[dense_heads].eq(1).all()
