"""A transformers attention function (``AttentionInterface``) that runs ``mminference::prefill_attention``
without torch.compile: for callers who run or export the language model eagerly.

    import mmcompile.hf_attention
    mmcompile.hf_attention.register({"min_sparse_len": 32768})   # options as for the backend
    model.set_attn_implementation("mminference")   # or from_pretrained(..., attn_implementation="mminference")

Calls the op cannot compute exactly fall back to transformers' SDPA function unchanged: non-causal
attention, dropout, soft-capping, ``output_attentions``, and masks that are not the plain causal mask
(padding, sliding windows). The layout comes from ``mmcompile.annotate`` (or is text-only).
"""

from __future__ import annotations

import torch

NAME = "mminference"
CONFIG_KEY = "mminference-hf-attention"


def register(options: dict | None = None) -> None:
    """Register the ``mminference`` attention (and its SDPA-style mask builder) with transformers;
    ``options`` are the backend's runtime options (unknown keys are rejected)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from mmcompile.config import config_from_options
    from mmcompile.prefill_op import RuntimeConfig, register_runtime_config

    config = config_from_options(options)
    register_runtime_config(CONFIG_KEY, RuntimeConfig(
        min_sparse_len=config.min_sparse_len, sink=config.sink, local=config.local,
        force_dense=config.force_dense, policy=config.policy, density=config.density))
    AttentionInterface.register(NAME, mminference_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # None when the mask is plainly causal


def mminference_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention-function contract: q [B,Hq,Nq,D], k/v [B,Hkv,Nk,D] -> ([B,Nq,Hq,D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    import mmcompile.prefill_op  # noqa: F401  (registers the op)

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    exact = (causal and dropout == 0.0 and kwargs.get("softcap") is None and not kwargs.get("output_attentions")
             and query.shape[1] % key.shape[1] == 0 and _plainly_causal(attention_mask, query, key))
    if not exact:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    out = torch.ops.mminference.prefill_attention(query, key, value, None, int(getattr(module, "layer_idx", 0)),
                                                  float(scale), CONFIG_KEY)
    return out.transpose(1, 2).contiguous(), None


def _plainly_causal(mask, query, key) -> bool:
    """No mask, or a [.., Nq, Nk] mask equal to the bottom-right causal mask (an O(N^2) check of a
    mask that already exists; a boolean keep-mask or an additive 0/-inf one)."""
    if mask is None:
        return True
    n_q, n_k = query.shape[2], key.shape[2]
    if mask.shape[-2:] != (n_q, n_k):
        return False
    keep = mask if mask.dtype == torch.bool else mask == 0
    causal = torch.ones(n_q, n_k, dtype=torch.bool, device=mask.device).tril(n_k - n_q)
    return bool((keep == causal).all())
