"""FX helpers shared by the passes: SDPA targets and argument normalisation, fake values, symbolic
equality, layer indices from ``nn_module_stack``, dead-node cleanup."""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional

import torch
import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

# Dynamo graphs: F.scaled_dot_product_attention is this builtin. Exported graphs: the ATen op.
DYNAMO_SDPA = torch._C._nn.scaled_dot_product_attention
ATEN_SDPA = torch.ops.aten.scaled_dot_product_attention.default
SDPA_TARGETS = (DYNAMO_SDPA, ATEN_SDPA)
_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
_SDPA_DEFAULTS = dict(attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False)


def is_sdpa(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in SDPA_TARGETS


def sdpa_args(node: fx.Node) -> dict[str, Any]:
    """query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa of an SDPA node."""
    out = dict(_SDPA_DEFAULTS)
    out.update(zip(_SDPA_PARAMS, node.args))
    out.update(node.kwargs)
    return out


def fake(node: Any):
    """The FakeTensor (or SymInt) a node produces: ``val`` (export, AOT) or ``example_value`` (Dynamo)."""
    if not isinstance(node, fx.Node):
        return node
    meta = node.meta
    return meta["val"] if "val" in meta else meta.get("example_value")


def same(a, b) -> bool:
    """a == b for ints and SymInts, True only when provable."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    try:
        return statically_known_true(a == b)
    except Exception:  # noqa: BLE001 - an expression we cannot decide is "not provably equal"
        return False


def static_int(x) -> Optional[int]:
    return x if isinstance(x, int) and not isinstance(x, bool) else None


_LAYER_RE = re.compile(r"(?:layers|blocks)\W*(\d+)")


def layer_index(node: fx.Node) -> Optional[int]:
    """Layer index from the innermost module path holding ``layers.<i>`` (``blocks.<i>`` in Qwen
    vision towers)."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _cls in reversed(list(stack.values())):
        match = _LAYER_RE.search(str(path))
        if match:
            return int(match.group(1))
    return None


def ancestors(node: fx.Node) -> list[fx.Node]:
    """``node`` and every node it depends on."""
    seen: dict[fx.Node, None] = {}
    stack = [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen[n] = None
            stack.extend(n.all_input_nodes)
    return list(seen)


# Exported graphs check the dtype of intermediate tensors with these (impure) nodes.
_METADATA_ASSERTS = (torch.ops.aten._assert_tensor_metadata.default,)


def erase_dead(graph: fx.Graph, candidates: Iterable[fx.Node]) -> int:
    """Erase candidates left without users (never placeholders or impure nodes; metadata asserts on
    them go too); returns the count. Only the given nodes are touched: a whole-graph DCE could drop
    nodes the user graph relies on."""
    pending = [n for n in dict.fromkeys(candidates) if n.graph is graph]
    erased = 0
    changed = True
    while changed:
        changed = False
        for n in list(pending):
            checks = [u for u in n.users if u.op == "call_function" and u.target in _METADATA_ASSERTS]
            if checks and len(checks) == len(n.users) and not any(u.users for u in checks):
                for u in checks:  # a dtype assert on a tensor nobody reads any more
                    graph.erase_node(u)
                    erased += 1
            if n.op in ("placeholder", "output") or n.users or n.is_impure():
                continue
            graph.erase_node(n)
            pending.remove(n)
            erased += 1
            changed = True
    return erased
