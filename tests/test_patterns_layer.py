"""layer_attention: kernel output equals the reference of the same indexes, across layouts."""

import pytest
import torch

from mmcompile.kernels import groups_to_mask, index_to_mask
from mmcompile.kernels.reference import masked_attention
from mmcompile.patterns import (IMAGE, TEXT, VIDEO, AShape, BlockSparse, Dense, Grid, HeadPattern, VerticalSlash,
                                forward_context, from_segments, layer_attention)
from mmcompile.patterns.fidelity import index_density, index_row_mask
from mmcompile.patterns.planted import planted_qkv
from mmcompile.patterns.policy import choose_patterns

pytestmark = pytest.mark.interpreter

HEADS = [HeadPattern("none", (("*", AShape(64, 128)),)),
         HeadPattern("none", (("*", VerticalSlash(40, 60)),)),
         HeadPattern("none", (("*", Grid(local_frames=2)),)),
         HeadPattern("q-boundary", (("text", VerticalSlash(30, 50)), ("video", AShape(64, 64)),
                                    ("image", BlockSparse(2))))]

LAYOUTS = {
    "text-only": [[(TEXT, 520)]],
    "only-video": [[(VIDEO, 512, 8, 8)]],
    "interleaved": [[(TEXT, 100), (VIDEO, 192, 8, 8), (TEXT, 60), (VIDEO, 128, 8, 8), (TEXT, 40)]],
    "image+video": [[(TEXT, 30), (IMAGE, 64, 8, 8), (TEXT, 20), (VIDEO, 256, 8, 8), (TEXT, 150)]],
}


def reference(q, k, v, indexes):
    group = q.shape[1] // k.shape[1]
    mask = groups_to_mask(indexes, q.shape[1], q.shape[2], k.shape[2])
    return masked_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), mask)[0]


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layer_matches_reference(name):
    layout = from_segments(LAYOUTS[name])
    n = layout.length
    g = torch.Generator().manual_seed(len(name))
    q, k, v = (torch.randn(1, h, n, 32, generator=g) for h in (4, 2, 2))
    ctx = forward_context(layout, n, 1, "cpu", 64, 64)
    result = layer_attention(q, k, v, ctx, HEADS)
    out, indexes = result.out, result.indexes
    assert sorted(h for ids, _ in indexes for h in ids) == [0, 1, 2, 3]
    ref = reference(q, k, v, indexes)
    assert ((out - ref).norm() / ref.norm()) < 2e-5
    for ids, index in indexes:  # row masks used by the fidelity harness agree with the index
        if index is None:  # dense heads: no index
            continue
        rows = torch.tensor([0, n // 2, n - 1])
        assert torch.equal(index_row_mask(index, rows, n), index_to_mask(index, n, n)[0][:, rows])
        assert (index_density(index, n) > 0).all()


def test_no_layout_is_text_only_and_head_count_checked():
    q, k, v = (torch.randn(1, h, 300, 32) for h in (4, 2, 2))
    ctx = forward_context(None, 300, 1, "cpu", 64, 64)
    out = layer_attention(q, k, v, ctx, HEADS[:2] * 2).out
    assert out.shape == q.shape and not out.isnan().any()
    with pytest.raises(ValueError, match="3 head patterns for 4"):
        layer_attention(q, k, v, ctx, HEADS[:3]).out


def test_policy_keeps_unstructured_heads_dense_and_sparsifies_planted_ones():
    layout = from_segments([[(TEXT, 256), (VIDEO, 2048, 8, 8), (TEXT, 256)]])
    q, k, v, kinds = planted_qkv(layout, 8, 2, 64, kinds=["a-shape", "random", "vertical-slash", "grid"] * 2)
    ctx = forward_context(layout, layout.length, 1, "cpu", 64, 64)
    # 2.5K tokens: a 10% cap is 2 key blocks per row, too few for 32 grid lines plus sink and band.
    chosen = choose_patterns(q, k, ctx, density=0.3)
    for kind, head in zip(kinds, chosen):
        pattern = head.intra[0][1]
        if kind == "random":
            assert isinstance(pattern, Dense)
        else:
            assert not isinstance(pattern, Dense), kind


def test_policy_on_one_modality_weighs_the_grid_and_stays_exact():
    """Video only: one modality, frame stride known, so the grid candidate is scored too; whatever
    is chosen, the layer equals the reference of its own indexes."""
    layout = from_segments([[(VIDEO, 2048, 8, 8)]])
    q, k, v, kinds = planted_qkv(layout, 4, 2, 64, kinds=["grid", "random", "grid", "a-shape"])
    ctx = forward_context(layout, layout.length, 1, "cpu", 64, 64)
    assert ctx.max_frame == 64 and list(ctx.present) == ["video"]
    chosen = choose_patterns(q, k, ctx, density=0.3)
    assert all(head.inter == "none" for head in chosen)
    assert isinstance(chosen[1].intra[0][1], Dense) and not isinstance(chosen[0].intra[0][1], Dense)
    result = layer_attention(q, k, v, ctx, chosen)
    out, indexes = result.out, result.indexes
    torch.testing.assert_close(out, reference(q, k, v, indexes), rtol=1e-4, atol=1e-4)


def _text_video_text(seed):
    """(layout, n, q, k, v, ctx): text, a 512-token video of 8 x 8 frames, text; 4/2 heads, D=32."""
    layout = from_segments([[(TEXT, 100), (VIDEO, 512, 8, 8), (TEXT, 60)]])
    n = layout.length
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, h, n, 32, generator=g) for h in (4, 2, 2))
    return layout, n, q, k, v, forward_context(layout, n, 1, "cpu", 64, 64)


