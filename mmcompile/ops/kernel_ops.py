"""``torch.ops.mminference.*``: the only door from graphs to the attention kernels.

Each op is a ``torch.library.custom_op`` with a fake (shape-only) implementation, so Dynamo,
AOTAutograd, Inductor and ``torch.export`` keep it as one opaque node. The fake returns a contiguous
output, matching the kernel's real strides (Inductor asserts on a mismatch).

On a CPU tensor without ``TRITON_INTERPRET=1`` the Triton kernel cannot run
(``kernels.triton_runs_on``): the op then computes the same contract with the plain-PyTorch
reference (exact, O(N^2) memory) and logs it once.

Inputs are checked at the door: shapes, dtypes, devices (meta tensors and mixed devices raise, as
SDPA does) and, unless ``check_index=False``, the index contents (counts within capacity, entries in
range, orders that are permutations, no key listed twice; host syncs). The per-layer hot path does
not come through here: it calls the kernels with indexes its builders make valid by construction.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from mmcompile._once import Once
from mmcompile.kernels import (
    SparseIndex, dense_attention_forward, dense_attention_reference,
    sparse_attention_forward, sparse_attention_reference, triton_runs_on,
)

log = logging.getLogger(__name__)
_ONCE = Once()


def _use_reference(q: torch.Tensor) -> bool:
    if triton_runs_on(q):
        return False
    _ONCE.log(log, logging.WARNING, q.device.type,
              "mminference ops on %s without TRITON_INTERPRET=1: using the PyTorch reference", q.device)
    return True


def check_one_device(*tensors) -> None:
    """Raise like SDPA on inputs of several devices. Fakes call it: they are also the Meta kernel,
    where a real tensor mixed with meta ones lands (and would get uninitialized memory back)."""
    devices = {t.device for t in tensors if isinstance(t, torch.Tensor)}
    if len(devices) > 1:
        raise ValueError(f"mminference ops: inputs must be on one device, got {sorted(map(str, devices))}")


def _fake_outputs(q: torch.Tensor, *tensors):
    check_one_device(q, *tensors)
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("mminference::sparse_attention", mutates_args=())
def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    block_count: torch.Tensor, block_offset: torch.Tensor,
    column_count: torch.Tensor, column_index: torch.Tensor,
    q_order: Optional[torch.Tensor], k_order: Optional[torch.Tensor],
    span: Optional[torch.Tensor], column_row: Optional[torch.Tensor],
    block_m: int, block_n: int, scale: float, q_offset: int, k_offset: int, check_index: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention over a SparseIndex; returns (out [B,Hq,Nq,D], lse [B,Hq,Nq] float32).
    ``check_index=False`` skips the content checks (host syncs) for indexes known valid."""
    index = SparseIndex(block_count, block_offset, column_count, column_index, block_m, block_n,
                        q_order, k_order, span, column_row)
    if _use_reference(q):  # the reference checks inputs and index contents itself, always
        return sparse_attention_reference(q, k, v, index, scale, q_offset, k_offset)
    return sparse_attention_forward(q, k, v, index, scale, q_offset, k_offset, check_values=check_index)


@sparse_attention.register_fake
def _(q, k, v, block_count, block_offset, column_count, column_index, q_order, k_order, span, column_row,
      block_m, block_n, scale, q_offset, k_offset, check_index=True):
    return _fake_outputs(q, k, v, block_count, block_offset, column_count, column_index, q_order, k_order, span,
                         column_row)


@torch.library.custom_op("mminference::sparse_attention_reference", mutates_args=())
def sparse_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    block_count: torch.Tensor, block_offset: torch.Tensor,
    column_count: torch.Tensor, column_index: torch.Tensor,
    q_order: Optional[torch.Tensor], k_order: Optional[torch.Tensor],
    span: Optional[torch.Tensor], column_row: Optional[torch.Tensor],
    block_m: int, block_n: int, scale: float, q_offset: int, k_offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain-PyTorch reference of ``mminference::sparse_attention`` (its checks are always on)."""
    index = SparseIndex(block_count, block_offset, column_count, column_index, block_m, block_n,
                        q_order, k_order, span, column_row)
    return sparse_attention_reference(q, k, v, index, scale, q_offset, k_offset)


@sparse_attention_ref.register_fake
def _(q, k, v, block_count, block_offset, column_count, column_index, q_order, k_order, span, column_row,
      block_m, block_n, scale, q_offset, k_offset):
    return _fake_outputs(q, k, v, block_count, block_offset, column_count, column_index, q_order, k_order, span,
                         column_row)


@torch.library.custom_op("mminference::dense_attention", mutates_args=())
def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                    q_offset: int, k_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense causal attention through the same kernel family (all causal blocks)."""
    if _use_reference(q):  # both paths check their inputs
        return dense_attention_reference(q, k, v, scale, q_offset, k_offset)
    return dense_attention_forward(q, k, v, scale, q_offset, k_offset)


@dense_attention.register_fake
def _(q, k, v, scale, q_offset, k_offset):
    return _fake_outputs(q, k, v)


def sparse_attention_op(q, k, v, index: SparseIndex, scale: float | None = None,
                        q_offset: int = 0, k_offset: int = 0, check_index: bool = True):
    """Convenience call of ``torch.ops.mminference.sparse_attention`` with a SparseIndex."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.ops.mminference.sparse_attention(q, k, v, *index.tensors(), scale, q_offset, k_offset,
                                                  check_index)
