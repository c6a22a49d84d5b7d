"""Finds the SDPA calls of a graph and classifies each: causal attention the op can compute (its
causal form, GQA form, scale and layer), or left alone with a reason. Analysis only: no rewrite.

Accepted causal forms (Dynamo ``torch._C._nn.scaled_dot_product_attention`` or exported
``aten.scaled_dot_product_attention.default``):
  * ``is_causal``     attn_mask=None, is_causal=True, Nq == Nk provably (SDPA's diagonal is top-left)
  * ``hf_bool_mask``  a boolean mask proven to be causal AND an optional [B, Nk] padding input
                      (``causal_mask.py``); the padding is then checked at run time by the op
  * ``single_query``  attn_mask=None, is_causal=False, Nq == 1: a decode step sees every key
GQA: ``enable_gqa=True`` with the KV heads, or a ``repeat_kv`` expansion that is undone.
Left alone, with the reason recorded: bidirectional attention (vision towers), dropout in training,
float (additive) masks, masks not provably causal, inputs that need grad, unsupported dtypes.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx

from ._fx import fake, is_sdpa, layer_index, same, sdpa_args, static_int
from ._types import AttentionSite, PassResult, SkipKind, state
from .causal_mask import NotProvable, prove_causal_mask
from .repeat_kv import match_repeat_kv

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _guards(site: AttentionSite, args: dict) -> Optional[tuple]:
    """None when the node's inputs suit the op, else (SkipKind, detail): why it is left alone."""
    q, k, v = (fake(args[n]) for n in ("query", "key", "value"))
    if not all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in (q, k, v)):
        return SkipKind.NOT_4D, "q/k/v are not 4-D [B, H, S, D] tensors"
    site.heads_q, site.n_q, site.head_dim = q.shape[1], q.shape[2], q.shape[3]
    site.heads_kv, site.n_k = k.shape[1], k.shape[2]
    if q.dtype not in _DTYPES or not (q.dtype == k.dtype == v.dtype):
        return SkipKind.DTYPE, f"dtype {q.dtype}/{k.dtype}/{v.dtype} not supported by the kernel"
    if static_int(q.shape[3]) is None or q.shape[3] > 256:
        return SkipKind.HEAD_DIM, f"head_dim {q.shape[3]} not supported by the kernel (static, <= 256)"
    if any(t.requires_grad for t in (q, k, v)):
        return SkipKind.REQUIRES_GRAD, "inputs require grad: the op is forward-only (run under torch.no_grad())"
    dropout = args["dropout_p"]
    if isinstance(dropout, fx.Node) or dropout > 0:
        return SkipKind.DROPOUT, f"dropout_p={dropout} > 0 (training)"
    if isinstance(args["is_causal"], fx.Node):
        return SkipKind.GRAPH_VALUE, "is_causal is a graph value, not a constant"
    if isinstance(args["scale"], fx.Node) and not _is_scalar_float(args["scale"]):
        return SkipKind.GRAPH_VALUE, "scale is a graph value that is not a Python float"
    return None


def _is_scalar_float(node: fx.Node) -> bool:
    """``dynamic=True`` makes a module's float attribute (HF's ``self.scaling``) a graph input read
    with ``.item()``: a SymFloat the op takes as its ``scale`` argument, like a constant."""
    return isinstance(fake(node), (float, torch.SymFloat))


def _causal_form(site: AttentionSite, args: dict) -> Optional[tuple]:
    """Sets site.causal_form (and the padding input); returns (SkipKind, detail) or None."""
    mask, is_causal = args["attn_mask"], bool(args["is_causal"])
    if mask is None and is_causal:
        if not same(site.n_q, site.n_k):
            return SkipKind.TOP_LEFT_CAUSAL, "is_causal=True with Nq != Nk (top-left aligned causal)"
        site.causal_form = "is_causal"
    elif mask is None:
        if static_int(site.n_q) != 1:
            return SkipKind.NON_CAUSAL, "non-causal (is_causal=False, no mask): bidirectional, e.g. a vision tower"
        site.causal_form = "single_query"
    elif is_causal:
        return SkipKind.CAUSAL_AND_MASK, "is_causal=True together with an attn_mask"
    elif fake(mask).dtype != torch.bool:
        return SkipKind.FLOAT_MASK, f"float attention mask ({fake(mask).dtype}, additive bias)"
    else:
        try:
            proof = prove_causal_mask(mask, fake(args["query"]), fake(args["key"]))
        except NotProvable as e:
            return SkipKind.MASK_NOT_PROVABLE, f"attention_mask not provably causal: {e}"
        site.causal_form, site.key_padding = "hf_bool_mask", proof.key_padding
        site.dead_candidates += proof.cone
    return None


def _gqa_form(site: AttentionSite, args: dict) -> Optional[tuple]:
    """Sets site.k/v to the K/V with the KV heads and site.gqa_form; returns (SkipKind, detail) or None."""
    site.q, site.k, site.v = args["query"], args["key"], args["value"]
    hq, hk = site.heads_q, site.heads_kv
    if not same(hq, hk):
        if args["enable_gqa"] and static_int(hk) and static_int(hq) and hq % hk == 0:
            site.gqa_form = "enable_gqa"
            return None
        return SkipKind.GQA_WITHOUT_ENABLE, f"{hq} query heads vs {hk} key heads without enable_gqa"
    rk, rv = match_repeat_kv(site.k), match_repeat_kv(site.v)
    if rk and rv and rk.groups == rv.groups and rk.groups > 1:
        site.k, site.v, site.heads_kv = rk.base, rv.base, fake(rk.base).shape[1]
        site.gqa_form = "repeat_kv undone"
        site.dead_candidates += rk.chain + rv.chain
    else:
        site.gqa_form = "none (MHA)"
    return None


def find_attention(gm: fx.GraphModule, config) -> PassResult:
    """Record one AttentionSite per SDPA node in ``state(gm)["sites"]``."""
    sites = []
    for node in gm.graph.nodes:
        if not is_sdpa(node):
            continue
        site = AttentionSite(node=node, name=node.name, layer=layer_index(node))
        args = sdpa_args(node)
        skip = _guards(site, args) or _causal_form(site, args) or _gqa_form(site, args)
        if skip:
            site.kind, site.reason = skip
        else:
            site.status = "matched"
            head_dim = site.head_dim
            scale = args["scale"]
            site.scale = head_dim ** -0.5 if scale is None else scale if isinstance(scale, fx.Node) else float(scale)
        sites.append(site)
    causal = [s for s in sites if s.status == "matched"]
    for ordinal, site in enumerate(causal):  # graphs without module paths: number causal calls
        if site.layer is None:
            site.layer = ordinal
    state(gm)["sites"] = sites
    counts = {"found": len(sites), "matched": len(causal), "skipped": len(sites) - len(causal)}
    return PassResult("find_attention", changed=False, counts=counts)