def test_q_boundary_grid_runs_on_its_video_rows_only():
    """A Q-boundary head with Grid for video and VS / A-shape for text: two launches (original
    order, then the video rows alone in the grid order). The output equals the reference of the
    row masks each launch computed, and the grid launch lists exactly the video rows."""
    from mmcompile.patterns.fidelity import layer_row_masks

    layout, n, q, k, v, ctx = _text_video_text(seed=0)
    heads = [HeadPattern("q-boundary", (("text", VerticalSlash(30, 2)), ("video", Grid(local_frames=2)))),
             HeadPattern("none", (("*", AShape(64, 128)),)),
             HeadPattern("q-boundary", (("text", AShape(64, 64)), ("video", Grid(local_frames=70)))),
             HeadPattern("none", (("*", Grid(local_frames=2)),))]
    result = layer_attention(q, k, v, ctx, heads)
    video_rows = (layout.modality[0] == VIDEO).nonzero()[:, 0]
    subset = [index for ids, index in result.indexes if index is not None and index.q_order is not None
              and index.q_order.shape[-1] < n]
    assert len(subset) == 1 and torch.equal(subset[0].q_order[0].sort(-1).values.long(),
                                            video_rows.expand(2, -1))
    masks = layer_row_masks(result.indexes, torch.arange(n), n, 4)
    assert torch.equal(masks[None], groups_to_mask(result.indexes, 4, n, n))  # harness and reference agree
    for h in (0, 2):  # heads sharing one grid call keep their own windows: as if built alone
        alone = [heads[h] if i == h else HeadPattern() for i in range(4)]
        single = layer_attention(q, k, v, ctx, alone).indexes
        assert torch.equal(groups_to_mask(single, 4, n, n)[0, h], masks[h])
    assert not masks[0, video_rows].equal(masks[1, video_rows])  # the grid rows are not the plain ones
    ref, _ = masked_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), masks[None], 32 ** -0.5)
    assert ((result.out - ref).norm() / ref.norm()) < 2e-5


