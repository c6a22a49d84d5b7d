"""Dense causal attention with the op's semantics: SDPA's result, bottom-right causal alignment
(query ``i`` is token ``Nk - Nq + i``: decode steps and chunked prefill), native GQA."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sdpa(q, k, v, scale, mask=None, causal=False):
    # enable_gqa reads the K/V heads in place (no repeat_kv copy).
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


def dense(q, k, v, scale):
    """SDPA: on Hopper its default pick for causal GQA is cuDNN, faster than our dense kernel
    (556 vs 474 TFLOP/s at 128K on the H200, BENCHMARKING.md), and it has a backward."""
    n_q, n_k = q.shape[2], k.shape[2]
    if n_q == n_k:
        return sdpa(q, k, v, scale, causal=True)
    # SDPA's is_causal is top-left aligned; decode queries are the last positions (bottom-right).
    mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(n_k - n_q)
    return sdpa(q, k, v, scale, mask=mask)


def dense_padded(q, k, v, scale, pad):
    """Dense with the 2-D key padding mask ``pad`` [B, >= Nk] (nonzero = keep) folded in."""
    n_q, n_k = q.shape[2], k.shape[2]
    causal = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(n_k - n_q)
    # The graph read pad[b, j] for j < Nk: a longer padding mask contributes its first Nk columns.
    mask = causal[None, None] & pad[:, :n_k].to(device=q.device, dtype=torch.bool)[:, None, None, :]
    return sdpa(q, k, v, scale, mask=mask)
