"""A plan under tensor parallelism: each rank's attention holds ``1 / world`` of the heads, so the
plan of the whole model is sliced by rank the way the heads are (Megatron's contiguous split, as
``mmcompile.distributed.head_shard``: rank r owns query heads [r Hq/w, (r+1) Hq/w) and the KV
heads they read). One plan file serves every rank; a call whose head count is the plan's divided
by the process group's size gets its rank's slice, anything else the usual mismatch error.
"""

from __future__ import annotations

import dataclasses

import torch

from .schema import ModelShape, Plan, PlanError


def shard_plan(plan: Plan, rank: int, world: int) -> Plan:
    """The plan of ``rank`` among ``world`` tensor-parallel ranks: its heads of every layer and
    their scores, for a model shape of ``heads / world``. PlanError when the heads do not split."""
    m = plan.model
    if world < 1 or not 0 <= rank < world:
        raise PlanError(f"rank {rank} is not in a world of {world}")
    if m.heads_kv % world or m.heads_q % world:
        raise PlanError(f"the plan's {m.heads_q} query / {m.heads_kv} KV heads ({m.model_type}) do not split over "
                        f"{world} tensor-parallel ranks (heads_kv % world must be 0)")
    per = m.heads_q // world
    first = rank * per
    return dataclasses.replace(
        plan, model=ModelShape(m.model_type, m.layers, per, m.heads_kv // world, m.head_dim),
        layers={layer: tuple(heads[first:first + per]) for layer, heads in plan.layers.items()},
        scores={(layer, h - first): s for (layer, h), s in plan.scores.items() if first <= h < first + per},
        search={**plan.search, "tensor_parallel": {"rank": rank, "world": world}})


def plan_for_call(plan: Plan, layer: int, heads_q: int, heads_kv: int, head_dim: int,
                  rank_world: tuple[int, int] | None = None) -> Plan:
    """``plan`` when one attention call has its shape; its slice for this rank when the call holds
    the plan's heads divided by the world size (``rank_world``, default: torch.distributed's, or
    (0, 1) without a process group); else PlanError naming both shapes (``Plan.check_fits``)."""
    rank, world = rank_world if rank_world is not None else _rank_world()
    m = plan.model
    if world > 1 and (heads_q * world, heads_kv * world, head_dim) == (m.heads_q, m.heads_kv, m.head_dim):
        plan = shard_plan(plan, rank, world)
    plan.check_fits(layer, heads_q, heads_kv, head_dim)
    return plan


def _rank_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
