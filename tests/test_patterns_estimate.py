"""line_scores (chunked, skewed or gathered) equals sums of the plain last-query softmax."""

import pytest
import torch

from mmcompile.patterns.estimate import held_out_queries, last_queries, last_query_probs, line_scores, row_step


def reference_lines(probs, pos, valid):
    """Per-row loops over the reference softmax: column sums and diagonal sums of valid rows."""
    batch, heads, rows, n = probs.shape
    vertical = torch.zeros(batch, heads, n)
    slash = torch.zeros(batch, heads, n)
    for b in range(batch):
        for r in range(rows):
            if not valid[b, r]:
                continue
            p = int(pos[b, r])
            vertical[b] += probs[b, :, r]
            slash[b, :, :p + 1] += probs[b, :, r, :p + 1].flip(-1)  # offset o = p - key
    return vertical, slash


def _inputs(n, heads_q=4, heads_kv=2, d=16, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads_q, n, d, generator=g)
    k = torch.randn(batch, heads_kv, n, d, generator=g)
    return q, k


KERNEL = [pytest.param(False, id="pytorch"), pytest.param(True, id="triton", marks=pytest.mark.interpreter)]


@pytest.mark.parametrize("use_kernel", KERNEL)
@pytest.mark.parametrize("step", [1, 2, 0], ids=["consecutive", "spread", "irregular"])
@pytest.mark.parametrize("block_n", [32, 256])  # the kernel sums blocks that divide its key tile itself
def test_line_scores_equal_reference_sums(step, use_kernel, block_n):
    n = 200
    q, k = _inputs(n)
    # Every token: the last 24 (step 1) or every other of the last 48 (step 2, the default);
    # modality 2: none in sample 0, in sample 1 rows ending earlier with a gap (irregular).
    modality = torch.zeros(2, n, dtype=torch.int32)
    modality[1, 150:170] = 2
    modality[1, 100:110] = 2
    pos, valid = last_queries(modality, n, 2, want=2 if step == 0 else None, last_q=24, step=max(step, 1))
    assert row_step(pos, valid) == step
    start = int(pos.min())
    lines = line_scores(q, k, pos, valid, 0.25, start=start, step=step, use_kernel=use_kernel, block_n=block_n)
    probs = last_query_probs(q, k, pos, valid, 0.25)
    vertical, slash = reference_lines(probs, pos, valid)
    torch.testing.assert_close(lines.vertical, vertical, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lines.slash, slash, rtol=1e-5, atol=1e-6)
    key_blocks = -(-n // block_n)
    per_block = torch.nn.functional.pad(probs, (0, key_blocks * block_n - n)).view(2, 4, 24, key_blocks, block_n).sum(-1)
    rows = valid[:, None, :].expand(2, 4, 24)  # the reference holds garbage for rows that do not exist
    torch.testing.assert_close(lines.blocks[rows], per_block[rows], rtol=1e-5, atol=1e-6)
    scores = q.gather(2, pos[:, None, :, None].expand(2, 4, 24, 16)) @ k.repeat_interleave(2, 1).transpose(-1, -2)
    scores = (scores * 0.25).masked_fill(torch.arange(n)[None, None, :] > pos[:, None, :, None], float("-inf"))
    live = valid[:, None, :].expand(2, 4, 24)
    torch.testing.assert_close(lines.lse[live], scores.logsumexp(-1)[live], rtol=1e-5, atol=1e-5)


def test_estimation_rows_sit_at_every_place_of_a_query_block_and_held_out_rows_before_them():
    """Every other row of the last 128 of a set at least 256 long: one of each pair of in-block
    places of a 128-row query block (the last 64 were its second half only); a shorter set keeps
    its last 64. Held-out rows stay before the rows the estimate spans, spread over all of them."""
    n = 1000
    modality = torch.zeros(2, n, dtype=torch.int32)
    modality[0, 700:] = 2  # 300 rows: spread
    modality[1, 800:] = 2  # 200 rows: consecutive
    pos, valid = last_queries(modality, n, 2, want=2)
    assert valid.all() and row_step(pos[:1], valid[:1]) == 2 and row_step(pos[1:], valid[1:]) == 1
    assert pos[0].tolist() == list(range(999, 871, -2)) and pos[1].tolist() == list(range(999, 935, -1))
    assert sorted((pos[0] % 128 // 2).tolist()) == list(range(64))
    held, held_valid = held_out_queries(modality, n, 2, want=2)
    assert held_valid.any(-1).all()
    assert (held[0][held_valid[0]] < 872).all() and (held[1][held_valid[1]] < 936).all()
    # over every row before them, not their later half: an earlier part of the prompt may differ
    assert held[0][held_valid[0]].min() < 702 and held[0][held_valid[0]].max() > 868
    assert held_valid.sum(-1).tolist() == [128, 128] and held[0][held_valid[0]].unique().numel() == 128
    assert last_queries(None, n, 1)[0][0, :3].tolist() == [999, 997, 995]


def test_held_out_rows_of_short_sets_are_each_row_once_and_none_without_rows_to_spare():
    """A set with fewer rows before its estimation rows than held-out slots lists each once; a
    set the estimation rows take whole, or an absent one, has no valid held-out row."""
    n = 400
    modality = torch.zeros(3, n, dtype=torch.int32)
    modality[0, 300:] = 2  # 100 rows: the last 64 estimate, 36 remain
    modality[1, 350:] = 2  # 50 rows: all estimation rows
    held, valid = held_out_queries(modality, n, 3, want=2)
    assert held[0][valid[0]].tolist() == list(range(300, 336))
    assert not valid[1].any() and not valid[2].any()


@pytest.mark.parametrize("use_kernel", KERNEL)
def test_line_scores_with_missing_rows_and_key_padding(use_kernel):
    n = 96
    q, k = _inputs(n, batch=2, seed=1)
    modality = torch.zeros(2, n, dtype=torch.int32)
    modality[0, :10] = -1  # left padding
    modality[1, 40:45] = 2  # only 5 video rows: the other 11 estimation rows do not exist
    for want in (None, 2):
        pos, valid = last_queries(modality, n, 2, want=want, last_q=16)
        key_pad = modality == -1
        lines = line_scores(q, k, pos, valid, 0.3, key_pad=key_pad, start=int(pos.min()), step=row_step(pos, valid),
                            use_kernel=use_kernel)
        vertical, slash = reference_lines(last_query_probs(q, k, pos, valid, 0.3, key_pad), pos, valid)
        torch.testing.assert_close(lines.vertical, vertical, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lines.slash, slash, rtol=1e-5, atol=1e-6)
        assert torch.isfinite(lines.vertical).all() and torch.isfinite(lines.slash).all()


@pytest.mark.parametrize("use_kernel", KERNEL)
def test_line_scores_in_head_chunks_equal_all_at_once(use_kernel, monkeypatch):
    """Bounded memory (1M tokens: one head's probabilities are 256 MiB): chunks of query heads,
    here 2 of a KV group of 3, give the scores all heads at once give. (Rows read as
    irregular: the kernel sums regular rows' slashes without any probabilities in memory.)"""
    from mmcompile.patterns import line_scores_kernel

    n = 150
    q, k = _inputs(n, heads_q=6, heads_kv=2)
    pos, valid = last_queries(None, n, 2, last_q=16)
    whole = line_scores(q, k, pos, valid, 0.25, step=0, use_kernel=use_kernel)
    budget = 2 * 16 * n * 4 * (1 if use_kernel else 4)  # the PyTorch path takes a quarter
    monkeypatch.setattr(line_scores_kernel, "MAX_PROBS_BYTES", budget)
    chunked = line_scores(q, k, pos, valid, 0.25, step=0, use_kernel=use_kernel)
    for name in ("vertical", "slash", "lse"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), rtol=1e-6, atol=1e-7)


def test_kernel_sums_refuse_what_they_cannot_make():
    """The skewed slash sums take rows spanning less than one key tile; fused block sums need a block size
    dividing the key tile. Both say so before any launch (``line_scores`` never asks them for it)."""
    from mmcompile.patterns import line_scores_kernel as lsk

    n = 300
    q, k = _inputs(n)
    too_many = torch.arange(n - 1, n - 1 - (lsk.BLOCK_K + 1), -1)[None].expand(2, -1)
    vertical = torch.empty(2, 4, n)
    with pytest.raises(ValueError, match="spanning under 128 positions"):
        lsk.line_skew_sums(q, k, too_many, torch.ones_like(too_many, dtype=torch.bool), 0.25, None, slice(0, 4),
                           vertical)
    too_wide = torch.arange(n - 1, n - 1 - 2 * 65, -2)[None].expand(2, -1)  # 65 rows 2 apart: 129 positions
    with pytest.raises(ValueError, match="spanning under 128 positions"):
        lsk.line_skew_sums(q, k, too_wide, torch.ones_like(too_wide, dtype=torch.bool), 0.25, None, slice(0, 4),
                           vertical, step=2)
    pos, valid = last_queries(None, n, 2, last_q=8)
    blocks = torch.empty(2, 4, 8, -(-n // 48))
    with pytest.raises(ValueError, match="block sums of 48 keys"):
        lsk.line_probs(q, k, pos, valid, 0.25, None, slice(0, 4), n, vertical, blocks, 48)
