"""SparseIndex: the one format every sparse pattern is reduced to before the attention kernel.

Contract (shared by the Triton kernel and the PyTorch reference):

* Queries are processed in *query slots*: slot ``s`` holds the token at original position
  ``q_order[b, h, s]`` (or ``s`` without an order). Query block ``m`` is slots
  ``[m * block_m, (m + 1) * block_m)``. Keys likewise live in *key slots* through ``k_order``.
  Orders are addressing only: Q, K, V and the output stay in original token order in memory.
* ``q_order`` may list fewer slots than there are queries (distinct positions): the launch then
  computes and writes only those rows, so launches of one head with different orders can share an
  output (a Q-boundary head whose video rows run in the grid order). ``k_order`` lists every key.
* Per (batch, query head, query block) the kernel visits
  1. the **diagonal block**: key slots ``[m * block_m + q_offset - k_offset, +block_m)`` clipped to
     ``[0, n_k)``. Always visited, so with a shared (or no) order every row keeps its own key;
  2. ``block_count`` key blocks: key slots ``[block_offset[i], block_offset[i] + block_n)``;
     offsets need not be multiples of ``block_n``;
  3. optionally a **span** (``span[b, h, m] = (lo, hi)``): every key slot of ``[lo, hi)``, in tiles of
     ``block_n`` from ``lo`` up to the diagonal block and from its end on (whole stretches such as
     dense rows or a grid's line band, with no offset list: their capacity would be every key block);
  4. single key columns: ``column_count`` key slots ``column_index[i]`` of the query block's own list
     (row ``m`` of ``column_index`` [B, H, M, C]), or of a **shared row** (below).
  List entries that fall inside the diagonal block or outside ``[0, n_k)`` are ignored, so builders
  may include the diagonal freely. Apart from that, list entries, span and own columns of one query
  block must be distinct keys (the reference raises if a key is listed twice).
* Shared column rows (``column_row`` int32 [B, H, M]): query block ``m`` reads row
  ``column_row[b, h, m]`` of ``column_index`` [B, H, R, C], ascending and padded at its end with
  values ``>= n_k``, so that one row serves every query block of a modality (memory R x C instead of
  M x C: 28 heads x 8192 query blocks x 16384 columns are 15 GB at 1M tokens). It visits the row's
  entries outside its diagonal block, listed blocks and span (those keys are visited once, there)
  and, without orders, before the diagonal block (later ones are all in the future). Block lists
  must then be ascending by offset (the kernel walks both lists in step), and ``column_count`` is the
  number of entries visited (``density`` reads it; the kernel reads the row itself).
* Every visited pair is masked causally in original positions:
  ``k_order[k] + k_offset <= q_order[q] + q_offset``. A row with nothing visible outputs zeros and
  log-sum-exp ``-inf``: never NaN.
* Near keys (``near_keys`` int32 [H] with ``near_rows`` int32 [B, N_q], optional): on the rows
  ``near_rows`` marks (non-zero; by original position) of a head with ``near_keys[h] >= 0``, the
  launch leaves out every key at or after ``(q // block_m) * block_m - near_keys[h]`` (``q`` = the
  row's position + ``q_offset``): its own query block's keys and the ``near_keys[h]`` before them,
  in original positions, which is exactly what an original-order launch of this ``block_m`` with
  no sink and ``near_keys[h]`` local keys visits where nothing else shares the row's block. On
  those rows it continues that earlier launch's softmax from the ``out``/``lse`` it wrote (one
  softmax over both), so a permuted launch (a grid) adds the original-order band it cannot hold.
  Other rows and heads (-1) are as without. Internal launches only: the public op takes no
  ``near_keys``.
* GQA: query head ``h`` reads key/value head ``h // (n_q_heads // n_kv_heads)``. Orders and lists
  are per *query* head.

Shapes are fixed by the maximum list sizes, never by the data, so an index flows through
torch.compile and torch.export without recompiles.
"""

from __future__ import annotations

import dataclasses

import torch

# Block sizes the kernel is compiled for; an index built for another size cannot run.
SUPPORTED_BLOCK_SIZES = (32, 64, 128)


