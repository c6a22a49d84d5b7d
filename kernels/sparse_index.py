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
  3. ``column_count`` single key columns: key slots ``column_index[i]``.
  List entries that fall inside the diagonal block or outside ``[0, n_k)`` are ignored, so builders
  may include the diagonal freely. Apart from that, list entries of one query block must be
  distinct keys (the reference raises if a key is listed twice).
* Every visited pair is masked causally in original positions:
  ``k_order[k] + k_offset <= q_order[q] + q_offset``. A row with nothing visible outputs zeros and
  log-sum-exp ``-inf``: never NaN.
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
        block and one per listed column, for each of its rows. Exact when listed entries lie before
        the diagonal block in original order (what the builders produce); with orders it counts
        evaluated pairs, a few of which the causal test then drops. An index of a row subset counts
        its own rows only (densities of a head's launches add up). Reads counts only: O(B H M),
        on the index's device, no host sync."""
        m = torch.arange(self.num_query_blocks, device=self.block_count.device)
        rows = (self.query_slots(n) - m * self.block_m).clamp(min=0, max=self.block_m).to(torch.float64)
        listed = self.block_count.to(torch.float64) * self.block_n + self.column_count.to(torch.float64)
        pairs = (listed * rows).sum(-1) + (rows * (rows + 1) / 2).sum()
        return (pairs / (n * (n + 1) / 2)).to(torch.float32)

    def tensors(self) -> tuple:
        """The index as the flat argument tuple of the ``torch.ops.mminference`` ops."""
        return (self.block_count, self.block_offset, self.column_count, self.column_index,
                self.q_order, self.k_order, self.block_m, self.block_n)


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
    for name in ("block_offset", "column_index"):
        t = getattr(index, name)
        if t.dim() != 4 or tuple(t.shape[:3]) != expect:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {expect} + (capacity,)")
    for name, order, n in (("q_order", index.q_order, slots), ("k_order", index.k_order, n_k)):
        if order is not None and tuple(order.shape) != (batch, heads, n):
            raise ValueError(f"{name} has shape {tuple(order.shape)}, expected {(batch, heads, n)}")
    for name in ("block_count", "block_offset", "column_count", "column_index", "q_order", "k_order"):
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
    for name, count, cap in (("block_count", index.block_count, index.block_offset.shape[-1]),
                             ("column_count", index.column_count, index.column_index.shape[-1])):
        if count.numel() and (int(count.min()) < 0 or int(count.max()) > cap):
            raise ValueError(f"{name} must lie in [0, {cap}], got [{int(count.min())}, {int(count.max())}]")
    slots = torch.arange(index.block_offset.shape[-1], device=index.block_offset.device)
    used = slots < index.block_count[..., None]
    offsets = index.block_offset[used]
    if offsets.numel() and (int(offsets.min()) < 0 or int(offsets.max()) >= n_k):
        raise ValueError(f"block_offset must lie in [0, {n_k}), got [{int(offsets.min())}, {int(offsets.max())}]")
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
    overlap = (nxt < big) & (nxt < prev + bn) & outside_diag(nxt, torch.minimum(prev + bn, nxt + bn))
    columns = listed(index.column_index, index.column_count)
    twice = (columns[..., 1:] < big) & (columns[..., 1:] == columns[..., :-1]) & \
        outside_diag(columns[..., 1:], columns[..., 1:] + 1)
    at = (torch.searchsorted(blocks.contiguous(), columns.contiguous(), right=True) - 1).clamp(min=0)
    start = blocks.gather(-1, at)
    inside = (columns < big) & (start <= columns) & (columns < start + bn) & outside_diag(columns, columns + 1)
    for what, bad in (("overlapping key blocks", overlap), ("a key column twice", twice),
                      ("a key column inside a listed key block", inside)):
        if bool(bad.any()):
            b, h, mb = bad.nonzero()[0, :3].tolist()
            raise ValueError(f"index lists {what} for batch {b}, head {h}, query block {mb}: "
                             "entries of one query block must be distinct keys")
