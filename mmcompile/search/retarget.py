"""A plan for another recall target, chosen again from the scores the search stored (no q, k or v
needed): per head and query modality the cheapest scored candidate reaching the new target, Dense
where none does, so ``recall=`` can be picked when a plan is loaded."""

from __future__ import annotations

import dataclasses

from mmcompile.plans import Plan

from .candidates import choose_from_scores


def retarget(plan: Plan, target: float) -> Plan:
    layers = {}
    for layer, heads in plan.layers.items():
        chosen = []
        for h, head in enumerate(heads):
            scores = plan.scores.get((layer, h))
            chosen.append(choose_from_scores(scores, target) if scores else head)
        layers[layer] = tuple(chosen)
    return dataclasses.replace(plan, layers=layers, search={**plan.search, "target_recall": target,
                                                            "retargeted_from": plan.search.get("target_recall")})


def load_for_target(path, recall: float) -> Plan:
    """``load_plan``, then ``retarget`` when the plan stores scores for another target than
    ``recall`` (the backend's ``recall`` option; 0 keeps the plan as searched)."""
    from mmcompile.plans import load_plan

    plan = load_plan(path)
    searched = plan.search.get("target_recall")
    if recall > 0 and plan.scores and searched is not None and abs(searched - recall) > 1e-9:
        return retarget(plan, recall)
    return plan