@dataclasses.dataclass(frozen=True)
class SparseIndex:
    """Per (batch, query head, query block) key blocks and key columns, plus optional orders."""

    block_count: torch.Tensor  # int32 [B, H, M]
    block_offset: torch.Tensor  # int32 [B, H, M, max_blocks], key-slot start of each block
    column_count: torch.Tensor  # int32 [B, H, M]
    column_index: torch.Tensor  # int32 [B, H, M, max_columns], key slot of each column
    block_m: int
    block_n: int
    q_order: torch.Tensor | None = None  # int32 [B, H, N_q]: original position of each query slot
    k_order: torch.Tensor | None = None  # int32 [B, H, N_k]: original position of each key slot
    span: torch.Tensor | None = None  # int32 [B, H, M, 2]: key slots [lo, hi) visited whole
    column_row: torch.Tensor | None = None  # int32 [B, H, M]: shared row of column_index read
    near_keys: torch.Tensor | None = None  # int32 [H]: keys an earlier launch visited (-1: none)
    near_rows: torch.Tensor | None = None  # int32 [B, N_q]: rows near_keys applies to (non-zero)

    @property
    def num_query_blocks(self) -> int:
        return self.block_count.shape[2]

    def query_slots(self, n_q: int) -> int:
        """How many query rows the index computes: every row, or the rows ``q_order`` lists."""
        return n_q if self.q_order is None else self.q_order.shape[-1]

    def density(self, n: int) -> torch.Tensor:
        """float32 [B, H]: the (query, key) pairs the kernel evaluates in a prefill of ``n`` tokens
        over the ``n (n + 1) / 2`` causal pairs. The one definition of density in mmcompile.

        Each query block counts its diagonal block's causal triangle, ``block_n`` keys per listed
        block and per tile of its span and one per listed column, for each of its rows. Exact when
        listed entries lie before the diagonal block in original order (what the builders produce);
        with orders it counts evaluated pairs, a few of which the causal test then drops. An index
        of a row subset counts its own rows only (densities of a head's launches add up). Reads
        counts only: O(B H M), on the index's device, no host sync."""
        m = torch.arange(self.num_query_blocks, device=self.block_count.device)
        rows = (self.query_slots(n) - m * self.block_m).clamp(min=0, max=self.block_m).to(torch.float64)
        listed = self.block_count.to(torch.float64) * self.block_n + self.column_count.to(torch.float64)
        if self.span is not None:
            listed = listed + span_tiles(self.span, self.block_m, self.block_n, n).to(torch.float64) * self.block_n
        pairs = (listed * rows).sum(-1) + (rows * (rows + 1) / 2).sum()
        return (pairs / (n * (n + 1) / 2)).to(torch.float32)

    def tensors(self) -> tuple:
        """The index as the flat argument tuple of the ``torch.ops.mminference`` ops."""
        return (self.block_count, self.block_offset, self.column_count, self.column_index,
                self.q_order, self.k_order, self.span, self.column_row, self.block_m, self.block_n)


def diagonal_slots(num_blocks: int, block_m: int, n_k: int, shift: int, device):
    """(lo, hi) int64 [M]: each query block's diagonal block in key slots, clipped to [0, n_k)
    (``shift`` = q_offset - k_offset), as the kernel computes it."""
    m = torch.arange(num_blocks, device=device)
    return (m * block_m + shift).clamp(0, n_k), ((m + 1) * block_m + shift).clamp(0, n_k)


def span_stretches(span: torch.Tensor, block_m: int, n_k: int, shift: int = 0):
    """The two stretches of key slots the kernel walks for each span, ``((lo, min(hi, diag_lo)),
    (max(lo, diag_hi), hi))``, each clipped to ``[0, n_k)`` (int64 [B, H, M] bounds; an empty
    stretch has hi <= lo)."""
    diag_lo, diag_hi = diagonal_slots(span.shape[2], block_m, n_k, shift, span.device)
    lo, hi = span[..., 0].long().clamp(0, n_k), span[..., 1].long().clamp(0, n_k)
    return (lo, torch.minimum(hi, diag_lo)), (torch.maximum(lo, diag_hi), hi)


def block_columns(index: SparseIndex, batch: int, heads, blocks=slice(None)):
    """(columns int64 [..., C], listed bool [..., C]) that query blocks ``blocks`` of ``heads`` read:
    their own list (its first ``column_count`` entries), or their shared row (every entry; the
    kernel skips those that the block's diagonal, listed blocks or span visit anyway, and without
    orders the later ones fail the causal test). For readers of an index: masks, pictures, flex."""
    if index.column_row is None:
        cols = index.column_index[batch][heads, blocks].long()
        count = index.column_count[batch][heads, blocks]
        return cols, torch.arange(cols.shape[-1], device=cols.device) < count[..., None]
    cols = index.column_index[batch][heads, index.column_row[batch][heads, blocks].long()].long()
    return cols, torch.ones_like(cols, dtype=torch.bool)


