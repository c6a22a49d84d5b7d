"""Undoes HF's ``repeat_kv`` in front of an SDPA call: finds the K/V with the KV heads, so the op
reads them directly (GQA native) and the expanded copy becomes dead.

    keys  [B,Hkv,S,D] -> keys[:, :, None] (or unsqueeze(2)) -> expand(B,Hkv,g,S,D) -> reshape(B,Hkv*g,S,D)
                                                                                         -> sdpa(q, key, ...)
Dynamo spells it getitem/expand/reshape (``call_method``), exported graphs aten.unsqueeze/expand/
reshape (or view, _unsafe_view after a clone). Shapes are checked on the fake values, never on args.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Optional

import torch
import torch.fx as fx

from ._fx import fake, same

aten = torch.ops.aten
_RESHAPES = {aten.reshape.default, aten.view.default, aten._unsafe_view.default}
_EXPANDS = {aten.expand.default}
_UNSQUEEZES = {aten.unsqueeze.default, torch.unsqueeze}


@dataclasses.dataclass
class RepeatKV:
    base: fx.Node  # [B, Hkv, S, D]
    groups: int
    chain: list  # the reshape, expand and unsqueeze nodes (dead once the SDPA node is rewritten)


def _is(node, targets, methods) -> bool:
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_method":
        return node.target in methods
    return node.op == "call_function" and node.target in targets


def _is_unsqueeze2(node: fx.Node) -> bool:
    if _is(node, _UNSQUEEZES, {"unsqueeze"}):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return dim in (2, -3)
    if node.op == "call_function" and node.target is operator.getitem:
        items, full = node.args[1], slice(None)
        return isinstance(items, tuple) and items in ((full, full, None, full, full), (full, full, None))
    return False


def match_repeat_kv(node: fx.Node) -> Optional[RepeatKV]:
    """The RepeatKV behind ``node`` [B, Hkv*g, S, D], or None when ``node`` is not one."""
    if not _is(node, _RESHAPES, {"reshape", "view"}):
        return None
    chain, src = [node], node.args[0]
    if _is(src, {aten.clone.default}, {"contiguous"}):  # reshape of an expand = clone + _unsafe_view
        chain.append(src)
        src = src.args[0]
    if not _is(src, _EXPANDS, {"expand"}) or not _is_unsqueeze2(src.args[0]):
        return None
    expand, unsqueeze = src, src.args[0]
    base = unsqueeze.args[0]
    out, exp, b = fake(node), fake(expand), fake(base)
    if not all(isinstance(t, torch.Tensor) for t in (out, exp, b)) or b.dim() != 4 or exp.dim() != 5:
        return None
    groups = exp.shape[2]
    ok = (all(same(exp.shape[i], b.shape[j]) for i, j in ((0, 0), (1, 1), (3, 2), (4, 3)))
          and isinstance(groups, int) and out.dim() == 4
          and same(out.shape[1], b.shape[1] * groups)
          and all(same(out.shape[i], b.shape[i]) for i in (0, 2, 3)))
    return RepeatKV(base, groups, chain + [expand, unsqueeze]) if ok else None
