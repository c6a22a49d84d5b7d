"""The online policy against the recall target (issue 11): Grid for grid heads on a video+text
layout, dense for heads the candidates cannot serve, and the output always the reference of what
was launched."""

import dataclasses

import pytest
import torch

from mmcompile.kernels import groups_to_mask
from mmcompile.kernels.reference import masked_attention
from mmcompile.patterns import forward_context, layer_attention
from mmcompile.patterns.planted import planted_qkv, standard_layout
from mmcompile.patterns.specs import Dense, Grid, HeadPattern, VerticalSlash

pytestmark = pytest.mark.interpreter


def reference(q, k, v, indexes, scale):
    group = q.shape[1] // k.shape[1]
    mask = groups_to_mask(indexes, q.shape[1], q.shape[2], k.shape[2])
    return masked_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), mask, scale)[0]


def test_grid_heads_on_a_video_text_layout_get_grid_for_their_video_rows():
    """Planted grid heads with the same patch attended across frames (what Grid's order makes
    contiguous), text around the video: the video rows run Grid, the text rows their own pattern,
    the held-out recall meets the target, the unstructured head stays dense."""
    layout = standard_layout("video", 3072)
    q, k, v, _ = planted_qkv(layout, 4, 1, 64, kinds=["grid", "grid", "a-shape", "random"], periodic_frames=16.0)
    ctx = forward_context(layout, layout.length, 1, "cpu", 64, 64)
    result = layer_attention(q, k, v, ctx, density=0.1, recall=0.95)
    for h in (0, 1):
        head = result.patterns[h]
        assert head.inter == "q-boundary" and isinstance(head.pattern_for("video"), Grid), head
        assert not isinstance(head.pattern_for("text"), Grid)
    assert result.patterns[3].intra == (("*", Dense()),)
    assert (result.head_recall >= 0.95).all() and (result.head_density[:3] < 0.2).all()
    torch.testing.assert_close(result.out, reference(q, k, v, result.indexes, 0.125), atol=2e-5, rtol=2e-5)