def test_grid_band_rows_continue_their_original_order_launch():
    """Grid with ``band``: an original-order launch visits each grid row's query block and the band
    before it, and the grid launch continues that softmax without those keys. On a Q-boundary head
    the video rows of blocks that mix text and video (their original-order launch also held text's
    sets) are recomputed exactly, every causal key, in a launch of their own after the grid's; on
    an all-rows grid every row has its band. The output is the reference of the union (a key
    counted twice would show), harness and reference agree."""
    from mmcompile.patterns.fidelity import layer_row_masks

    layout, n, q, k, v, ctx = _text_video_text(seed=1)
    heads = [HeadPattern("q-boundary", (("text", VerticalSlash(30, 2)), ("video", Grid(local_frames=2, band=128)))),
             HeadPattern("q-boundary", (("text", AShape(64, 64)), ("video", Grid(local_frames=2)))),
             HeadPattern("none", (("*", Grid(local_frames=2, band=64)),)),
             HeadPattern("none", (("*", AShape(64, 128)),))]
    result = layer_attention(q, k, v, ctx, heads)
    near = [index for _, index in result.indexes if index is not None and index.near_keys is not None]
    assert len(near) == 2 and sorted(int(i.near_keys.max()) for i in near) == [64, 128]
    (subset,) = [index for index in near if index.q_order.shape[-1] < n]
    assert subset.near_keys.tolist() == [128, -1]
    assert subset.near_rows[0, 128:576].eq(1).all() and subset.near_rows[0, 64:128].eq(0).all()  # mixed block
    masks = layer_row_masks(result.indexes, torch.arange(n), n, 4)
    assert torch.equal(masks[None], groups_to_mask(result.indexes, 4, n, n))
    assert masks[0, 400, 256:401].all() and not masks[1, 400, 256:401].all()  # the band, or the grid alone
    assert masks[2, 110, :111].all() and masks[2, 660, 576:661].all()  # all rows: every row its band
    assert masks[0, 110, 0:111].all() and not masks[1, 110, 0:111].all()  # a mixed block's video row: exact
    (gap,) = [(ids, index) for ids, index in result.indexes if index is not None and index.span is not None
              and index.q_order is not None and index.block_count.sum() == 0]
    assert gap[0] == [0] and gap[1].q_order[0, 0].tolist() == list(range(100, 128)) + list(range(576, 612))  # alone
    ref, _ = masked_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), masks[None], 32 ** -0.5)
    assert ((result.out - ref).norm() / ref.norm()) < 2e-5


def test_a_demoted_head_leaves_its_group_s_near_keys_aligned():
    """Demoting one head of a grid group with a band (the record after the check's dense retry)
    takes its ``near_keys`` entry with it: the heads left keep theirs (a stale [H] tensor made the
    128K harness fail and would misread which head continues its softmax)."""
    from mmcompile.patterns import verify
    from mmcompile.patterns.fidelity import layer_row_masks

    _, n, q, k, v, ctx = _text_video_text(seed=1)
    heads = [HeadPattern("q-boundary", (("text", AShape(64, 64)), ("video", Grid(local_frames=2, band=128)))),
             HeadPattern("q-boundary", (("text", AShape(64, 64)), ("video", Grid(local_frames=2)))),
             HeadPattern("none", (("*", AShape(64, 128)),)), HeadPattern("none", (("*", AShape(64, 128)),))]
    result = layer_attention(q, k, v, ctx, heads)
    indexes, _ = verify.demote(result.indexes, result.patterns, [1])
    (grid,) = [index for _, index in indexes if index is not None and index.near_keys is not None]
    assert grid.near_keys.tolist() == [128]
    masks = layer_row_masks(indexes, torch.arange(n), n, 4)
    assert torch.equal(masks[None], groups_to_mask(indexes, 4, n, n))
    assert torch.equal(masks[0], layer_row_masks(result.indexes, torch.arange(n), n, 4)[0])

def test_each_launch_group_is_launched_before_the_next_is_built(monkeypatch):
    """layer_attention interleaves building and launching (dense heads first, then heads of fixed
    sets), so the host builds the next index while the GPU runs the last launch; the output is the
    reference's."""
    from mmcompile.patterns import launch, layer_index

    events = []

    def recording(name, fn):
        def wrapped(*args, **kwargs):
            events.append(name)
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(layer_index, "_plain_index", recording("build plain", layer_index._plain_index))
    monkeypatch.setattr(layer_index, "_grid_index", recording("build grid", layer_index._grid_index))
    monkeypatch.setattr(launch, "sparse_attention_forward", recording("launch sparse", launch.sparse_attention_forward))
    monkeypatch.setattr(launch, "sdpa_heads", recording("launch dense", launch.sdpa_heads))
    _, _, q, k, v, ctx = _text_video_text(seed=1)
    heads = [HeadPattern("q-boundary", (("text", VerticalSlash(30, 2)), ("video", Grid(local_frames=2)))),
             HeadPattern("none", (("*", AShape(64, 128)),)),
             HeadPattern("none", (("*", Dense()),)),
             HeadPattern("none", (("*", VerticalSlash(40, 3)),))]
    result = layer_attention(q, k, v, ctx, heads)
    # Dense, then the A-shape head (no estimate to build from), the VS heads, the grid rows.
    assert events == ["launch dense", "build plain", "launch sparse", "build plain", "launch sparse",
                      "build grid", "launch sparse"]
    assert [ids for ids, _ in result.indexes] == [[2], [1], [0, 3], [0]]
    torch.testing.assert_close(result.out, reference(q, k, v, result.indexes), atol=2e-5, rtol=2e-5)
