"""The collectives of head parallelism: the Ulysses all-to-alls (sequence shards <-> head shards)
and gathering every rank's chosen patterns. Plain ``torch.distributed`` calls, so NCCL on GPUs and
gloo on the CPU both work."""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_world(group=None) -> tuple[int, int]:
    """(rank in ``group``, its size); (0, 1) when no process group was initialized (one device)."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise RuntimeError("a process group was given but torch.distributed is not initialized")
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def seq_to_heads(*xs: torch.Tensor, group=None) -> list[torch.Tensor]:
    """[B, H_i, N/world, D] sequence shards -> [B, H_i/world, N, D]: this rank's contiguous range of
    heads over the whole sequence. All tensors travel in one all-to-all (one latency, not three)."""
    _, world = rank_world(group)
    _check_same(xs, "seq_to_heads")
    if world == 1:
        return list(xs)
    b, _, ns, d = xs[0].shape
    per = [x.shape[1] // world for x in xs]
    for x in xs:
        if x.shape[1] % world:
            raise ValueError(f"{x.shape[1]} heads do not split over {world} ranks")
    # Chunk j of the send buffer holds destination j's heads of every tensor: [world, B, sum(H_i)/world, Ns, D].
    send = torch.cat([x.reshape(b, world, p, ns, d).transpose(0, 1) for x, p in zip(xs, per)], dim=2).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv chunk j: this rank's heads of sequence shard j
    return [part.permute(1, 2, 0, 3, 4).reshape(b, p, world * ns, d)
            for part, p in zip(recv.split(per, dim=2), per)]


def heads_to_seq(x: torch.Tensor, group=None) -> torch.Tensor:
    """[B, H/world, N, D] head shard -> [B, H, N/world, D]: this rank's sequence shard of all heads."""
    _, world = rank_world(group)
    if world == 1:
        return x
    b, h, n, d = x.shape
    if n % world:
        raise ValueError(f"a sequence of {n} tokens does not split into {world} equal shards")
    send = x.reshape(b, h, world, n // world, d).permute(2, 0, 1, 3, 4).contiguous()  # [world, B, H/world, Ns, D]
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv chunk j: heads of rank j, this sequence shard
    return recv.transpose(0, 1).reshape(b, world * h, n // world, d)


def gather_patterns(patterns: list, group=None) -> list:
    """Every rank's patterns in rank order: the whole layer's choice, e.g. to report or save as a
    plan. A host-side collective (pickled objects): call it once, not per layer in a hot loop."""
    _, world = rank_world(group)
    if world == 1:
        return list(patterns)
    parts = [None] * world
    dist.all_gather_object(parts, list(patterns), group=group)
    return [p for part in parts for p in part]


def _check_same(xs, what):
    if not xs:
        raise ValueError(f"{what} needs at least one tensor")
    b, _, ns, d = xs[0].shape
    for x in xs:
        if x.dim() != 4 or (x.shape[0], x.shape[2], x.shape[3]) != (b, ns, d) or x.dtype != xs[0].dtype:
            raise ValueError(f"{what}: tensors must be [B, H, N/world, D] with the same B, N, D and dtype; "
                             f"got {[(tuple(t.shape), t.dtype) for t in xs]}")
