"""Each pattern's SparseIndex equals a brute-force mask built from the pattern's definition."""

import torch

from mmcompile.kernels import index_to_mask
from mmcompile.patterns import AShape, Grid, VerticalSlash
from mmcompile.patterns import intra
from mmcompile.patterns.index_builder import build_index
from mmcompile.patterns.estimate import last_queries, last_query_probs

BM, BN = 64, 32


def causal(n):
    return torch.ones(n, n, dtype=torch.bool).tril()


def diag_blocks(n):
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (j // BM == i // BM) & (j <= i)


def test_a_shape_index_is_sink_plus_local_blocks():
    n, sink, local = 300, 40, 70
    index = build_index([(None, intra.a_shape_sets(AShape(sink, local), 1, 2, n, BN, "cpu"))], n, n, BM, BN)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    jb, start = j // BN, (i // BM) * BM // BN  # key block, first key block of the row's diagonal
    brute = (jb < -(-sink // BN)) | ((jb >= start - (-(-local // BN))) & (jb < start))
    brute = (brute | diag_blocks(n)) & causal(n)
    assert torch.equal(index_to_mask(index, n, n)[0, 0], brute)
    assert torch.equal(index_to_mask(index, n, n)[0, 1], brute)


def test_vertical_slash_index_matches_definition():
    n = 333
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, n, 16, generator=g), torch.randn(1, 1, n, 16, generator=g)
    pos, valid = last_queries(None, n, 1)
    probs = last_query_probs(q, k, pos, valid, 0.25)
    pattern = VerticalSlash(vertical=35, slash=60)
    sets = intra.vertical_slash_sets(pattern, probs, pos, valid, n, BM, BN)
    index = build_index([(None, sets)], n, n, BM, BN)
    mask = index_to_mask(index, n, n)
    # Brute force from the chosen columns and diagonals (recomputed the same way as the estimator).
    vertical = probs.sum(2)
    slash = torch.zeros(1, 2, n)
    for r in range(pos.shape[1]):
        p = int(pos[0, r])
        slash[:, :, :p + 1] += probs[:, :, r, :p + 1].flip(-1)
    vertical[..., :30] = float("inf")
    slash[..., :100] = float("inf")
    for h in range(2):
        cols = vertical[0, h].topk(35).indices
        offs = slash[0, h].topk(60).indices
        brute = diag_blocks(n).clone()
        for m in range(-(-n // BM)):
            rows = torch.arange(m * BM, min(n, (m + 1) * BM))
            blocks = set()
            for o in offs.tolist():
                blocks |= {(r - o) // BN for r in rows.tolist() if r - o >= 0}
            blocks = {b for b in blocks if b < m * BM // BN}
            for b in blocks:
                brute[rows[:, None], torch.arange(b * BN, min(n, (b + 1) * BN))[None, :]] = True
            brute[rows[:, None], cols[None, :]] = True
        assert torch.equal(mask[0, h], brute & causal(n)), h


def test_grid_index_in_slot_space_and_stride_phase_found():
    n, frame, phase = 512, 32, 5
    g = torch.Generator().manual_seed(1)
    d = 16
    u = torch.randn(d, generator=g)
    u /= u.norm()
    q = torch.randn(1, 1, n, d, generator=g) * 0.3 + 4 * u
    k = torch.randn(1, 1, n, d, generator=g) * 0.3
    k[:, :, phase::frame] += 4 * u  # planted vertical lines every frame
    pos, valid = last_queries(None, n, 1)
    probs = last_query_probs(q, k, pos, valid, d ** -0.5)
    frame_stride = torch.tensor([frame], dtype=torch.int32)
    for kind in ("frame", "search"):
        pattern = Grid(stride_kind=kind, vline=True, hline=True, slash=True, local_frames=40, sink=8)
        order, sets = intra.grid_sets(pattern, probs, valid, frame_stride, frame, n, BM, BN)
        positions = order[0, 0].long()
        lines = -(-(n - phase) // frame)
        assert torch.equal(positions[-lines:] % frame, torch.full((lines,), phase))  # phase class last
        index = build_index([(None, sets)], n, n, BM, BN, order=order)
        mask = index_to_mask(index, n, n)[0, 0]
        slot = torch.empty(n, dtype=torch.long)
        slot[positions] = torch.arange(n)
        band = n - (-(-(n - phase) // frame))
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        si, sj = slot[i], slot[j]
        mi = si // BM
        brute = (sj // BM == mi)  # diagonal block in slot space
        brute |= (sj // BN >= mi * BM // BN - 2) & (sj // BN < mi * BM // BN)  # 40 earlier frames: 2 blocks
        brute |= sj // BN >= band // BN  # vertical-line band
        brute |= (mi + 1) * BM > band  # horizontal lines: every key
        brute |= j < 8  # sink columns
        assert torch.equal(mask, brute & causal(n)), kind


def test_block_sparse_index_is_top_k_pooled_blocks():
    from mmcompile.patterns import BlockSparse

    n, top_k = 300, 3
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(1, 2, n, 16, generator=g), torch.randn(1, 1, n, 16, generator=g)
    sets = intra.block_sparse_sets(BlockSparse(top_k), q, k, torch.tensor([0, 0]), n, BM, BN)
    mask = index_to_mask(build_index([(None, sets)], n, n, BM, BN), n, n)
    for h in range(2):
        brute = diag_blocks(n).clone()
        for m in range(-(-n // BM)):
            rows = slice(m * BM, min(n, (m + 1) * BM))
            qm = q[0, h, rows].mean(0)
            earlier = range(m * BM // BN)
            scores = [(qm @ k[0, 0, b * BN:(b + 1) * BN].mean(0)).item() for b in earlier]
            for b in sorted(range(len(scores)), key=lambda b: -scores[b])[:top_k]:
                brute[rows, b * BN:(b + 1) * BN] = True
        assert torch.equal(mask[0, h], brute & causal(n)), h
