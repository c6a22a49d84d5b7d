"""Honest estimates (issue 11): the recall the policy predicts for A-shape and vertical-slash is
the recall of the index the builder then builds, on the estimation rows, to float rounding.

Independent side: the dense softmax of the estimation rows (``last_query_probs``) summed over the
keys the built index visits for each row (``fidelity.layer_row_masks``, from the index tensors).
"""

from __future__ import annotations

import pytest
import torch

from mmcompile.patterns import forward_context, intra, policy, row_recall
from mmcompile.patterns.estimates import Estimates
from mmcompile.patterns.layer_index import build_layer_indexes
from mmcompile.patterns.estimate import last_query_probs, line_scores
from mmcompile.patterns.families import family_layout, family_qkv
from mmcompile.patterns.fidelity import layer_row_masks
from mmcompile.patterns.index_builder import BlockSets, build_index
from mmcompile.patterns.specs import AShape, Dense, VerticalSlash

N = 4096


def _exact(q, k, ctx, scale, indexes, rows_name):
    """[H]: recall of the built launches on one row set's estimation rows (batch 0)."""
    pos, valid = ctx.last_rows[rows_name][:2]
    rows = pos[0][valid[0]]
    masks = layer_row_masks(indexes, rows, ctx.n, q.shape[1]).float()
    probs = last_query_probs(q, k, rows[None], torch.ones_like(rows[None], dtype=torch.bool), scale, ctx.key_pad)[0]
    return (probs * masks).sum(-1).mean(-1)


@pytest.mark.parametrize("family,layout,block", [("sink-local", "video", (128, 64)),
                                                 ("vertical-phase", "video", (64, 64)),
                                                 ("grid-decay", "mixed", (64, 64)),
                                                 ("q-boundary", "mixed", (128, 64))])
def test_predicted_recall_is_the_built_index_recall_on_the_estimation_rows(family, layout, block):
    """Per head and row set: equal where every query block of the rows holds one modality (a
    video-only input), never above where a block mixes modalities (it visits both sets)."""
    lay = family_layout(layout, N, seed=1)
    q, k, _ = family_qkv(family, lay, 8, 2, 64, seed=1)[:3]
    if layout == "video":
        lay = None  # one row set over the whole input
    scale = 64 ** -0.5
    ctx = forward_context(lay, N, 1, "cpu", *block)
    estimates = Estimates(q, k, ctx, scale)
    picks = policy.read_tables(policy.choice_tables(estimates, ctx, 0.1, policy.TARGET), ctx)
    patterns, _ = policy.patterns_from_tables(picks, ctx, policy.MIN_RECALL, 0.1)
    indexes = build_layer_indexes(q, k, patterns, ctx, scale, estimates)
    checked = 0
    for name in ctx.row_sets():
        exact = _exact(q, k, ctx, scale, indexes, name)
        for h, pattern in enumerate(picks[name][1]):
            if not isinstance(pattern, (AShape, VerticalSlash)) or isinstance(patterns[h].intra[0][1], Dense):
                continue  # predicted under min_recall: run dense
            predicted = picks[name][0][h]
            if lay is None:
                assert predicted == pytest.approx(float(exact[h]), abs=2e-5), (name, h, pattern)
            else:
                assert predicted <= float(exact[h]) + 2e-5, (name, h, pattern)
            checked += 1
    assert checked >= 4


def _lines(n=700, block_n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 4, n, 16, generator=g), torch.randn(2, 2, n, 16, generator=g)
    q[..., :5, :] *= 4  # some structure: heavy early keys
    pos = torch.stack([torch.arange(n - 1, n - 17, -1), torch.arange(n - 301, n - 317, -1)])  # two query blocks
    valid = torch.ones_like(pos, dtype=torch.bool)
    valid[1, -3:] = False
    return q, k, pos, valid, line_scores(q, k, pos, valid, 0.25, block_n=block_n)


