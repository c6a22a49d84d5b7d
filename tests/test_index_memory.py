"""Index building in bounded memory (issue 14): what it holds grows like the length, not its
square, and the chunk budget bounds the temporaries. Measured on the CPU from the profiler's
allocation records (``benchmarks/index_memory.py``)."""

import os
import sys

import torch

from mmcompile.patterns import AShape, Dense, Grid, HeadPattern, VerticalSlash, forward_context, index_columns
from mmcompile.patterns import intra
from mmcompile.patterns.estimate import last_queries, line_scores
from mmcompile.patterns.index_builder import build_index
from mmcompile.patterns.layer_index import build_layer_indexes
from mmcompile.patterns.planted import planted_qkv, standard_layout

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from index_memory import cpu_peak, index_bytes  # noqa: E402

# Grid heads with lines both ways (the band and the horizontal rows were lists of every key block),
# a dense modality (the same), VS columns and A-shape.
HEADS = [HeadPattern("none", (("*", Grid(stride_kind="frame", hline=True, local_frames=64, sink=16)),)),
         HeadPattern("q-boundary", (("text", Dense()), ("video", VerticalSlash(64, 4)))),
         HeadPattern("none", (("*", AShape(64, 256)),)),
         HeadPattern("none", (("*", Grid(stride_kind="frame", hline=True, local_frames=32, sink=16)),))]


def _peak(n: int) -> int:
    layout = standard_layout("video", n, frame_hw=(8, 8))
    q, k, _, _ = planted_qkv(layout, 4, 2, 32, "cpu", torch.float32, seed=0)
    ctx = forward_context(layout, n, 1, "cpu", 32, 32)  # small blocks: N^2 / (32 x 32) entries would show
    _, peak, _ = cpu_peak(lambda: build_layer_indexes(q, k, HEADS, ctx))
    return peak


def test_memory_grows_like_the_length():
    """Doubling the length (16K -> 32K tokens) at most ~doubles the peak of estimation and index
    building (measured 1.99x); lists as wide as the key blocks (the previous builder) made it 3.9x."""
    small, large = _peak(16384), _peak(32768)
    assert large < 2.5 * small, (small, large)


def test_chunks_bound_the_temporaries():
    """With shared column rows and a small chunk budget, index building holds its output plus
    temporaries of one chunk (8 heads x 128 query blocks x 180 candidates, built ~1000 at a time,
    hold 4x less than all at once)."""
    n, heads = 8192, 8
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, heads, n, 16, generator=g), torch.randn(1, 1, n, 16, generator=g)
    lines = line_scores(q, k, *last_queries(None, n, 1), 0.25)
    rows = torch.arange(-(-n // 64))[None] % 2 == 0
    entries = [(rows, intra.vertical_slash_sets([VerticalSlash(300, 100)] * heads, lines, n, 64, 32)),
               (~rows, intra.vertical_slash_sets([VerticalSlash(200, 80)] * heads, lines, n, 64, 32))]
    temporaries = {}
    for budget in (1 << 12, 1 << 30):  # a few query blocks per chunk; everything at once
        index, peak, _ = cpu_peak(lambda: build_index(entries, n, n, 64, 32, max_entries=budget, shared_columns=True))
        temporaries[budget] = peak - index_bytes([(None, index)])
    assert index.column_row is not None and index_bytes([(None, index)]) < 2 ** 20
    assert temporaries[1 << 12] < temporaries[1 << 30] / 4, temporaries


def test_shared_rows_beyond_the_list_budget(monkeypatch):
    """Column lists of a launch past ``COLUMN_LIST_BYTES`` become shared rows: [B, H, 2^E, C], not
    [B, H, M, C]."""
    n, heads = 2048, 2
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, heads, n, 16, generator=g), torch.randn(1, 1, n, 16, generator=g)
    lines = line_scores(q, k, *last_queries(None, n, 1), 0.25)
    entries = [(None, intra.vertical_slash_sets([VerticalSlash(100, 3)] * heads, lines, n, 64, 32))]
    assert build_index(entries, n, n, 64, 32).column_row is None
    monkeypatch.setattr(index_columns, "COLUMN_LIST_BYTES", 1000)
    index = build_index(entries, n, n, 64, 32)
    assert index.column_row is not None and tuple(index.column_index.shape[:3]) == (1, heads, 2)
