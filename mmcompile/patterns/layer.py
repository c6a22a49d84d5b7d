"""Per-layer entry point: q, k, v, the forward's context and the layer's head patterns -> attention.

estimate -> choose (``policy``) -> index (``layer_index``) -> attend (``launch``) -> check
(``check``), composed here and only here. Each launch group is launched as soon as its index is
built, so the host builds the next group's index while the GPU runs the last one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import torch

from . import check, choice_graph, layer_index, launch, policy
from .context import ForwardContext
from .estimates import Estimates
from .index_builder import device_list
from .specs import HeadPattern


PLAN_SIZES = ("online", "plan")  # how a plan's head patterns run: types sized for the input, or as searched


@dataclasses.dataclass(frozen=True)
class LayerResult:
    """What one layer's sparse attention did: its output, the pattern of each query head, the
    indexes of its launch groups and the density of each query head (``SparseIndex.density``)."""
    out: torch.Tensor
    patterns: tuple  # HeadPattern per query head
    indexes: list  # [(query head ids, SparseIndex or None for dense heads)]
    head_density: torch.Tensor  # float32 [Hq] on q's device (1 for dense heads)
    head_recall: torch.Tensor | None = None  # float32 [Hq]: recall of its launches on held-out rows (verify.py)
    head_error: torch.Tensor | None = None  # float32 [Hq]: their output error on those rows (verify.py)


def layer_attention(q, k, v, ctx: ForwardContext, patterns: Sequence[HeadPattern] | None = None, *,
                    density: float = 0.1, scale: float | None = None, recall: float | None = None,
                    families: Sequence[HeadPattern] | None = None) -> LayerResult:
    """Sparse causal attention of one layer: estimate -> choose -> index -> attend (-> verify), the
    only place these are composed (the op, the distributed path, the CLI and the benchmarks call it).
    Each launch group is launched as soon as its index is built (``layer_index.launch_groups``;
    dense heads first), so the host builds the next group's index while the GPU runs the last one.
    ``patterns``: one per query head (a plan's, a fixed policy's), or None for the online choice
    (``policy.choose_patterns`` with budget cap ``density``). The estimate is computed once and
    shared by the choice and the index builders. ``recall``: a target; what each head's launches
    kept of the attention mass of held-out rows (not the estimation rows) is read off the kernel's
    log-sum-exp (``verify.held_out_recall``), and their output error against dense on those rows
    (``verify.held_out_error``), per query modality; a head's rows below the target, or above
    ``error_tolerance``, are recomputed with the policy's fallbacks (its best original-order
    pattern grown to the density cap, then Grid: ``policy.choose_with_fallbacks``), and rows still
    below it dense (``check.apply_check``). ``families``: one pattern per query head (a plan's) whose
    types, not sizes, the online choice keeps (``patterns`` must be None)."""

    scale = q.shape[-1] ** -0.5 if scale is None else scale
    estimates, patterns, fallbacks = choose_layer(q, k, ctx, patterns, density=density, scale=scale,
                                                  families=families)
    if all(launch.runs_dense(head) for head in patterns):  # every head dense: one SDPA call (cuDNN), no lse
        indexes = layer_index.build_layer_indexes(q, k, patterns, ctx, scale, estimates=estimates)
        out, lse = launch.attend(q, k, v, indexes, scale, return_lse=True)
    else:  # each launch group as soon as it is built: the GPU runs it while the host builds the next
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
        side = launch.side_stream(q.device)  # the dense work, beside the index building and sparse launches
        if recall is not None:
            with launch.on_stream(side):
                estimates.held_out_dense(v)  # the check's dense rows, queued now: they need only q, k, v
        indexes = []
        for group in layer_index.launch_groups(q, k, patterns, ctx, scale, estimates=estimates):  # dense heads first
            launch.attend(q, k, v, [group], scale, out=out, lse=lse, dense_stream=side)
            indexes.append(group)
        if side is not None:
            torch.cuda.current_stream(q.device).wait_stream(side)
    head_recall = head_error = None
    if recall is not None and lse is not None:
        out, patterns, indexes, head_recall, head_error = check.apply_check(q, k, v, out, lse, estimates, ctx, patterns,
                                                                   fallbacks, indexes, recall, scale, density)
    return LayerResult(out, patterns, indexes, head_density(indexes, q.shape[1], ctx.n, q.device), head_recall,
                       head_error)


def plan_keywords(plan: Sequence[HeadPattern] | None, plan_sizes: str) -> dict:
    """``layer_attention``'s keywords for a plan's head patterns (one per query head; None: the
    online choice): ``plan_sizes="online"`` keeps their types and sizes them for this input
    (``families``), ``"plan"`` runs them as searched (``patterns``)."""
    if plan_sizes not in PLAN_SIZES:
        raise ValueError(f"plan_sizes must be one of {PLAN_SIZES}, got {plan_sizes!r}")
    return {"families": plan} if plan_sizes == "online" else {"patterns": plan}


def prepare_layer(q, k, ctx: ForwardContext, patterns: Sequence[HeadPattern] | None = None, *,
                  density: float = 0.1, scale: float | None = None, families: Sequence[HeadPattern] | None = None):
    """What ``layer_attention`` does before the kernel: ``choose_layer``, then the indexes.
    Returns (estimates, patterns, fallbacks {head: patterns in order}, indexes); ``benchmarks/index_memory.py``
    measures exactly this."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    estimates, patterns, fallbacks = choose_layer(q, k, ctx, patterns, density=density, scale=scale, families=families)
    indexes = layer_index.build_layer_indexes(q, k, patterns, ctx, scale, estimates=estimates)
    return estimates, patterns, fallbacks, indexes


def choose_layer(q, k, ctx: ForwardContext, patterns: Sequence[HeadPattern] | None = None, *,
                 density: float = 0.1, scale: float | None = None, families: Sequence[HeadPattern] | None = None):
    """The estimate (``Estimates``, shared with the index builders) and, when ``patterns`` is None,
    the head choice (restricted to the types of ``families`` when given), replayed from a CUDA
    graph where one was captured (``choice_graph``). Returns (estimates, patterns, fallbacks)."""
    if patterns is not None and families is not None:
        raise ValueError("give fixed head patterns (patterns=) or the families to size (families=), not both")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if patterns is not None:
        return Estimates(q, k, ctx, scale), tuple(patterns), {}
    families = None if families is None else tuple(families)
    choose = functools.partial(policy.choice_tables, ctx=ctx, density=density, target=policy.TARGET, families=families)
    key = (tuple(q.shape), tuple(k.shape), q.dtype, q.device, scale, density, families)
    estimates, tables = choice_graph.estimate_and_choose(q, k, ctx, scale, choose, key)
    patterns, fallbacks = policy.patterns_from_tables(policy.read_tables(tables, ctx), ctx, policy.MIN_RECALL, density,
                                                      families)
    return estimates, tuple(patterns), fallbacks


def head_density(indexes, heads_q: int, n: int, device) -> torch.Tensor:
    """Per query head, the sum over its launches (a head may run in two: ``layer_index.grid_rows``): dense
    heads count 1, and the sparse launches' densities are added in one ``index_add`` (in launch
    order, as one per launch would) rather than a few ops per launch group."""
    dense = set(launch.dense_heads(indexes))
    base = device_list([h in dense for h in range(heads_q)], device, torch.float32)  # cached: never written
    sparse = [(ids, index) for ids, index in indexes if index is not None]
    if not sparse:
        return base.clone()
    per_launch = [index.density(n) for _, index in sparse]  # [B, H of the launch] each
    values = (per_launch[0] if len(per_launch) == 1 else torch.cat(per_launch, dim=1)).mean(0)
    return base.index_add(0, device_list([h for ids, _ in sparse for h in ids], device), values)
