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


@pytest.mark.interpreter
def test_a_query_modality_that_misses_runs_dense_and_the_others_keep_their_pattern():
    """The check judges each query modality apart: unstructured heads whose text rows get a narrow
    window miss there and those rows run dense (exactly), while their video rows keep the window
    that covers them; a head whose every modality misses runs dense whole."""
    from mmcompile.kernels import check_index
    from mmcompile.kernels.reference import groups_to_mask, masked_attention

    n = LAYOUT.length
    q, k, v, _ = planted_qkv(LAYOUT, 4, 2, 64, kinds=["random"] * 4)
    ctx = forward_context(LAYOUT, n, 1, "cpu", 64, 64)
    split = HeadPattern("q-boundary", (("text", AShape(16, 64)), ("video", AShape(64, n))))
    narrow = HeadPattern("q-boundary", (("text", AShape(16, 64)), ("video", AShape(16, 64))))
    result = layer_attention(q, k, v, ctx, [split, split, narrow, split], recall=0.95)
    for h in (0, 1, 3):
        assert result.patterns[h] == HeadPattern("q-boundary", (("text", Dense()), ("video", AShape(64, n))))
    assert result.patterns[2] == HeadPattern("none", (("*", Dense()),))
    assert (result.head_recall > 1 - 1e-5).all() and (result.head_error < 1e-5).all()  # every row now exact
    ids, rows_launch = result.indexes[-1]  # one launch over the text rows alone, these heads
    text = torch.cat([torch.arange(100), torch.arange(612, 712)])
    assert ids == [0, 1, 3] and rows_launch.q_order.shape[-1] == 200
    assert rows_launch.q_order[0, :, :200].eq(text).all()
    check_index(rows_launch, q[:, ids], k)  # a valid index: no key visited twice
    mask = groups_to_mask(result.indexes, 4, n, n)
    assert mask.equal(torch.ones(1, 4, n, n, dtype=torch.bool).tril())
    exact, _ = masked_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), mask, 0.125)
    torch.testing.assert_close(result.out, exact.float(), atol=2e-5, rtol=2e-5)