def span_tiles(span: torch.Tensor, block_m: int, block_n: int, n_k: int, shift: int = 0) -> torch.Tensor:
    """int64 [B, H, M]: tiles of ``block_n`` the kernel visits for each span."""
    return sum(torch.where(hi > lo, (hi - lo + block_n - 1) // block_n, 0)
               for lo, hi in span_stretches(span, block_m, n_k, shift))


def empty_lists(batch: int, heads: int, num_blocks: int, max_blocks: int, max_columns: int,
                device) -> tuple[torch.Tensor, ...]:
    """Zeroed (block_count, block_offset, column_count, column_index) of the given capacities."""
    i32 = dict(dtype=torch.int32, device=device)
    return (torch.zeros(batch, heads, num_blocks, **i32),
            torch.zeros(batch, heads, num_blocks, max(max_blocks, 1), **i32),
            torch.zeros(batch, heads, num_blocks, **i32),
            torch.zeros(batch, heads, num_blocks, max(max_columns, 1), **i32))


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise a ValueError naming the problem if q, k, v cannot go to the attention kernel."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be [batch, heads, seq, head_dim], got shape {tuple(t.shape)}")
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"{name} has dtype {t.dtype}; supported: float16, bfloat16, float32")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    if q.device.type == "meta":
        raise ValueError("q, k, v are meta tensors (no data): the attention kernels need real tensors")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head_dim")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if q.shape[3] > 256:
        raise ValueError(f"head_dim {q.shape[3]} is larger than the supported 256")


def check_index(index: SparseIndex, q: torch.Tensor, k: torch.Tensor, check_values: bool = True) -> None:
    """Raise a ValueError if ``index`` does not fit q and k. ``check_values`` reads the index
    (host syncs, O(capacity log capacity) per query block): counts within capacity, entries in
    range, orders that are permutations, no key listed twice. Off only in the per-layer hot path,
    whose builders produce valid indexes by construction (their tests check them with it on)."""
    batch, heads, n_q = q.shape[0], q.shape[1], q.shape[2]
    n_k = k.shape[2]
    if index.block_m not in SUPPORTED_BLOCK_SIZES or index.block_n not in SUPPORTED_BLOCK_SIZES:
        raise ValueError(f"block sizes ({index.block_m}, {index.block_n}) not in {SUPPORTED_BLOCK_SIZES}")
    if index.q_order is not None and (index.q_order.dim() != 3 or index.q_order.shape[-1] > n_q):
        raise ValueError(f"q_order has shape {tuple(index.q_order.shape)}, expected {(batch, heads)} + "
                         f"(at most {n_q} query slots,)")
    slots = index.query_slots(n_q)
    num_blocks = -(-slots // index.block_m)
    expect = (batch, heads, num_blocks)
    for name in ("block_count", "column_count"):
        t = getattr(index, name)
        if tuple(t.shape) != expect:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {expect} "
                             f"(batch, query heads, ceil({slots} query slots / block_m={index.block_m}))")
    if index.block_offset.dim() != 4 or tuple(index.block_offset.shape[:3]) != expect:
        raise ValueError(f"block_offset has shape {tuple(index.block_offset.shape)}, expected {expect} + (capacity,)")
    rows = expect if index.column_row is None else expect[:2]
    if index.column_index.dim() != 4 or tuple(index.column_index.shape[:len(rows)]) != rows:
        raise ValueError(f"column_index has shape {tuple(index.column_index.shape)}, expected {rows} + "
                         f"{'' if index.column_row is None else '(rows, '}(capacity,)")
    if index.column_row is not None and tuple(index.column_row.shape) != expect:
        raise ValueError(f"column_row has shape {tuple(index.column_row.shape)}, expected {expect}")
    if index.span is not None and tuple(index.span.shape) != expect + (2,):
        raise ValueError(f"span has shape {tuple(index.span.shape)}, expected {expect + (2,)}")
    if (index.near_keys is None) != (index.near_rows is None):
        raise ValueError("near_keys and near_rows come together")
    if index.near_keys is not None and tuple(index.near_keys.shape) != (heads,):
        raise ValueError(f"near_keys has shape {tuple(index.near_keys.shape)}, expected {(heads,)}")
    if index.near_rows is not None and tuple(index.near_rows.shape) != (batch, n_q):
        raise ValueError(f"near_rows has shape {tuple(index.near_rows.shape)}, expected {(batch, n_q)}")
    for name, order, n in (("q_order", index.q_order, slots), ("k_order", index.k_order, n_k)):
        if order is not None and tuple(order.shape) != (batch, heads, n):
            raise ValueError(f"{name} has shape {tuple(order.shape)}, expected {(batch, heads, n)}")
    for name in ("block_count", "block_offset", "column_count", "column_index", "q_order", "k_order", "span",
                 "column_row", "near_keys", "near_rows"):
        t = getattr(index, name)
        if t is None:
            continue
        if t.dtype != torch.int32:
            raise ValueError(f"{name} must be int32, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")
    if not check_values:
        return
    _check_values(index, n_q, n_k)


