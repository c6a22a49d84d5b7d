"""The captured estimate and choice (``choice_graph``): a replay must give what the eager path gives.

A CUDA graph cannot be captured on a CPU; the contract it relies on can be checked here with a
stand-in capture that re-runs the function on the static buffers: the buffers hold only k and the
estimation rows of q (the rest NaN), so an estimate that read any other q row, or a fill that
missed something, would change the tables or the indexes built after them.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from mmcompile.patterns import choice_graph, forward_context, layer, policy
from mmcompile.patterns.estimates import Estimates
from mmcompile.patterns.layer_index import build_layer_indexes
from mmcompile.patterns.planted import planted_qkv, standard_layout
from mmcompile.patterns.specs import AShape, Grid, HeadPattern, VerticalSlash

N = 4096
SCALE = 64 ** -0.5


def rerun(fn):
    return fn(), fn


def _choose(ctx, families=None):
    return lambda estimates: policy.choice_tables(estimates, ctx, 0.1, policy.TARGET, families)


def _index_tensors(indexes):
    out = []
    for ids, index in indexes:
        out.append(torch.tensor(ids))
        if index is not None:
            out += [t for t in (getattr(index, f.name) for f in dataclasses.fields(index))
                    if isinstance(t, torch.Tensor)]
    return out


@pytest.mark.parametrize("kind", ["video", "mixed"])
def test_replayed_layers_choose_and_index_as_eager(kind):
    """Three layers (different q, k) through one capture: the same tables, patterns and index
    tensors as the eager path, layer by layer; with a plan's families too."""
    layout = standard_layout(kind, N)
    ctx = forward_context(layout, N, 1, "cpu", 64, 64)
    families = tuple([HeadPattern("q-boundary", (("text", VerticalSlash(64, 2)), ("video", Grid()))),
                      HeadPattern("none", (("*", AShape(64, 256)),))] * 4)
    for plan in (None, families):
        key = ("test", plan)
        for seed in range(3):
            q, k, _, _ = planted_qkv(layout, 8, 2, 64, seed=seed)
            estimates, tables = choice_graph.estimate_and_choose(q, k, ctx, SCALE, _choose(ctx, plan), key,
                                                                 capture=rerun)
            eager = Estimates(q, k, ctx, SCALE)
            expected = _choose(ctx, plan)(eager)
            assert torch.equal(tables, expected), (kind, plan is None, seed)
            picks = policy.patterns_from_tables(policy.read_tables(tables, ctx), ctx, policy.MIN_RECALL, 0.1, plan)
            assert picks == policy.patterns_from_tables(policy.read_tables(expected, ctx), ctx, policy.MIN_RECALL,
                                                        0.1, plan)
            built = build_layer_indexes(q, k, picks[0], ctx, SCALE, estimates)
            want = build_layer_indexes(q, k, picks[0], ctx, SCALE, eager)
            assert all(torch.equal(a, b) for a, b in zip(_index_tensors(built), _index_tensors(want)))
            assert torch.equal(estimates.held_out_lse(), eager.held_out_lse())  # from the real q, not the buffer
        assert isinstance(ctx.replays[key], choice_graph._Replay)


def test_a_batch_of_two_layouts_replays_as_eager():
    """Each sample's own estimation rows are copied (two samples of different layouts, 480 tokens)."""
    from mmcompile.patterns import IMAGE, TEXT, VIDEO, from_segments

    layout = from_segments([[(TEXT, 100), (VIDEO, 192, 8, 8), (TEXT, 60), (VIDEO, 128, 8, 8)],
                            [(TEXT, 30), (IMAGE, 64, 8, 8), (TEXT, 20), (VIDEO, 256, 8, 8), (TEXT, 110)]])
    n = layout.length
    ctx = forward_context(layout, n, 2, "cpu", 64, 64)
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        q, k = torch.randn(2, 4, n, 32, generator=g), torch.randn(2, 2, n, 32, generator=g)
        _, tables = choice_graph.estimate_and_choose(q, k, ctx, 32 ** -0.5, _choose(ctx), "key", capture=rerun)
        assert torch.equal(tables, _choose(ctx)(Estimates(q, k, ctx, 32 ** -0.5)))