def test_dense_rows_equal_a_full_softmax_across_key_chunks_and_padding():
    """``verify.dense_rows`` (the check's dense reference) merges key chunks by their log-sum-exp:
    equal to one softmax over every causal, unpadded key; rows that see nothing, and rows not
    valid, give -inf and 0."""
    from mmcompile.patterns.verify import dense_rows

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 300, 16), torch.randn(1, 2, 300, 16), torch.randn(1, 2, 300, 16)
    pad = torch.zeros(1, 300, dtype=torch.bool)
    pad[0, :5] = True  # left padding: row 2 sees no key
    pos = torch.tensor([[2, 40, 129, 299]])
    valid = torch.tensor([[True, True, True, False]])
    lse, out = dense_rows(q, k, v, pos, valid, 0.25, pad, chunk=64)
    keys = torch.arange(300)
    for h in range(4):
        for i, p in enumerate(pos[0].tolist()):
            seen = (keys <= p) & ~pad[0]
            if not seen.any() or not valid[0, i]:  # nothing to see, or not a row of the check
                assert lse[0, h, i] == float("-inf") and not out[0, h, i].any()
                continue
            s = (q[0, h, p] @ k[0, h // 2].T * 0.25).masked_fill(~seen, float("-inf"))
            torch.testing.assert_close(lse[0, h, i], s.logsumexp(-1))
            torch.testing.assert_close(out[0, h, i], torch.softmax(s, -1) @ v[0, h // 2])


@pytest.mark.interpreter
def test_a_head_that_keeps_the_mass_but_not_the_output_runs_dense():
    """A slash-bands head on VS with 4 slash blocks keeps 0.96 of the held-out rows' mass, above a
    0.95 target, but a narrow band's edge puts its output 0.19 off: the error check sends it dense
    (and with the error tolerance lifted it stays VS, so it is the error that did)."""
    from mmcompile.patterns import check as check_module
    from mmcompile.patterns.families import family_layout, family_qkv
    from mmcompile.patterns.specs import VerticalSlash

    layout = family_layout("video", 3072, 1, frame_tokens=(64, 256))
    q, k, v, _ = family_qkv("slash-bands", layout, 2, 1, 64, seed=1)
    q, k, v = q[:, 1:], k, v  # the head of test_plan_sizes' slash-bands pair
    ctx = forward_context(layout, 3072, 1, "cpu", 128, 64)
    vs = HeadPattern("q-boundary", (("text", VerticalSlash(32, 4)), ("video", VerticalSlash(32, 4))))
    checked = layer_attention(q, k, v, ctx, [vs], recall=0.95)
    assert checked.patterns[0] == HeadPattern("none", (("*", Dense()),))
    assert float(checked.head_error[0]) == 0.0 and float(checked.head_recall[0]) == 1.0
    original = check_module.error_tolerance
    try:
        check_module.error_tolerance = lambda recall: 1.0
        lifted = layer_attention(q, k, v, ctx, [vs], recall=0.95)
    finally:
        check_module.error_tolerance = original
    assert lifted.patterns[0] == vs
    assert float(lifted.head_recall[0]) >= 0.95 and float(lifted.head_error[0]) > 0.1


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dense_rows_kernel_equals_the_pytorch_path(dtype, monkeypatch):
    """The Triton pass (pass 1 of ``line_scores_kernel`` with V) gives the PyTorch path's lse and
    outputs over several key splits and chunks of rows (one launch), with padding and a row that
    sees nothing."""
    from mmcompile.patterns import line_scores_kernel
    from mmcompile.patterns.verify import dense_rows

    monkeypatch.setattr(line_scores_kernel, "OUT_ROWS", 16)  # two chunks of rows (16 is tl.dot's least)
    monkeypatch.setattr(line_scores_kernel, "SPLIT", 512)  # three key splits at 1.3K keys (the interpreter is slow)

    torch.manual_seed(1)
    n = 2 * line_scores_kernel.SPLIT + 300
    q, k, v = (torch.randn(2, h, n, 32).to(dtype) for h in (4, 2, 2))
    pad = torch.zeros(2, n, dtype=torch.bool)
    pad[0, :3] = True
    first = torch.tensor([1, 300, 516, n - 1, n - 2])
    pos = torch.stack([torch.cat([first, torch.randint(3, n, (19,))]), torch.randint(0, n, (24,))])  # 24 rows each
    valid = torch.ones(2, 24, dtype=torch.bool)
    valid[0, 4] = False
    want = dense_rows(q, k, v, pos, valid, 0.2, pad, use_kernel=False)
    got = dense_rows(q, k, v, pos, valid, 0.2, pad, use_kernel=True)
    lse_tol = 1e-4 if dtype == torch.float32 else 1e-3  # the PyTorch path rounds fp16 scores, the kernel's are fp32
    torch.testing.assert_close(got[0], want[0], rtol=lse_tol, atol=lse_tol)
    torch.testing.assert_close(got[1], want[1], rtol=1e-3, atol=1e-3)
    assert got[0][0, :, 0].eq(float("-inf")).all() and not got[1][0, :, 0].any()


def test_few_missing_rows_run_dense_at_once_and_many_try_the_fallback_first():
    """A row set that misses runs dense straight away when its rows cost less dense (each against
    every key) than recomputing the head at the density cap; else the fallback is tried first."""
    from mmcompile.patterns.check import dense_rows_apart, dense_rows_first

    ctx = forward_context(LAYOUT, LAYOUT.length, 1, "cpu", 64, 64)  # 200 text rows of 712
    head = HeadPattern("q-boundary", (("text", AShape(16, 64)), ("video", AShape(16, 64))))
    assert abs(ctx.row_area(["text"]) - (5050 + 66250) / (712 * 713 / 2)) < 1e-9  # rows 1-100 and 613-712
    assert dense_rows_first(head, ["text"], ctx, density=0.3)  # their share of the causal pairs: 0.28
    assert not dense_rows_first(head, ["text"], ctx, density=0.25)
    assert not dense_rows_apart(head, ["video"], ctx)  # 0.72 of the pairs: the head whole, through SDPA
    assert not dense_rows_first(head, ["text", "video"], ctx, density=1.0)  # every set: the head whole
    assert not dense_rows_first(HeadPattern("k-boundary", head.intra), ["text"], ctx, density=0.6)


def test_missing_rows_that_one_launch_cannot_list_send_the_head_whole_to_sdpa():
    """Bad input for the rows-alone launch: when samples hold different numbers of a modality's
    rows (no equal count), or the head's pattern is not per query modality (a K-boundary), its
    missing rows are not run apart: the head goes dense whole."""
    import dataclasses

    from mmcompile.patterns.check import dense_rows_apart

    ctx = forward_context(LAYOUT, LAYOUT.length, 1, "cpu", 64, 64)
    head = HeadPattern("q-boundary", (("text", AShape(16, 64)), ("video", AShape(16, 64))))
    assert dense_rows_apart(head, ["text"], ctx)
    unequal = dataclasses.replace(ctx, row_counts={**ctx.row_counts, "text": None})
    assert not dense_rows_apart(head, ["text"], unequal)
    assert not dense_rows_apart(HeadPattern("k-boundary", head.intra), ["text"], ctx)
    assert not dense_rows_apart(head, ["*"], ctx)
