"""What every layer of one forward needs from the modality layout, computed once per forward
(``forward_context``: the one place that syncs with the host): which query blocks hold which
modality, the estimation and held-out rows of each, each modality's row counts, causal area and
rows in shared query blocks, and per-forward caches the layers fill on first use.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from . import estimate
from .boundary2d import modality_major
from .layout import MODALITY_NAMES, PAD, ModalityLayout, check_layout


DEFAULT_BLOCK = (128, 64)  # query x key tile of sparse indexes: fastest on the H100 (BENCHMARKS.md)


@dataclasses.dataclass(frozen=True)
class ForwardContext:
    """What every layer of one forward needs from the layout, computed once."""
    n: int
    batch: int
    modality: torch.Tensor | None  # int32 [B, N]
    key_pad: torch.Tensor | None  # bool [B, N]
    frame_stride: torch.Tensor  # int32 [B]
    max_frame: int
    present: dict  # modality name -> bool [B, M]: query blocks holding rows of that modality
    last_rows: dict  # "*" or modality name -> (positions [B, L], valid [B, L], earliest position int, row step)
    block_m: int = DEFAULT_BLOCK[0]
    block_n: int = DEFAULT_BLOCK[1]
    row_counts: dict = dataclasses.field(default_factory=dict)  # modality name -> rows per sample (int), when equal
    check_rows: dict = dataclasses.field(default_factory=dict)  # as last_rows: held-out rows (pos, valid)
    # modality name -> the share of the causal (query, key) pairs its rows hold (largest over the batch)
    areas: dict = dataclasses.field(default_factory=dict)
    # modality name -> its rows in query blocks shared with other rows (largest count over the batch)
    shared_rows: dict = dataclasses.field(default_factory=dict)
    # choice_graph's captures, per key; not an init field, so a dataclasses.replace() starts without them
    replays: dict = dataclasses.field(default_factory=dict, init=False, compare=False, repr=False)

    def equal_rows(self, name: str) -> bool:
        """Whether every sample has as many rows of modality ``name`` (a launch over one modality's
        rows lists the same number of slots per sample)."""
        return self.modality is not None and self.row_counts.get(name) is not None

    def rows_of(self, name: str) -> torch.Tensor | None:
        """bool [B, N]: the rows of modality ``name`` when ``equal_rows(name)``; else None."""
        return self.modality == modality_id(name) if self.equal_rows(name) else None

    def row_sets(self) -> list[str]:
        """The estimation-row sets the policy chooses from and a layer is judged on: each query
        modality's when there are several (each is estimated apart), else the last rows overall."""
        return list(self.present) if len(self.present) > 1 else ["*"]

    def row_area(self, names) -> float:
        """The share of the causal pairs that the rows of modalities ``names`` hold (what running
        them dense costs, over a dense head)."""
        return sum(self.areas[name] for name in names)

    @functools.cached_property
    def dense_rows(self) -> dict:
        """{modality name, or ("band gap", name): (q_order int32 [B, rows], span int32 [B, M, 2])}:
        the launches over those rows alone (``rows_alone``) of this forward, filled on first use."""
        return {}

    @functools.cached_property
    def band_rows(self) -> dict:
        """{grid row set (None: all rows, or a modality name): int32 [B, N]}: ``rows_alone.grid_band_rows`` of this
        forward, filled on first use (the same for every layer)."""
        return {}

    @functools.cached_property
    def modality_order(self) -> tuple:
        """(order, sort keys, start, end, slot_of): the 2D-Boundary heads' modality-major order
        (``boundary2d.modality_major``) and, per original position, its slot (int64 [B, N]).
        Built on first use, once per forward, not per layer."""
        order, keys, start, end = modality_major(self.modality)
        slot_of = torch.empty_like(order, dtype=torch.long).scatter_(
            1, order.long(), torch.arange(self.n, device=order.device).expand_as(order))
        return order, keys, start, end, slot_of

    @functools.cached_property
    def held_out(self) -> tuple:
        """(pos int64 [B, S * L], valid bool [B, S * L]): the held-out rows (``check_rows``) of the
        S ``row_sets()`` side by side, in that order (each set has L slots, valid or not), so a
        layer measures its recall on all of them with one dense pass and one reduction
        (``verify.held_out_recall``). Built on first use, once per forward, not per layer."""
        names = self.row_sets()
        if len(names) == 1:
            return self.check_rows[names[0]]
        return tuple(torch.cat([self.check_rows[name][i] for name in names], dim=1) for i in range(2))


