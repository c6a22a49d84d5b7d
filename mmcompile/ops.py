"""``torch.ops.mminference.*``: the only door from graphs to the attention kernels.

Each op is a ``torch.library.custom_op`` with a fake (shape-only) implementation, so Dynamo,
AOTAutograd, Inductor and ``torch.export`` keep it as one opaque node. The fake returns a contiguous
output, matching the kernel's real strides (Inductor asserts on a mismatch).

On a CPU tensor without ``TRITON_INTERPRET=1`` the Triton kernel cannot run: the op then computes
the same contract with the plain-PyTorch reference (exact, O(N^2) memory) and logs it once.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from mmcompile.kernels import (
    SparseIndex, dense_attention_forward, dense_attention_reference, interpreting,
    sparse_attention_forward, sparse_attention_reference,
)

log = logging.getLogger(__name__)
_warned_cpu_fallback = False


def _use_reference(q: torch.Tensor) -> bool:
    global _warned_cpu_fallback
    if q.device.type == "cuda" or interpreting():
        return False
    if not _warned_cpu_fallback:
        log.warning("mminference ops on %s without TRITON_INTERPRET=1: using the PyTorch reference", q.device)
        _warned_cpu_fallback = True
    return True


def _fake_outputs(q: torch.Tensor):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("mminference::sparse_attention", mutates_args=())
def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    block_count: torch.Tensor, block_offset: torch.Tensor,
    column_count: torch.Tensor, column_index: torch.Tensor,
    q_order: Optional[torch.Tensor], k_order: Optional[torch.Tensor],
    block_m: int, block_n: int, scale: float, q_offset: int, k_offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention over a SparseIndex; returns (out [B,Hq,Nq,D], lse [B,Hq,Nq] float32)."""
    index = SparseIndex(block_count, block_offset, column_count, column_index, block_m, block_n,
                        q_order, k_order)
    if _use_reference(q):
        return sparse_attention_reference(q, k, v, index, scale, q_offset, k_offset)
    return sparse_attention_forward(q, k, v, index, scale, q_offset, k_offset)


@sparse_attention.register_fake
def _(q, k, v, block_count, block_offset, column_count, column_index, q_order, k_order,
      block_m, block_n, scale, q_offset, k_offset):
    return _fake_outputs(q)


@torch.library.custom_op("mminference::sparse_attention_reference", mutates_args=())
def sparse_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    block_count: torch.Tensor, block_offset: torch.Tensor,
    column_count: torch.Tensor, column_index: torch.Tensor,
    q_order: Optional[torch.Tensor], k_order: Optional[torch.Tensor],
    block_m: int, block_n: int, scale: float, q_offset: int, k_offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain-PyTorch reference of ``mminference::sparse_attention`` (same schema)."""
    index = SparseIndex(block_count, block_offset, column_count, column_index, block_m, block_n,
                        q_order, k_order)
    return sparse_attention_reference(q, k, v, index, scale, q_offset, k_offset)


@sparse_attention_ref.register_fake
def _(q, k, v, block_count, block_offset, column_count, column_index, q_order, k_order,
      block_m, block_n, scale, q_offset, k_offset):
    return _fake_outputs(q)


@torch.library.custom_op("mminference::dense_attention", mutates_args=())
def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                    q_offset: int, k_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense causal attention through the same kernel family (all causal blocks)."""
    if _use_reference(q):
        return dense_attention_reference(q, k, v, scale, q_offset, k_offset)
    return dense_attention_forward(q, k, v, scale, q_offset, k_offset)


@dense_attention.register_fake
def _(q, k, v, scale, q_offset, k_offset):
    return _fake_outputs(q)


def sparse_attention_op(q, k, v, index: SparseIndex, scale: float | None = None,
                        q_offset: int = 0, k_offset: int = 0):
    """Convenience call of ``torch.ops.mminference.sparse_attention`` with a SparseIndex."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.ops.mminference.sparse_attention(q, k, v, *index.tensors(), scale, q_offset, k_offset)
