"""2D-Boundary heads: modality-major order, per-pair patterns, one softmax (interpreter)."""

import pytest
import torch

from mmcompile.kernels import index_to_mask
from mmcompile.kernels.reference import dense_attention_reference
from mmcompile.patterns import (IMAGE, TEXT, VIDEO, AShape, Dense, Grid, HeadPattern, VerticalSlash, forward_context,
                                from_segments, layer_attention)
from mmcompile.patterns.boundary2d import modality_major, pair_pattern

from test_patterns_layer import reference

pytestmark = pytest.mark.interpreter

INTERLEAVED = [[(TEXT, 100), (VIDEO, 192, 8, 8), (TEXT, 60), (VIDEO, 128, 8, 8), (TEXT, 40)],
               [(TEXT, 30), (IMAGE, 64, 8, 8), (TEXT, 20), (VIDEO, 256, 8, 8), (TEXT, 150)]]
ISOLATING = HeadPattern("2d-boundary", (("text>text", AShape(16, 64)), ("video>video", AShape(16, 64)),
                                        ("video>text", AShape(16, 32)), ("text>video", AShape(0, 0)),
                                        ("image>image", AShape(16, 64)), ("image>text", AShape(0, 0)),
                                        ("text>image", AShape(0, 0)), ("video>image", AShape(0, 0)),
                                        ("image>video", AShape(0, 0))))


def _qkv(n, batch=1, heads=(4, 2, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, h, n, 32, generator=g) for h in heads)


def test_modality_major_order_groups_modalities_stably():
    layout = from_segments(INTERLEAVED)
    order, keys, start, end = modality_major(layout.modality)
    for b in range(2):
        mods = layout.modality[b, order[b].long()]
        assert (mods[1:] >= mods[:-1]).all()  # grouped by modality id
        for mid in (TEXT, IMAGE, VIDEO):
            slots = order[b, start[b, mid]:end[b, mid]]
            assert (layout.modality[b, slots.long()] == mid).all() and (slots[1:] > slots[:-1]).all()


def test_all_dense_pairs_equal_dense_attention():
    layout = from_segments(INTERLEAVED[:1])
    n = layout.length
    q, k, v = _qkv(n)
    head = HeadPattern("2d-boundary", ())  # every pair left out: Dense
    out = layer_attention(q, k, v, forward_context(layout, n, 1, "cpu", 64, 64), [head] * 4).out
    ref, _ = dense_attention_reference(q, k, v)
    assert ((out - ref).norm() / ref.norm()) < 2e-5


