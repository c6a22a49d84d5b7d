"""Dense or sparse, per call: the rules in one place, each with its kind (``DenseReason``)."""

from __future__ import annotations

from typing import Optional

import torch

from mmcompile.kernels import attention_kernel_supports

from .forward_state import ForwardState
from .options import RuntimeOptions
from .records import DenseReason


def dense_reason(q, k, v, options: RuntimeOptions, key_padding_mask, state: ForwardState) -> Optional[DenseReason]:
    """None for the sparse path, else why the call runs dense."""
    if key_padding_mask is not None and not state.padding_all_ones(key_padding_mask):
        return DenseReason.KEY_PADDING
    if q.shape[2] != k.shape[2]:
        return DenseReason.DECODE_OR_CHUNK
    if options.force_dense:
        return DenseReason.FORCE_DENSE
    if q.shape[2] < max(options.min_sparse_len, 1):
        return DenseReason.SHORT
    if any(t.requires_grad for t in (q, k, v)):  # inside the op's autograd forward grad mode is off
        return DenseReason.REQUIRES_GRAD
    if not attention_kernel_supports(q):
        return DenseReason.NO_KERNEL
    if not all_finite(q, k, v):
        return DenseReason.NON_FINITE
    return None


def all_finite(*tensors) -> bool:
    """Whether no element is NaN or infinite (one host sync). A NaN or infinite key makes every later
    row of its heads NaN under SDPA, while a sparse index that skips that key gives those rows
    finite numbers: a result no dense model would produce. A float32 sum per tensor is non-finite iff
    an element is (or the sum overflows, which sends an extreme but finite input dense: still
    exact), and, unlike ``isfinite(t).all()``, holds no [B, H, N, D] temporary (3.5 GiB of q at 1M)."""
    sums = torch.stack([t.sum(dtype=torch.float32) for t in tensors])
    return bool(sums.isfinite().all())


def check_prefill_inputs(q, k, v, modality_ids, key_padding_mask) -> None:
    """Errors SDPA would raise, raised before any work: wrong ranks, shapes, dtypes or devices."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"prefill_attention: {name} must be [batch, heads, seq, head_dim], got {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"prefill_attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.is_floating_point():
        raise ValueError(f"prefill_attention: q, k, v must be floating point, got {q.dtype}")
    tensors = [t for t in (q, k, v, modality_ids, key_padding_mask) if t is not None]
    devices = {t.device for t in tensors}
    if len(devices) > 1 or q.device.type == "meta":
        raise ValueError(f"prefill_attention: inputs must be real tensors on one device, got "
                         f"{sorted(str(d) for d in devices)}")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"prefill_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"prefill_attention: query heads ({q.shape[1]}) must be a multiple of "
                         f"key/value heads ({k.shape[1]})")