def forward_context(layout: ModalityLayout | None, n: int, batch: int, device,
                    block_m: int = DEFAULT_BLOCK[0], block_n: int = DEFAULT_BLOCK[1]) -> ForwardContext:
    """Once per forward (the one place that syncs with the host)."""
    if layout is None:
        return ForwardContext(n, batch, None, None, torch.zeros(batch, dtype=torch.int32, device=device), 0,
                              {}, {"*": _last_rows(None, n, batch, None, device)}, block_m, block_n,
                              check_rows={"*": estimate.held_out_queries(None, n, batch, None, device=device)})
    check_layout(layout, n)
    layout = layout.to(device)
    num_m = -(-n // block_m)
    padded = torch.nn.functional.pad(layout.modality, (0, num_m * block_m - n), value=PAD)
    blocks = padded.view(layout.batch, num_m, block_m)
    present = {name: (blocks == mid).any(-1) for mid, name in MODALITY_NAMES.items()
               if bool((layout.modality == mid).any())}
    stride = layout.frame_stride()
    key_pad = layout.modality == PAD
    last_rows = {name: _last_rows(layout.modality, n, layout.batch, None if name == "*" else modality_id(name), device)
                 for name in ["*"] + list(present)}
    weight = torch.arange(1, n + 1, device=device, dtype=torch.float64)  # causal pairs of each row
    def sums_of(mine):  # rows, rows in shared query blocks, causal pairs held: [3, B]
        return torch.stack([mine.sum(-1).double(), (mine & ~in_pure_blocks(mine, block_m)).sum(-1).double(),
                            (mine * weight).sum(-1)])
    sums = torch.stack([sums_of(layout.modality == modality_id(name)) for name in present]).tolist() \
        if present else []  # [modality][rows, shared, pairs][batch]: one host sync
    row_counts = {name: int(c[0]) if len(set(c)) == 1 else None for name, (c, _, _) in zip(present, sums)}
    shared_rows = {name: int(max(c)) for name, (_, c, _) in zip(present, sums)}
    areas = {name: max(a) / (n * (n + 1) / 2) for name, (_, _, a) in zip(present, sums)}
    check_rows = {name: estimate.held_out_queries(layout.modality, n, layout.batch,
                                                  None if name == "*" else modality_id(name), device=device)
                  for name in last_rows}
    return ForwardContext(n, layout.batch, layout.modality, key_pad if bool(key_pad.any()) else None,
                          stride, int(stride.max()) if stride.numel() else 0, present, last_rows, block_m, block_n,
                          row_counts, check_rows, areas, shared_rows)


def _last_rows(modality, n, batch, want, device):
    pos, valid = estimate.last_queries(modality, n, batch, want, device=device)
    return pos, valid, int(pos.min()) if pos.numel() else n, estimate.row_step(pos, valid)


def modality_id(name: str) -> int:
    return {v: k for k, v in MODALITY_NAMES.items()}[name]


def in_pure_blocks(mine: torch.Tensor, block_m: int) -> torch.Tensor:
    """bool [B, N]: the positions in query blocks whose rows are all ``mine`` (the last block's
    padding counts as such)."""
    batch, n = mine.shape
    pure = torch.nn.functional.pad(mine, (0, -n % block_m), value=True).view(batch, -1, block_m).all(-1)
    return pure.repeat_interleave(block_m, 1)[:, :n]