def test_pairs_visit_their_keys_and_isolate_dropped_pairs():
    layout = from_segments(INTERLEAVED)
    n = layout.length
    q, k, v = _qkv(n, batch=2)
    ctx = forward_context(layout, n, 2, "cpu", 64, 64)
    heads = [ISOLATING, HeadPattern("none", (("*", VerticalSlash(30, 8)),)), ISOLATING, HeadPattern()]
    result = layer_attention(q, k, v, ctx, heads)
    out, indexes = result.out, result.indexes
    ref = reference(q, k, v, indexes)
    assert ((out - ref).norm() / ref.norm()) < 2e-5
    ids, index = next((ids, index) for ids, index in indexes if ids == [0, 2])
    mask = index_to_mask(index, n, n)[:, 0]  # [B, Nq, Nk] in original positions
    order, _, start, end = modality_major(layout.modality)
    for b in range(2):
        mod = layout.modality[b]
        slot_of = order[b].long().argsort()
        for i in range(n):
            seen = mask[b, i]
            same = (mod == mod[i]).nonzero()[:, 0]
            same = same[same <= i]
            assert seen[same[-min(64, len(same)):]].all()  # the local same-modality keys
            assert seen[same[:16]].all()  # the modality's sink
            if mod[i] == VIDEO:  # video>text A-shape: first 16 text keys and the latest 32 before i's block
                text = (mod == TEXT).nonzero()[:, 0]
                assert seen[text[:16]].all()
            if mod[i] == TEXT:  # text>video and text>image dropped: only the query's own slot block spills
                block = slot_of[i] // 64
                spill = (mod != TEXT) & seen
                in_block = (slot_of // 64) == block
                assert not (spill & ~in_block).any(), (b, i)


def test_2d_head_without_a_layout_uses_its_text_pattern():
    n = 300
    q, k, v = _qkv(n)
    from mmcompile.patterns.layer_index import build_layer_indexes
    ctx = forward_context(None, n, 1, "cpu", 64, 64)
    indexes = build_layer_indexes(q, k, [ISOLATING] * 4, ctx)
    plain = build_layer_indexes(q, k, [HeadPattern("none", (("*", AShape(16, 64)),))] * 4, ctx)
    assert torch.equal(index_to_mask(indexes[0][1], n, n), index_to_mask(plain[0][1], n, n))


def test_unsupported_pair_pattern_is_a_clear_error():
    head = HeadPattern("2d-boundary", (("video>video", Grid()),))
    with pytest.raises(ValueError, match="video>video: Grid is not supported"):
        pair_pattern(head, "video", "video")
    assert isinstance(pair_pattern(head, "text", "video"), Dense)


def _with_pairs(**pairs):
    """ISOLATING with some pairs replaced ("video_video" names the pair "video>video")."""
    table = dict(ISOLATING.intra)
    table.update({name.replace("_", ">"): p for name, p in pairs.items()})
    return HeadPattern("2d-boundary", tuple(table.items()))


def test_vertical_slash_pairs_visit_the_estimated_columns_of_their_key_modality():
    """Exact against the reference on the built mask; each video row sees the video keys its
    modality's estimation rows weigh most (up to the row), whatever segment they sit in."""
    from mmcompile.patterns.estimates import Estimates

    layout = from_segments(INTERLEAVED)
    n = layout.length
    q, k, v = _qkv(n, batch=2)
    ctx = forward_context(layout, n, 2, "cpu", 64, 64)
    head = _with_pairs(video_video=VerticalSlash(24, 1), text_video=VerticalSlash(8, 1))
    result = layer_attention(q, k, v, ctx, [head, HeadPattern(), head, HeadPattern("none", (("*", AShape(16, 64)),))])
    ref = reference(q, k, v, result.indexes)
    assert ((result.out - ref).norm() / ref.norm()) < 2e-5
    ids, index = next((ids, index) for ids, index in result.indexes if ids == [0, 2])
    mask = index_to_mask(index, n, n)[:, 0]
    vertical = Estimates(q, k, ctx, 32 ** -0.5).lines("video", [0]).vertical[:, 0]  # [B, N]
    for b in range(2):
        mod = layout.modality[b]
        weighted = torch.where(mod == VIDEO, vertical[b], 0.0)
        top = weighted.topk(24).indices
        top = top[weighted[top] > 0]
        assert top.numel() > 8
        for i in (mod == VIDEO).nonzero()[:, 0].tolist():
            assert mask[b, i, top[top <= i]].all(), (b, i)


def test_estimated_pairs_keep_the_2d_family_that_a_shape_pairs_lose():
    """The planted 2D-Boundary family (video>video lines, text>video frame starts): VS pairs keep
    >= 0.95 of each row set's attention mass; A-shape pairs with a wider band, at a higher cost,
    keep at least 0.1 less of it."""
    from mmcompile.patterns.families import family_layout, family_qkv
    from mmcompile.patterns.estimates import Estimates
    from mmcompile.search.layer_search import sampled_rows
    from mmcompile.search.score import dense_rows, score_candidate

    n = 2048
    layout = family_layout("video", n, 1, frame_tokens=(64, 256))
    q, k, v, _ = family_qkv("2d-boundary", layout, 4, 1, 64, seed=1)
    ctx = forward_context(layout, n, 1, "cpu", 64, 64)
    rows, sets = sampled_rows(ctx, 256, 0)
    dense, estimates = dense_rows(q, k, v, rows, 64 ** -0.5), Estimates(q, k, ctx, 64 ** -0.5)

    def pairs(same, cross):
        return HeadPattern("2d-boundary", (("text>text", AShape(64, 256)), ("video>video", same),
                                           ("video>text", AShape(64, 128)), ("text>video", cross)))
    estimated = score_candidate(q, k, v, ctx, pairs(VerticalSlash(512, 4), VerticalSlash(256, 4)), dense, sets,
                                64 ** -0.5, estimates)
    static = score_candidate(q, k, v, ctx, pairs(AShape(64, 768), AShape(64, 512)), dense, sets, 64 ** -0.5,
                             estimates)
    for rows_of in ("text", "video"):
        (recall, _, cost), (static_recall, _, static_cost) = estimated[rows_of], static[rows_of]
        assert float(recall.min()) >= 0.95, (rows_of, recall)
        assert float(static_recall.mean()) < float(recall.mean()) - 0.1, (rows_of, static_recall, recall)
        assert float(cost.mean()) < float(static_cost.mean()), (rows_of, cost, static_cost)


def test_a_vertical_slash_pair_without_the_estimates_is_a_clear_error():
    from mmcompile.patterns.boundary2d import boundary2d_index

    layout = from_segments(INTERLEAVED[:1])
    ctx = forward_context(layout, layout.length, 1, "cpu", 64, 64)
    with pytest.raises(ValueError, match="video>video: a VerticalSlash pair needs the layer's estimates"):
        boundary2d_index({_with_pairs(video_video=VerticalSlash(24, 1)): [0]}, ctx)
    assert boundary2d_index({ISOLATING: [0]}, ctx).block_count.shape[1] == 1  # static pairs need none