def test_the_buffers_hold_only_the_estimation_rows():
    """What the contract is: q's buffer is NaN outside the estimation rows, so the equality above
    would fail for an estimate that read another row."""
    layout = standard_layout("mixed", N)
    ctx = forward_context(layout, N, 1, "cpu", 64, 64)
    q, k, _, _ = planted_qkv(layout, 8, 2, 64, seed=0)
    choice_graph.estimate_and_choose(q, k, ctx, SCALE, _choose(ctx), "key", capture=rerun)
    buffer = ctx.replays["key"].q
    read = torch.zeros(N, dtype=torch.bool)
    read[torch.cat([pos[0] for pos, *_ in ctx.last_rows.values()])] = True
    assert not buffer[0, :, read].isnan().any() and buffer[0, :, ~read].isnan().all()


def test_a_capture_that_fails_runs_eagerly_and_says_so(caplog):
    layout = standard_layout("video", N)
    ctx = forward_context(layout, N, 1, "cpu", 64, 64)
    q, k, _, _ = planted_qkv(layout, 8, 2, 64, seed=0)

    def failing(fn):
        fn()  # the warm-up passes, the capture does not
        raise choice_graph.CaptureFailed("RuntimeError: operation not permitted when stream is capturing")

    choice_graph._ONCE.reset()
    with caplog.at_level(logging.WARNING, logger="mmcompile.patterns.choice_graph"):
        for _ in range(2):
            estimates, tables = choice_graph.estimate_and_choose(q, k, ctx, SCALE, _choose(ctx), "key",
                                                                 capture=failing)
            assert torch.equal(tables, _choose(ctx)(Estimates(q, k, ctx, SCALE)))
    assert ctx.replays["key"] == choice_graph.EAGER
    assert sum("could not be captured" in r.message for r in caplog.records) == 1


def test_an_error_of_the_choice_itself_is_not_a_capture_failure():
    """A plan of the wrong head count fails in the warm-up: that error reaches the caller (the op
    then runs the call dense, as for any error of the sparse path), and nothing is kept."""
    layout = standard_layout("video", N)
    ctx = forward_context(layout, N, 1, "cpu", 64, 64)
    q, k, _, _ = planted_qkv(layout, 8, 2, 64, seed=0)
    wrong = (HeadPattern("none", (("*", AShape(64, 256)),)),) * 3
    with pytest.raises(ValueError, match="3 plan head patterns for 8 query heads"):
        choice_graph.estimate_and_choose(q, k, ctx, SCALE, _choose(ctx, wrong), "key", capture=rerun)
    assert ctx.replays == {}


def test_graphs_stay_off_on_a_cpu():
    assert not choice_graph.graphs_apply(torch.zeros(1, 1, 8, 4))
    layout = standard_layout("video", N)
    ctx = forward_context(layout, N, 1, "cpu", 64, 64)
    q, k, _, _ = planted_qkv(layout, 8, 2, 64, seed=0)
    layer.prepare_layer(q, k, ctx)  # on a CPU: eager, nothing kept
    assert ctx.replays == {}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_graph_replays_equal_eager_on_the_gpu():
    """The real capture: patterns, tables and the op's output equal the eager path's, layer by
    layer, in bf16 at 32K on the planted video+text layout."""
    n = 32768
    layout = standard_layout("mixed", n)
    ctx = forward_context(layout, n, 1, "cuda", 128, 64)
    eager_ctx = forward_context(layout, n, 1, "cuda", 128, 64)
    for seed in range(3):
        q, k, v, _ = planted_qkv(layout, 28, 4, 128, "cuda", torch.bfloat16, seed=seed)
        got = layer.layer_attention(q, k, v, ctx, recall=0.95)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MMINFERENCE_CUDA_GRAPHS", "0")
            want = layer.layer_attention(q, k, v, eager_ctx, recall=0.95)
        assert got.patterns == want.patterns
        assert torch.equal(got.out, want.out), seed
    assert isinstance(next(iter(ctx.replays.values())), choice_graph._Replay) and eager_ctx.replays == {}