def scattered_keys(n=2048, seed=0):
    """Each query attends to one random key of the first half, a different one per row: columns
    taken from the last queries serve those rows only."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(1, 1, n, 64, generator=g)
    k = k / k.norm(dim=-1, keepdim=True)
    target = (torch.rand(n, generator=g) * n / 2).long()
    q = torch.randn(1, 2, n, 64, generator=g) * 0.1 + 112 * k[0, 0, target]
    return q, k, torch.randn(1, 1, n, 64, generator=g)


def test_structure_no_candidate_expresses_runs_dense():
    """The estimation rows alone would say VS keeps ~99% (their own targets become columns); the
    held-out rows say about a third (spread over every row: an early row's local blocks often hold
    its target), so the heads run dense and exactly."""
    q, k, v = scattered_keys()
    n = q.shape[2]
    ctx = forward_context(None, n, 1, "cpu", 64, 64)
    fitted = [HeadPattern("none", (("*", VerticalSlash(128, 2)),))] * 2
    measured = layer_attention(q, k, v, ctx, fitted, recall=0.0).head_recall
    assert (measured < 0.5).all(), measured
    result = layer_attention(q, k, v, ctx, density=0.1, recall=0.95)
    assert all(p.intra == (("*", Dense()),) for p in result.patterns)
    dense = masked_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                             torch.ones(n, n, dtype=torch.bool).tril(), 0.125)[0]
    torch.testing.assert_close(result.out, dense.float(), atol=2e-5, rtol=2e-5)


def test_a_head_that_misses_runs_its_fallback_before_dense(monkeypatch):
    """The diagonal block alone misses the target on the held-out rows; the policy's
    fallback (the same family at the cap) is measured next and kept when it reaches the target;
    a head whose fallback misses too runs dense. Where the stage could save less dense work than
    it costs (``check.STAGE_PAIRS``: two heads at 2K), both heads run dense at once, untried."""
    import mmcompile.patterns.check as check
    import mmcompile.patterns.policy as policy
    from mmcompile.patterns.specs import AShape

    layout = standard_layout("video", 2048)
    q, k, v, _ = planted_qkv(layout, 2, 1, 64, kinds=["a-shape", "random"], seed=1)
    narrow, wide = HeadPattern("none", (("*", AShape(0, 0)),)), HeadPattern("none", (("*", AShape(128, 1024)),))
    monkeypatch.setattr(policy, "patterns_from_tables", lambda *a, **kw: ([narrow, narrow], {0: (wide,), 1: (wide,)}))
    ctx = forward_context(layout, layout.length, 1, "cpu", 64, 64)
    ctx = dataclasses.replace(ctx, modality=None, present={})  # one row set: both heads judged on all rows
    untried = layer_attention(q, k, v, ctx, density=0.1, recall=0.95)
    assert all(p.intra == (("*", Dense()),) for p in untried.patterns)
    torch.testing.assert_close(untried.out, reference(q, k, v, untried.indexes, 0.125), atol=2e-5, rtol=2e-5)
    monkeypatch.setattr(check, "STAGE_PAIRS", 0.0)  # a stage costs nothing: always worth trying
    result = layer_attention(q, k, v, ctx, density=0.1, recall=0.95)
    assert result.patterns[0] == wide and result.head_recall[0] >= 0.95
    assert result.patterns[1].intra == (("*", Dense()),)
    torch.testing.assert_close(result.out, reference(q, k, v, result.indexes, 0.125), atol=2e-5, rtol=2e-5)


def test_rows_that_miss_their_first_fallback_try_grid_before_dense(monkeypatch):
    """The fallbacks are tried in turn on the rows that miss: a boundary head's video rows (lines at
    the frame phase, a local band) miss with a small VS and with its first fallback (0.52-0.57 of
    the mass at 2K), and Grid with its band keeps them (0.999), so they run Grid, not dense; the
    output is the reference of the launches that ran."""
    import mmcompile.patterns.check as check
    import mmcompile.patterns.policy as policy
    from mmcompile.patterns.specs import AShape

    monkeypatch.setattr(check, "STAGE_PAIRS", 0.0)  # at 2K no stage would be worth its cost
    layout = standard_layout("video", 2048)
    q, k, v, _ = planted_qkv(layout, 2, 1, 64, kinds=["boundary", "boundary"], seed=1)

    def head(video):
        return HeadPattern("q-boundary", (("text", AShape(128, 1024)), ("video", video)))

    grid = Grid(local_frames=2, band=128)
    stages = (head(VerticalSlash(32, 1)), head(grid))
    monkeypatch.setattr(policy, "patterns_from_tables",
                        lambda *a, **kw: ([head(VerticalSlash(16, 1))] * 2, {0: stages, 1: stages}))
    ctx = forward_context(layout, layout.length, 1, "cpu", 64, 64)
    result = layer_attention(q, k, v, ctx, density=0.1, recall=0.95)
    assert all(h.pattern_for("video") == grid for h in result.patterns), result.patterns
    assert (result.head_recall >= 0.95).all() and (result.head_error <= 0.05).all()
    torch.testing.assert_close(result.out, reference(q, k, v, result.indexes, 0.125), atol=2e-5, rtol=2e-5)


def test_a_fallback_stage_is_tried_where_it_can_save_more_dense_work_than_it_costs():
    """``check.stage_pays``: one head's rows at 128K (8.6e9 causal pairs, ~7.5 ms dense on an H100)
    save less than a stage costs (~9 ms); two heads, or one at 256K, save more. A row set counts
    its share of the causal pairs."""
    from mmcompile.patterns.check import STAGE_PAIRS, stage_pays

    def ctx_of(n):
        return forward_context(standard_layout("video", n), n, 1, "cpu", 128, 64)

    at_128k, at_256k = ctx_of(131072), ctx_of(262144)
    assert STAGE_PAIRS > 0
    assert not stage_pays({3: ["text", "video"]}, at_128k, 0.1)
    assert stage_pays({3: ["text", "video"], 5: ["video"]}, at_128k, 0.1)
    assert stage_pays({3: ["*"]}, at_256k, 0.1)
    assert not stage_pays({3: ["text"], 5: ["text"]}, at_256k, 0.1)  # the question: under 1% of the pairs


def test_grid_must_leave_out_less_than_a_shape_and_vs_may():
    """``policy.grid_target``: at the policy's target 0.97 a Grid must keep 0.985; one predicted at
    0.975 loses to a costlier VS at 0.97, one at 0.99 wins, and the record keeps Grid's own recall."""
    from mmcompile.patterns import policy

    def curves(grid_recall):
        one = torch.ones(1)
        return policy._Curves(a_recall=one * 0.9, a_cost=one * 100, a_local=one, v_recall=one * 0.97,
                              v_cost=one * 500, v_cols=one, v_blocks=one, g_recall=one * grid_recall,
                              g_cost=one * 200, g_local=one, g_band=one * 0)
    assert policy.grid_target(0.97) == pytest.approx(0.985)
    recall, names, _ = policy._online_pick(curves(0.975), 0.97)
    assert names.item() == 1 and recall.item() == pytest.approx(0.97)  # VS
    recall, names, _ = policy._online_pick(curves(0.99), 0.97)
    assert names.item() == 2 and recall.item() == pytest.approx(0.99)  # Grid, at its own prediction
