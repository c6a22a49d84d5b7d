"""Decides where each matched attention call gets its modality layout from (no rewrite yet).

In the graph every call gets ``modality_ids=None`` and the report says "none (text-only)"; the
layout arrives at run time instead, and the op records its source per call:
  * an explicit annotation (``mmcompile.annotate.modality``);
  * ids published by an earlier graph of the same forward: ``placeholder_token_compares`` finds a
    graph that compares ``input_ids`` with the placeholder token ids, and the backend wraps that
    graph's compiled callable to publish the visual tokens on each call (``mmcompile.annotate``).
Grid sizes (``*_grid_thw``) are not read yet, so frame geometry is unknown on these paths.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ._types import PassResult, state

TEXT_ONLY = "none (text-only)"


def modality_source(gm: fx.GraphModule, config) -> PassResult:
    matched = [s for s in state(gm)["sites"] if s.status == "matched"]
    for site in matched:
        site.modality, site.modality_source = None, TEXT_ONLY
    return PassResult("modality_source", changed=False, counts={TEXT_ONLY: len(matched)})


def placeholder_token_compares(gm: fx.GraphModule):
    """(position among the placeholders, token ids) when the graph compares an ``input_ids``
    placeholder with integer constants (HF's image/video placeholder masks), else (position, ()) for
    a graph that only reads ``input_ids``, else None."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    ids = next((n for n in placeholders if "input_ids" in n.name), None)
    if ids is None:
        return None
    tokens = []
    for node in ids.users:
        is_eq = (node.op == "call_function" and node.target in (operator.eq, torch.eq)) or \
                (node.op == "call_method" and node.target == "eq")
        if is_eq and len(node.args) == 2 and node.args[0] is ids and isinstance(node.args[1], int):
            tokens.append(node.args[1])
    return placeholders.index(ids), tuple(sorted(set(tokens)))
