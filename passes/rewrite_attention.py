"""Rewrites each matched causal SDPA call into ``torch.ops.mminference.prefill_attention`` and
erases what only fed it (HF's [B,1,S,S] mask subgraph, repeat_kv expansions).

Before (HF under torch.compile with an all-ones attention_mask)::

    attention_mask_1 = (new_ones(()) & (kv_idx <= q_idx) & pad[b_idx, kv_idx]).expand(1, -1, S, S)
    key = keys[:, :, None].expand(1, 2, 2, S, 32).reshape(1, 4, S, 32)       # value likewise
    attn_output = torch._C._nn.scaled_dot_product_attention(q, key, value, attn_mask=attention_mask_1,
                                                            dropout_p=0.0, scale=0.177, is_causal=False)
After::

    attn_output = torch.ops.mminference.prefill_attention.default(q, keys, values, None, l_attention_mask_,
                                                                  0, 0.177, min_sparse_len=32768, policy='online',
                                                                  ..., tag='mminference-3')

Every run-time option is a keyword argument of the node (``RuntimeOptions.op_kwargs``): the graph
means the same in any process.

The new node gets a fresh fake value (contiguous, from the op's fake), never the SDPA node's meta:
SDPA's value carries other strides and Inductor asserts on the mismatch.
"""

from __future__ import annotations

import torch
import torch.fx as fx

import mmcompile.ops  # noqa: F401  (registers torch.ops.mminference.prefill_attention)

from ._fx import erase_dead, fake
from ._types import PassResult, state

_COPIED_META = ("stack_trace", "nn_module_stack")


def _fresh_value(node: fx.Node, old: fx.Node, site) -> None:
    q = fake(site.q)
    if not isinstance(q, torch.Tensor):
        return
    value = q.new_empty(q.shape)  # what the op's fake returns
    for key in ("val", "example_value"):
        if key in old.meta:
            node.meta[key] = value


def _check_depth(gm: fx.GraphModule, plan) -> None:
    from .model_depth import decoder_depth

    plan.check_depth(decoder_depth(gm))


def rewrite_attention(gm: fx.GraphModule, config) -> PassResult:
    st = state(gm)
    graph, op = gm.graph, torch.ops.mminference.prefill_attention.default
    rewritten, dead = 0, []
    plan = st.get("plan")
    if plan is not None:
        _check_depth(gm, plan)
    for site in st["sites"]:
        if site.status != "matched":
            continue
        old = site.node
        options = dict(st["op_options"])
        if plan is not None:  # a plan for another model raises here, naming the mismatch
            fitted = plan.for_call(int(site.layer), int(site.heads_q), int(site.heads_kv), int(site.head_dim))
            options["plan"] = fitted.op_arg(int(site.layer))  # this rank's heads under tensor parallelism
        with graph.inserting_before(old):
            new = graph.call_function(op, (site.q, site.k, site.v, site.modality, site.key_padding,
                                           int(site.layer), site.scale), options)
        new.meta.update({k: old.meta[k] for k in _COPIED_META if k in old.meta})
        _fresh_value(new, old, site)
        old.replace_all_uses_with(new)
        graph.erase_node(old)
        site.node, site.status = new, "rewritten"
        dead += site.dead_candidates
        rewritten += 1
    erased = erase_dead(graph, dead)
    if rewritten:
        graph.lint()
        gm.recompile()
    return PassResult("rewrite_attention", changed=bool(rewritten),
                      counts={"rewritten": rewritten, "erased_nodes": erased})