def _check_values(index: SparseIndex, n_q: int, n_k: int) -> None:
    counts = [("block_count", index.block_count, index.block_offset.shape[-1])]
    if index.column_row is None:
        counts.append(("column_count", index.column_count, index.column_index.shape[-1]))
    for name, count, cap in counts:
        if count.numel() and (int(count.min()) < 0 or int(count.max()) > cap):
            raise ValueError(f"{name} must lie in [0, {cap}], got [{int(count.min())}, {int(count.max())}]")
    if index.span is not None:
        span = index.span.long()
        used = span[..., 1] > span[..., 0]
        if bool((used & ((span[..., 0] < 0) | (span[..., 1] > n_k))).any()):
            raise ValueError(f"span must lie in [0, {n_k}] where it is not empty")
    if index.column_row is not None:
        _check_shared_columns(index, n_k)
    slots = torch.arange(index.block_offset.shape[-1], device=index.block_offset.device)
    used = slots < index.block_count[..., None]
    offsets = index.block_offset[used]
    if offsets.numel() and (int(offsets.min()) < 0 or int(offsets.max()) >= n_k):
        raise ValueError(f"block_offset must lie in [0, {n_k}), got [{int(offsets.min())}, {int(offsets.max())}]")
    if index.column_row is None:
        slots = torch.arange(index.column_index.shape[-1], device=index.column_index.device)
        columns = index.column_index[slots < index.column_count[..., None]]
        if columns.numel() and (int(columns.min()) < 0 or int(columns.max()) >= n_k):
            raise ValueError(f"column_index must lie in [0, {n_k}), got [{int(columns.min())}, {int(columns.max())}]")
    _check_distinct(index, n_k)
    if index.q_order is not None:
        values = index.q_order.sort(dim=-1).values.long()
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= n_q or
                               bool((values[..., 1:] == values[..., :-1]).any())):
            raise ValueError(f"q_order must list distinct positions in 0..{n_q - 1} for every (batch, head)")
    if index.k_order is not None and not torch.equal(
            index.k_order.sort(dim=-1).values.long(), torch.arange(n_k, device=index.k_order.device).expand(index.k_order.shape)):
        raise ValueError(f"k_order must be a permutation of 0..{n_k - 1} for every (batch, head)")


