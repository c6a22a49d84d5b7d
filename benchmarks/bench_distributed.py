"""Scaling of head-parallel prefill attention from 1 rank to N (issue 5).

Usage: torchrun --nproc-per-node N benchmarks/bench_distributed.py --out DIR/distributed.json
           [--tokens 1048576] [--heads 28/4] [--head-dim 128] [--density 0.1] [--layout video]
           [--mode ulysses|tp] [--policies online,dense,sdpa] [--ranks 1,2,4,...] [--repeat 3]
CPU check: torchrun --nproc-per-node 2 benchmarks/bench_distributed.py --tokens 2048 --out /tmp/d.json

One torchrun launch measures every rank count: for r in --ranks (default 1, 2, 4, ... up to the
world size) ranks 0..r-1 form a group and run one layer's attention on their shards while the rest
wait. Policies: ``online`` (per-head patterns chosen on each rank: estimation, choice, index and
kernel all timed), ``dense`` (our dense kernel: a plan of Dense heads) and ``sdpa`` (PyTorch SDPA on
each rank's heads, the usual Ulysses baseline). Ulysses times include both all-to-alls; ``comm_ms``
times them alone. Scaling efficiency = t1 / (r * t_r). Every r-rank output is gathered and compared
with the 1-rank output of the same policy; the online output is also compared with the dense one.
Times are wall clock between barriers, the slowest rank's (not CUDA events: the op syncs with the
host to choose patterns, and a collective's time is only over when its slowest rank is done).
Inputs: planted structure (``planted_qkv``) on the standard layout, bf16 on GPUs, fp32 on the CPU.
Head parallelism needs every rank count to divide the KV heads: for 28/4 heads that is 1, 2 or 4
ranks (on 8 GPUs the default measures 1, 2 and 4; heads such as 32/8 use all 8).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import torch

if not torch.cuda.is_available():  # before any kernel module is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

from common import environment, rel_error, write_json  # noqa: E402
from mmcompile.distributed import (head_shard, heads_to_seq, init_from_torchrun, rank_world,  # noqa: E402
                                   sequence_shard, seq_to_heads, tensor_parallel_attention, ulysses_attention)
from mmcompile.patterns import DEFAULT_BLOCK, Dense, HeadPattern, forward_context  # noqa: E402
from mmcompile.patterns.fidelity import index_density  # noqa: E402
from mmcompile.patterns.layer_index import build_layer_indexes  # noqa: E402
from mmcompile.patterns.planted import planted_qkv, standard_layout  # noqa: E402
from mmcompile.patterns.policy import choose_patterns  # noqa: E402


def sdpa_heads(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])


def make_op(policy, mode, ctx, heads_q, density, group):
    """The per-rank call of one policy: (q, k, v of this rank) -> output of this rank."""
    if policy == "sdpa":
        if mode == "tp":
            return sdpa_heads
        return lambda q, k, v: heads_to_seq(sdpa_heads(*seq_to_heads(q, k, v, group=group)), group=group)
    plan = [HeadPattern("none", (("*", Dense()),))] * heads_q if policy == "dense" else None
    attention = ulysses_attention if mode == "ulysses" else tensor_parallel_attention
    return lambda q, k, v: attention(q, k, v, ctx, plan, density=density, group=group)


def timed(fn, group, device, warmup: int, repeat: int) -> dict:
    """Median over ``repeat`` calls of the slowest member's wall time, in ms."""
    samples = []
    for i in range(warmup + repeat):
        dist.barrier(group=group)
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        took = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=device)
        dist.all_reduce(took, op=dist.ReduceOp.MAX, group=group)
        if i >= warmup:
            samples.append(took.item() * 1e3)
    return dict(ms=sorted(samples)[len(samples) // 2], samples=samples)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def shards(q, k, v, mode, heads_q, heads_kv, r, rank):
    if mode == "ulysses":
        return [sequence_shard(t, r, rank).contiguous() for t in (q, k, v)]
    s = head_shard(heads_q, heads_kv, r, rank)
    return [q[:, s.q].contiguous(), k[:, s.kv].contiguous(), v[:, s.kv].contiguous()]


def gather_whole(out, mode, r, rank, group):
    """Rank 0 gets the whole layer output of the r members (None elsewhere)."""
    if r == 1:
        return out
    parts = [torch.empty_like(out) for _ in range(r)] if rank == 0 else None
    dist.gather(out, parts, dst=0, group=group)
    return torch.cat(parts, dim=2 if mode == "ulysses" else 1) if rank == 0 else None


def summary(q, k, ctx, density):
    """Chosen pattern kinds and mean index density of the whole layer (one process, untimed)."""
    patterns = choose_patterns(q, k, ctx, density=density)
    kinds = {}
    for h in patterns:
        name = "/".join(f"{m}:{type(p).__name__}" for m, p in h.intra)
        kinds[name] = kinds.get(name, 0) + 1
    dens, count = 0.0, 0
    for head_ids, index in build_layer_indexes(q, k, patterns, ctx):
        dens += float(index_density(index, ctx.n).sum()) if index is not None else len(head_ids)
        count += len(head_ids)
    return dict(patterns=kinds, density=dens / count)


def main():
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON output path")
    p.add_argument("--tokens", type=int, default=1 << 20)
    p.add_argument("--heads", default="28/4", help="query heads / KV heads")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--layout", default="video", choices=("video", "mixed", "text"))
    p.add_argument("--mode", default="ulysses", choices=("ulysses", "tp"))
    p.add_argument("--policies", default="online,dense,sdpa")
    p.add_argument("--ranks", default=None,
                   help="rank counts, e.g. 1,2,4 (default: 1, powers of 2 and the world size that split the heads)")
    p.add_argument("--repeat", type=int, default=3 if cuda else 1)
    p.add_argument("--warmup", type=int, default=1 if cuda else 0)
    args = p.parse_args()

    # Ranks outside a group wait at a barrier while the 1-rank run works: more than the default 10 min at 1M.
    rank, world, device = init_from_torchrun(timeout=datetime.timedelta(hours=1))
    heads_q, heads_kv = (int(x) for x in args.heads.split("/"))
    counts = ([int(x) for x in args.ranks.split(",")] if args.ranks else
              sorted(r for r in {world} | {1 << i for i in range(world.bit_length())}
                     if r <= world and heads_kv % r == 0 and args.tokens % r == 0))
    if counts[0] != 1 or counts[-1] > world:
        raise SystemExit(f"--ranks must start at 1 and stay within the world of {world}: {counts}")
    for r in counts:
        head_shard(heads_q, heads_kv, r, 0)  # refuse impossible splits before any work
        if args.mode == "ulysses" and args.tokens % r:
            raise SystemExit(f"--tokens {args.tokens} does not split into {r} equal shards")
    groups = {r: dist.new_group(list(range(r))) for r in counts}  # every rank must create every group
    dtype = torch.bfloat16 if cuda else torch.float32  # bf16 tl.dot is wrong in the interpreter
    block = DEFAULT_BLOCK if cuda else (64, 64)
    layout = standard_layout(args.layout, args.tokens)
    q, k, v, _ = planted_qkv(layout, heads_q, heads_kv, args.head_dim, device, dtype, seed=0)
    ctx = forward_context(layout, args.tokens, 1, device, *block)
    policies = args.policies.split(",")
    policies.sort(key=lambda name: name != "dense")  # dense first: the online output is compared with it

    results, single, dense_out = [], None, None
    info = summary(q, k, ctx, args.density) if rank == 0 and "online" in policies else {}
    for policy in policies:
        for r in counts:
            group = groups[r]
            if rank < r:
                mine = shards(q, k, v, args.mode, heads_q, heads_kv, r, rank)
                op = make_op(policy, args.mode, ctx, heads_q, args.density, group)
                time_op = timed(lambda: op(*mine), group, device, args.warmup, args.repeat)
                time_comm = comm_ms(mine, args.mode, group, device, args.warmup, args.repeat)
                whole = gather_whole(op(*mine), args.mode, r, rank, group)
                del mine
            dist.barrier()
            if rank != 0:
                continue
            if r == 1:
                single = whole
            row = dict(policy=policy, ranks=r, ms=time_op["ms"], samples=time_op["samples"], comm_ms=time_comm,
                       efficiency=results_t1(results, policy, time_op["ms"]) / (r * time_op["ms"]),
                       max_abs_diff_vs_1_rank=(whole.float() - single.float()).abs().max().item())
            if policy == "online" and dense_out is not None:
                row["rel_err_vs_dense"] = rel_error(whole, dense_out)
            results.append(row)
            print(f"{policy:7s} ranks {r:2d}: {row['ms']:10.1f} ms  comm {time_comm:8.1f} ms  "
                  f"efficiency {row['efficiency']:.2f}  max diff vs 1 rank {row['max_abs_diff_vs_1_rank']:.2g}",
                  flush=True)
        if rank == 0 and policy == "dense":
            dense_out = single
    if rank == 0:
        payload = dict(env=environment(), backend=dist.get_backend(), world=world, args=vars(args),
                       dtype=str(dtype), block=block, **info, results=results)
        write_json(args.out, payload)
        print(f"wrote {args.out}")
    dist.destroy_process_group()


def results_t1(results, policy, fallback):
    """The 1-rank time of ``policy`` (this row's own time when this row is the 1-rank run)."""
    return next((row["ms"] for row in results if row["policy"] == policy and row["ranks"] == 1), fallback)


def comm_ms(mine, mode, group, device, warmup, repeat):
    """The two Ulysses all-to-alls alone (q, k, v in; an output-sized tensor back)."""
    _, r = rank_world(group)
    if mode != "ulysses" or r == 1:
        return 0.0

    def exchange():
        q, _, _ = seq_to_heads(*mine, group=group)
        heads_to_seq(q, group=group)
    return timed(exchange, group, device, warmup, repeat)["ms"]


if __name__ == "__main__":
    main()
