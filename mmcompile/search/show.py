"""What a plan holds, for people: a table per layer (patterns by type, the recall and density the
search measured for the chosen candidates, and how many row sets A-shape and VS both served: "A|VS",
sized either way at load) and a picture of the per-head pattern map."""

from __future__ import annotations

import collections

import torch

from mmcompile.plans import Plan

from .candidates import candidate_name

SHADES = {"dense": 255, "ashape": 60, "verticalslash": 120, "grid": 190, "blocksparse": 150}  # PNG gray levels


def _chosen_scores(plan: Plan, layer: int, head: int, pattern) -> list[dict]:
    scores = plan.scores.get((layer, head), {})
    out = []
    for selector, intra in pattern.intra:
        entry = scores.get(selector, {}).get(candidate_name(intra))
        if entry:
            out.append(entry)
    return out


def summary_lines(plan: Plan) -> list[str]:
    m = plan.model
    lines = [f"plan for {m.model_type}: {m.layers} layers, {m.heads_q}/{m.heads_kv} heads, head dim {m.head_dim}; "
             f"search {plan.search}", "",
             f"{'layer':>5s}  {'patterns (query modality: type x heads)':60s} {'density':>8s} {'recall':>7s} "
             f"{'A|VS':>5s}"]
    for layer, heads in sorted(plan.layers.items()):
        kinds = collections.Counter(f"{sel}:{type(p).__name__}" for head in heads for sel, p in head.intra)
        measured = [e for h, head in enumerate(heads) for e in _chosen_scores(plan, layer, h, head)]
        dense = sum(1 for head in heads if head.intra == (("*", head.intra[0][1]),)
                    and type(head.intra[0][1]).__name__ == "Dense")
        density = (sum(e["cost"] for e in measured) + dense) / max(1, len(measured) + dense)
        recall = min((e["recall"] for e in measured), default=1.0)
        text = ", ".join(f"{k} x{c}" for k, c in sorted(kinds.items()))
        either = sum(len(head.interchangeable) for head in heads)  # row sets where both families served
        lines.append(f"{layer:5d}  {text[:60]:60s} {density:8.3f} {recall:7.3f} {either:5d}")
    return lines


def pattern_map(plan: Plan, cell: int = 8) -> torch.Tensor:
    """uint8 [layers * cell, heads * cell]: each head's shade by its (first non-dense) pattern type."""
    grid = torch.zeros(plan.model.layers, plan.model.heads_q, dtype=torch.uint8)
    for layer, heads in plan.layers.items():
        for h, head in enumerate(heads):
            kinds = [type(p).__name__.lower() for _, p in head.intra]
            kind = next((k for k in kinds if k != "dense"), "dense")
            grid[layer, h] = SHADES.get(kind, 255)
    return grid.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
