"""Pattern specifications: what a head does (the plan's per-head entry), as frozen dataclasses.

Intra-modality patterns (method.md 1.1-1.4): A-shape, Vertical-Slash, Grid, Block-sparse, Dense.
Inter-modality types (1.5): none / k-boundary (one index for all queries), q-boundary (queries
grouped by modality, each modality's index estimated from its own last queries), 2d-boundary
(queries and keys grouped by modality, one pattern per "query>key" modality pair: boundary2d.py).
"""

from __future__ import annotations

import dataclasses
from typing import Union


@dataclasses.dataclass(frozen=True)
class AShape:
    """Sink keys plus a local window: static, no estimation."""
    sink: int = 128
    local: int = 2048


@dataclasses.dataclass(frozen=True)
class VerticalSlash:
    """From the last-query estimate: the top ``vertical`` key columns, and the ``slash_blocks`` key
    blocks at fixed distances before the diagonal that hold the most diagonal (slash) mass.
    Choosing slashes by block, not by diagonal, makes the cost exact (a block costs the same
    whether it holds one heavy diagonal or a whole local band). With ``lines`` the columns start
    with the grid's vertical lines over all frames (``intra.line_class_scores``)."""
    vertical: int = 1000
    slash_blocks: int = 32
    lines: bool = False  # the video keys of the heaviest phase class modulo the frame stride ranked first


@dataclasses.dataclass(frozen=True)
class Grid:
    """Grid lines with a stride (the frame size, or searched up to ``max_stride``) and a phase found
    online; executed through the permutation that makes the lines contiguous blocks."""
    stride_kind: str = "frame"  # "frame" | "search"
    vline: bool = True
    hline: bool = False
    slash: bool = True
    max_stride: int = 1024
    local_frames: int = 4  # periodic slashes: the same patch in this many earlier frames
    sink: int = 64
    # The row's own frame around it (the in-frame local band, which the grid order scatters): an
    # original-order launch first visits the row's query block and the ``band`` keys before it,
    # and the grid launch continues its softmax without them (``SparseIndex.near_keys``). 0: none.
    band: int = 0


@dataclasses.dataclass(frozen=True)
class BlockSparse:
    """Top-k key blocks per query block from mean-pooled Q and K."""
    top_k: int = 100


@dataclasses.dataclass(frozen=True)
class Dense:
    """Every causal key block."""


Intra = Union[AShape, VerticalSlash, Grid, BlockSparse, Dense]
INTRA_TYPES = {cls.__name__.lower(): cls for cls in (AShape, VerticalSlash, Grid, BlockSparse, Dense)}
INTER_TYPES = ("none", "k-boundary", "q-boundary", "2d-boundary")


@dataclasses.dataclass(frozen=True)
class HeadPattern:
    """One head: its inter-modality type and its intra pattern per query modality ("*" = any).
    ``interchangeable``: the query modalities whose A-shape or Vertical-Slash pattern a plan's
    search found the other family also reaching its target with; sizing a plan for an input
    (``plan_sizes="online"``) then takes the cheaper of the two there, not only the one searched."""
    inter: str = "none"
    intra: tuple = (("*", Dense()),)  # ((modality name or "*", Intra), ...)
    interchangeable: tuple = ()  # (modality name or "*", ...)

    def __post_init__(self):
        if self.inter not in INTER_TYPES:
            raise ValueError(f"unknown inter-modality type {self.inter!r}; known: {INTER_TYPES}")

    def pattern_for(self, modality: str) -> Intra:
        table = dict(self.intra)
        return table.get(modality, table.get("*", Dense()))
