"""Which heads and tokens each rank owns, checked before any collective runs (a rank that raised
after its peers entered an all-to-all would leave them hanging)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from mmcompile.patterns.specs import HeadPattern


@dataclasses.dataclass(frozen=True)
class HeadShard:
    """One rank's contiguous ranges of query and KV heads.

    Contiguous ranges keep GQA local: with ``group = heads_q // heads_kv`` query heads per KV head,
    rank r owns query heads [r * heads_q / world, ...) and KV heads [r * heads_kv / world, ...), and
    local query head i reads local KV head i // group, as in the unsharded layer.
    """
    rank: int
    world: int
    heads_q: int  # of the whole layer
    heads_kv: int

    @property
    def q(self) -> slice:
        per = self.heads_q // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    @property
    def kv(self) -> slice:
        per = self.heads_kv // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


def head_shard(heads_q: int, heads_kv: int, world: int, rank: int) -> HeadShard:
    """The heads of ``rank`` among ``world``; ValueError if the heads do not split evenly."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    if heads_kv < 1 or heads_q % heads_kv:
        raise ValueError(f"{heads_q} query heads are not a multiple of {heads_kv} KV heads")
    if heads_kv % world:
        raise ValueError(f"{heads_kv} KV heads do not split over {world} ranks: head parallelism needs "
                         f"heads_kv % world == 0, so that each rank owns whole KV heads and the query heads "
                         f"that read them (use a world size dividing {heads_kv})")
    return HeadShard(rank, world, heads_q, heads_kv)


def slice_plan(plan: Sequence[HeadPattern], shard: HeadShard) -> list[HeadPattern]:
    """The patterns of the shard's query heads, from a plan of the whole layer (one per query head)."""
    if len(plan) != shard.heads_q:
        raise ValueError(f"plan has {len(plan)} head patterns for a layer of {shard.heads_q} query heads")
    return list(plan[shard.q])


def sequence_shard(x: torch.Tensor, world: int, rank: int, dim: int = 2) -> torch.Tensor:
    """Rank ``rank``'s equal part of the sequence dimension (a view); ValueError if N % world != 0."""
    n = x.shape[dim]
    if n % world:
        raise ValueError(f"a sequence of {n} tokens does not split into {world} equal shards: Ulysses needs "
                         f"N % world == 0 (pad the sequence to a multiple of {world})")
    per = n // world
    return x.narrow(dim, rank * per, per)
