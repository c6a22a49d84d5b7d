"""Each attention layer's q, k, v from a model forward, one layer at a time: a transformers
attention function that hands (layer, q, k, v) to a callback (the search) and then computes the
layer's output with SDPA, so nothing is kept between layers and no S x S matrix is formed.

    with capturing(model, on_layer):
        model(**calibration_inputs)
"""

from __future__ import annotations

import contextlib

import torch

NAME = "mminference-capture"


@contextlib.contextmanager
def capturing(model, on_layer):
    """Within the block, ``model``'s attention calls ``on_layer(layer, q, k, v, scale)`` (q [B, Hq,
    N, D], k/v [B, Hkv, N, D], after RoPE) before SDPA. Only the language model's attention is
    replaced: a VLM's vision tower keeps its own (its calls are no decoder layer: no ``layer_idx``,
    another length), so ``model(**processor_inputs)`` searches the decoder layers alone. The
    implementation is restored afterwards."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
        layer = getattr(module, "layer_idx", None)
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        with torch.no_grad():
            on_layer(-1 if layer is None else int(layer), query, key, value, float(scale))
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)

    AttentionInterface.register(NAME, attention)
    language = _language_config(model)
    before = getattr(language, "_attn_implementation", None) or "sdpa"
    model.set_attn_implementation(_for_language(model, NAME))
    try:
        yield
    finally:
        model.set_attn_implementation(_for_language(model, before))


def _for_language(model, implementation: str):
    """``set_attn_implementation``'s argument that reaches the language model only: keyed by its
    sub-config in a VLM, the whole model otherwise."""
    vlm = "text_config" in getattr(model.config, "sub_configs", {})
    return {"text_config": implementation} if vlm else implementation


def _language_config(model):
    config = model.config
    return getattr(config, "text_config", None) or config
