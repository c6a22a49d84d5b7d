"""Copies of Q, K and V in an index's slot order, for launches whose index carries orders.

Why: with an order, every tile's K/V row addresses come from a loaded order entry. A load whose
address waits on another load cannot be pipelined like a contiguous one, and on Hopper that cost
the grid path ~28% of its throughput even with identity orders (BENCHMARKS.md, kernel probe of
2026-11-23). One gather per launched head (N x D for K, for V, and for the listed query rows)
makes consecutive slots consecutive rows again; the kernel still reads the order, but only for
the causal test in original positions and to store each row back in original order.

The copies take ``3 N D`` elements per head, so a launch of many heads runs in head chunks of at
most ``COPY_BYTES`` of copies (1M tokens, D=128, bf16: 768 MiB per head).
"""

from __future__ import annotations

import dataclasses

import torch

from .sparse_index import SparseIndex

COPY_BYTES = 2 << 30  # per chunk of heads: the copies' memory above q/k/v, bounded


def has_orders(index: SparseIndex) -> bool:
    return index.q_order is not None or index.k_order is not None


def index_heads(index: SparseIndex, lo: int, hi: int) -> SparseIndex:
    """The index of heads ``[lo, hi)`` (every per-head tensor sliced on its head dim)."""
    fields = {f.name: getattr(index, f.name) for f in dataclasses.fields(index)}
    return dataclasses.replace(index, **{name: t[:, lo:hi] for name, t in fields.items()
                                         if isinstance(t, torch.Tensor)})


def head_chunks(heads: int, n_q: int, n_k: int, q: torch.Tensor) -> list[tuple[int, int]]:
    """Contiguous chunks of the launch's heads whose copies fit ``COPY_BYTES``."""
    per_head = (n_q + 2 * n_k) * q.shape[0] * q.shape[-1] * q.element_size()
    step = max(1, COPY_BYTES // max(per_head, 1))
    return [(lo, min(lo + step, heads)) for lo in range(0, heads, step)]


def copy_to_slots(q, k, v, index: SparseIndex, head_ids: torch.Tensor, group: int):
    """(q, k, v) for a launch of query heads ``head_ids`` over ``index`` (of those heads):
    q as [B, Hs, slots, D] in query-slot order if the index has a ``q_order`` (else q as given),
    k and v as [B, Hs, N_k, D] in each head's key-slot order if it has a ``k_order`` (else as given)."""
    batch = torch.arange(q.shape[0], device=q.device)[:, None, None]
    heads = head_ids.long()[None, :, None]
    if index.q_order is not None:
        q = q[batch, heads, index.q_order.long()]
    if index.k_order is not None:
        rows = index.k_order.long()
        k, v = k[batch, heads // group, rows], v[batch, heads // group, rows]
    return q, k, v
