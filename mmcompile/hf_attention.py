"""A transformers attention function (``AttentionInterface``) that runs ``mminference::prefill_attention``
without torch.compile: for callers who run or export the language model eagerly.

    import mmcompile.hf_attention
    mmcompile.hf_attention.register({"min_sparse_len": 32768})   # options as for the backend
    model.set_attn_implementation("mminference")   # or from_pretrained(..., attn_implementation="mminference")

Each registration closes over its own options (they become the op's arguments), so two names
registered with different options keep them: ``register(opts, name="mminference-wide")``.
Calls the op cannot compute exactly go to transformers' SDPA function unchanged: non-causal
attention, dropout, soft-capping, ``output_attentions``, position biases, paged caches, attention
sinks, any attention mask (the mask builder registered with the function returns None when the
mask is plainly causal, so a mask means padding, a window or a packed batch), and calls whose
inputs require grad (the sparse path has no gradient; SDPA's is exact). No tensor value is read in
Python, so the function traces under torch.compile without graph breaks or data-dependent guards.
The layout comes from ``mmcompile.annotate`` (or is text-only).
"""

from __future__ import annotations

from typing import Optional

import torch

from mmcompile.runtime import RuntimeOptions, RuntimeStats, stats_for, track

NAME = "mminference"
_NOT_OURS = ("softcap", "position_bias", "cache", "s_aux", "sliding_window")  # set: SDPA's semantics differ


def register(options: dict | None = None, name: str = NAME) -> RuntimeStats:
    """Register the ``name`` attention (and its SDPA-style mask builder) with transformers;
    ``options`` are the backend's runtime options (unknown keys are rejected). Returns the
    statistics of its op calls (also ``stats(name)``)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    import mmcompile.ops  # noqa: F401  (registers the op)
    from mmcompile.config import config_from_options

    tag = f"hf-attention:{name}"
    config = config_from_options(options)
    options_ = config.runtime_options(tag)
    plan = None
    if config.plan is not None:
        from mmcompile.search.retarget import load_for_target

        plan = load_for_target(config.plan, config.recall)
    counters = track(tag)

    def attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                  scaling: float | None = None, is_causal: bool | None = None, **kwargs):
        return mminference_attention(module, query, key, value, attention_mask, dropout, scaling, is_causal,
                                     _options=options_, _plan=plan, _stats=counters, **kwargs)

    attention.__doc__ = f"mminference attention registered as {name!r} with {options_}"
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, sdpa_mask)  # None when the mask is plainly causal
    return counters


def stats(name: str = NAME) -> Optional[RuntimeStats]:
    """The statistics of the attention registered as ``name`` (None if not registered)."""
    return stats_for(f"hf-attention:{name}")


def mminference_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, is_causal: bool | None = None, *,
                          _options: RuntimeOptions = RuntimeOptions(), _plan=None, _stats=None, **kwargs):
    """transformers' attention-function contract: q [B,Hq,Nq,D], k/v [B,Hkv,Nk,D] -> ([B,Nq,Hq,D], None).
    ``_plan``: a loaded plan (its layer's patterns become the op's ``plan`` argument); ``_stats``
    only keeps the registration's statistics alive."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    needs_grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    exact = (causal and attention_mask is None and dropout == 0.0 and not needs_grad
             and query.shape[1] % key.shape[1] == 0 and not kwargs.get("output_attentions")
             and all(kwargs.get(k) is None for k in _NOT_OURS))
    if not exact:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    layer = getattr(module, "layer_idx", None)
    layer = -1 if layer is None else int(layer)
    op_kwargs = _options.op_kwargs()
    if _plan is not None:  # a plan for another model raises here, naming the mismatch
        fitted = _plan.for_call(layer, query.shape[1], key.shape[1], query.shape[-1])  # a rank's slice under TP
        _plan.check_depth(getattr(getattr(module, "config", None), "num_hidden_layers", None))
        op_kwargs["plan"] = fitted.op_arg(layer)
    out = torch.ops.mminference.prefill_attention(query, key, value, None, None, layer, float(scale), **op_kwargs)
    return out.transpose(1, 2).contiguous(), None