def _recall(q, k, lines, sets, n, block_m, block_n):
    """[B, H]: recall on the rows of ``lines`` of the index built from ``sets`` (brute force)."""
    from mmcompile.patterns.fidelity import index_row_mask

    out = torch.zeros(lines.pos.shape[0], q.shape[1])
    for b in range(lines.pos.shape[0]):
        rows = lines.pos[b][lines.valid[b]]
        probs = last_query_probs(q[b:b + 1], k[b:b + 1], rows[None], torch.ones_like(rows[None], dtype=torch.bool),
                                 0.25)[0]
        single = build_index([(None, BlockSets(*(t[b:b + 1] if isinstance(t, torch.Tensor) else t
                                                 for t in (sets.relative, sets.absolute, sets.columns))))],
                             n, n, block_m, block_n)
        out[b] = (probs * index_row_mask(single, rows, n).float()).sum(-1).mean(-1)
    return out


@pytest.mark.parametrize("block_m", [32, 64])
def test_curves_equal_brute_force_at_every_size(block_m):
    """Every A-shape window and several VS (columns, blocks) steps, two samples whose rows lie in
    different query blocks, a missing row: the curves equal the brute-force recall."""
    n, block_n = 700, 32
    q, k, pos, valid, lines = _lines(n, block_n)
    curve = row_recall.a_shape_curve(lines, 2, 22, block_m, block_n)
    for t in (1, 3, 6, 22):  # 22: the window reaches the sink blocks (counted once)
        sets = intra.a_shape_sets([AShape(64, t * block_n)] * 4, 2, n, block_n, "cpu")
        torch.testing.assert_close(curve[..., t - 1], _recall(q, k, lines, sets, n, block_m, block_n),
                                   atol=2e-6, rtol=0)
    g = torch.Generator().manual_seed(1)
    order = torch.stack([torch.randperm(-(-n // block_n), generator=g) for _ in range(8)]).view(2, 4, -1)
    columns = torch.stack([torch.randperm(n, generator=g)[:40] for _ in range(8)]).view(2, 4, -1)
    from mmcompile.patterns.estimate import column_probs

    probs = column_probs(q, k, lines, [0, 1, 2, 3], columns, 0.25)
    curves = row_recall.vs_curves(lines, order, probs, columns, [10, 40], 5, 2, block_m, block_n)
    for step, count in enumerate((10, 40)):
        for j in (0, 1, 4):
            blocks = max(j + 1, 2)
            sets = BlockSets(-1 - order[..., :blocks], torch.empty(2, 4, 0, dtype=torch.long), columns[..., :count])
            torch.testing.assert_close(curves[:, :, step, j], _recall(q, k, lines, sets, n, block_m, block_n),
                                       atol=2e-6, rtol=0)


def test_inputs_shorter_than_the_forced_blocks():
    """54 tokens: one key block, fewer than VS's forced blocks (the builder takes what there is)."""
    n = 54
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, n, 16, generator=g), torch.randn(1, 2, n, 16, generator=g)
    ctx = forward_context(None, n, 1, "cpu", 128, 64)
    estimates = Estimates(q, k, ctx, 0.25)
    picks = policy.read_tables(policy.choice_tables(estimates, ctx, 0.1, policy.TARGET), ctx)
    patterns, _ = policy.patterns_from_tables(picks, ctx, 0.0, 0.1)  # min_recall 0: nothing sent dense
    exact = _exact(q, k, ctx, 0.25, build_layer_indexes(q, k, patterns, ctx, 0.25, estimates), "*")
    torch.testing.assert_close(torch.tensor(picks["*"][0]), exact, atol=2e-5, rtol=0)


def test_head_fidelity_without_an_output_measures_the_output_the_masks_give():
    """``head_fidelity(out=None)`` (what ``benchmarks/heldout_probe.py`` reads) equals the metrics of
    the output that attention restricted to the masks writes, a row whose mask keeps nothing
    included (its output 0, as the kernel writes for a row that sees no key)."""
    from mmcompile.kernels.reference import masked_attention
    from mmcompile.patterns.fidelity import head_fidelity

    n, rows = 96, torch.tensor([5, 40, 77, 95])
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 4, n, 16, generator=g), torch.randn(1, 2, n, 16, generator=g), \
        torch.randn(1, 2, n, 16, generator=g)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    masks = (torch.rand(4, rows.numel(), n, generator=g) < 0.3) & causal[rows]
    masks[1, 2] = False  # keeps nothing
    full = causal.expand(1, 4, n, n).clone()
    full[0][:, rows] = masks
    out, _ = masked_attention(q, k, v, full)
    want, got = head_fidelity(q, k, v, out, masks, rows), head_fidelity(q, k, v, None, masks, rows)
    for name in ("recall", "rel_err", "cosine"):
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5)
