"""``torch.ops.mminference.prefill_attention``: the op the backend's rewrite inserts for causal
language-model attention. Every behaviour knob is an argument, so a graph means the same thing in
any process (a cached compile, an exported program):

    prefill_attention(q [B,Hq,Nq,D], k [B,Hkv,Nk,D], v [B,Hkv,Nk,D], modality_ids: Tensor?,
                      key_padding_mask: Tensor?, layer: int, scale: float,
                      min_sparse_len=32768, policy="online", density=0.1, recall=0.95, sink=128, local=4096,
                      force_dense=False, strict=False, plan="", plan_sizes="online", tag="", pictures="")
                      -> [B,Hq,Nq,D] (contiguous)

Same result as ``F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=scale)``
with the causal diagonal aligned bottom-right, on the blocks it computes (``mmcompile.runtime``
decides dense or sparse per call and records why). ``modality_ids``: [B, Nk] modality ids (HF's
``mm_token_type_ids``), or [B, Nk, 3] (id, frame height, frame width) per token
(``mmcompile.patterns.token_table``); None: the layout comes from the forward's state.
``key_padding_mask`` [B, >= Nk] (nonzero = keep):
when it masks something the call runs dense SDPA with exactly that mask. ``tag`` routes statistics.

Gradients: a call whose inputs require grad runs dense, and its backward is SDPA's (recomputed);
the sparse path is inference only.
"""

from __future__ import annotations

from typing import Optional

import torch

from mmcompile.runtime import RuntimeOptions, run_prefill

from .kernel_ops import check_one_device
from mmcompile.runtime.dense import dense, dense_padded

_DEFAULTS = RuntimeOptions()


@torch.library.custom_op("mminference::prefill_attention", mutates_args=())
def prefill_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    modality_ids: Optional[torch.Tensor], key_padding_mask: Optional[torch.Tensor], layer: int, scale: float,
    min_sparse_len: int = _DEFAULTS.min_sparse_len, policy: str = _DEFAULTS.policy,
    density: float = _DEFAULTS.density, recall: float = _DEFAULTS.recall, sink: int = _DEFAULTS.sink,
    local: int = _DEFAULTS.local, force_dense: bool = False, strict: bool = False, plan: str = "",
    plan_sizes: str = _DEFAULTS.plan_sizes, tag: str = "", pictures: str = "",
) -> torch.Tensor:
    """Causal (bottom-right) GQA attention of a rewritten layer; dense or sparse per its options."""
    options = RuntimeOptions(min_sparse_len, policy, density, recall, sink, local, force_dense, strict, plan,
                             plan_sizes, tag, pictures)
    return run_prefill(q, k, v, modality_ids, key_padding_mask, layer, scale, options)


@prefill_attention.register_fake
def _(q, k, v, modality_ids, key_padding_mask, layer, scale, min_sparse_len=0, policy="", density=0.0,
      recall=0.0, sink=0, local=0, force_dense=False, strict=False, plan="", plan_sizes="", tag="", pictures=""):
    check_one_device(q, k, v, modality_ids, key_padding_mask)
    # Contiguous, like the real output (Inductor asserts on a stride mismatch).
    return q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, _, key_padding_mask, _, scale = inputs[:7]
    ctx.save_for_backward(q, k, v, key_padding_mask)
    ctx.scale = scale


def _backward(ctx, grad):
    q, k, v, pad = ctx.saved_tensors
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_(needs) for t, needs in zip((q, k, v), ctx.needs_input_grad[:3])]
        out = dense(*inputs, ctx.scale) if pad is None else dense_padded(*inputs, ctx.scale, pad)
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad))
    dq, dk, dv = (next(grads) if t.requires_grad else None for t in inputs)
    return (dq, dk, dv) + (None,) * 16  # one per other input of the op


prefill_attention.register_autograd(_backward, setup_context=_setup_context)