def _check_distinct(index: SparseIndex, n_k: int) -> None:
    """No key slot listed twice for one query block outside its diagonal block (the kernel would
    count it twice): blocks that overlap, a column listed twice, a column inside a listed block.
    Sorted lists and neighbour comparisons: O(capacity log capacity), never O(N) per block."""
    bn, big = index.block_n, n_k + 4 * index.block_n + 4 * index.block_m  # big: an unlisted entry
    m = torch.arange(index.num_query_blocks, device=index.block_count.device)
    diag_lo, diag_hi = (m * index.block_m)[:, None], ((m + 1) * index.block_m)[:, None]

    def outside_diag(lo, hi):  # [lo, hi) is not wholly inside the diagonal block of its query block
        return (lo < diag_lo) | (hi > diag_hi)

    def listed(values, count):
        slots = torch.arange(values.shape[-1], device=values.device)
        return torch.where(slots < count[..., None], values.long(), big).sort(-1).values

    blocks = listed(index.block_offset, index.block_count)
    prev, nxt = blocks[..., :-1], blocks[..., 1:]
    found = [("overlapping key blocks",
              (nxt < big) & (nxt < prev + bn) & outside_diag(nxt, torch.minimum(prev + bn, nxt + bn)))]
    pieces = []
    if index.span is not None:  # its stretches lie outside the diagonal block already
        pieces = [(a[..., None], b[..., None]) for a, b in span_stretches(index.span, index.block_m, n_k)]
        found += [("a key block inside its span", (blocks < big) & (blocks < b) & (blocks + bn > a) & (b > a))
                  for a, b in pieces]
    if index.column_row is None:  # shared rows may hold such columns: the kernel skips them
        columns = listed(index.column_index, index.column_count)
        at = (torch.searchsorted(blocks.contiguous(), columns.contiguous(), right=True) - 1).clamp(min=0)
        start = blocks.gather(-1, at)
        found += [("a key column twice", (columns[..., 1:] < big) & (columns[..., 1:] == columns[..., :-1]) &
                   outside_diag(columns[..., 1:], columns[..., 1:] + 1)),
                  ("a key column inside a listed key block",
                   (columns < big) & (start <= columns) & (columns < start + bn) & outside_diag(columns, columns + 1))]
        found += [("a key column inside its span", (columns >= a) & (columns < b)) for a, b in pieces]
    for what, bad in found:
        if bool(bad.any()):
            b, h, mb = bad.nonzero()[0, :3].tolist()
            raise ValueError(f"index lists {what} for batch {b}, head {h}, query block {mb}: "
                             "entries of one query block must be distinct keys")


def shared_columns(index: SparseIndex, n_k: int, shift: int = 0):
    """For shared column rows: (entries int64 [B, H, M, C] of each query block's row, visited bool
    [B, H, M, C]: outside the diagonal block, the listed blocks and the span, inside ``[0, n_k)``
    and, without orders, before the diagonal). O(M C) memory: for checks and the reference."""
    num_m, width = index.block_count.shape[2], index.column_index.shape[-1]
    entries = index.column_index.long().gather(2, index.column_row.long()[..., None].expand(-1, -1, -1, width))
    lo, hi = diagonal_slots(num_m, index.block_m, n_k, shift, entries.device)
    lo, hi = lo[:, None], hi[:, None]
    visited = (entries >= 0) & (entries < n_k) & ((entries < lo) | (entries >= hi))
    if index.q_order is None and index.k_order is None:
        visited &= entries < lo
    big = n_k + 4 * index.block_n
    listed = torch.arange(index.block_offset.shape[-1], device=entries.device) < index.block_count[..., None]
    starts = torch.where(listed, index.block_offset.long(), big).contiguous()
    at = (torch.searchsorted(starts, entries.contiguous(), right=True) - 1).clamp(min=0)
    first = starts.gather(-1, at)
    visited &= ~((first <= entries) & (entries < first + index.block_n))
    if index.span is not None:
        for a, b in span_stretches(index.span, index.block_m, n_k, shift):
            visited &= ~((entries >= a[..., None]) & (entries < b[..., None]))
    return entries, visited


def _check_shared_columns(index: SparseIndex, n_k: int) -> None:
    rows = index.column_index.shape[2]
    if index.column_row.numel() and (int(index.column_row.min()) < 0 or int(index.column_row.max()) >= rows):
        raise ValueError(f"column_row must lie in [0, {rows})")
    values = index.column_index.long()
    if bool(((values[..., 1:] <= values[..., :-1]) & (values[..., :-1] < n_k)).any()) or bool((values < 0).any()):
        raise ValueError(f"shared column rows must be ascending, distinct, in [0, {n_k}) and padded at their end "
                         f"with values >= {n_k}")
    listed = torch.arange(index.block_offset.shape[-1], device=values.device) < index.block_count[..., None]
    offsets = index.block_offset.long()
    if bool((listed[..., 1:] & (offsets[..., 1:] <= offsets[..., :-1])).any()):
        raise ValueError("with shared column rows, each query block's block offsets must be ascending")
    _, visited = shared_columns(index, n_k)
    if not torch.equal(visited.sum(-1), index.column_count.long()):
        raise ValueError("with shared column rows, column_count must count the row entries each query block "
                         "visits (outside its diagonal block, listed blocks and span; before the diagonal "
                         "without orders)")
