"""Head-parallel sparse prefill attention across processes, launched with torchrun.

Usage:
  torchrun --nproc-per-node 2 examples/distributed_prefill.py              # CPU: gloo, Triton interpreter, tiny
  torchrun --nproc-per-node 4 examples/distributed_prefill.py --tokens 131072 --mode tp   # GPUs: NCCL
  options: --mode ulysses|tp  --tokens N  --heads HQ/HKV  --head-dim D  --density F  --no-check

Every rank builds the same modality layout (text, video frames, text) and the same planted q/k/v
(same seed), keeps its part (Ulysses: a sequence shard of every head; tp: its heads, whole sequence)
and runs the op; each rank chooses the patterns of its own heads online. Rank 0 prints the
patterns gathered from all ranks and, unless --no-check, the largest difference to the op run in
one process.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter

import torch

if not torch.cuda.is_available():  # before any kernel module is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch.distributed as dist  # noqa: E402

from mmcompile.distributed import (gather_patterns, head_shard, init_from_torchrun, sequence_shard,  # noqa: E402
                                   tensor_parallel_attention, ulysses_attention)
from mmcompile.patterns import DEFAULT_BLOCK, forward_context, layer_attention  # noqa: E402
from mmcompile.patterns.planted import planted_qkv, standard_layout  # noqa: E402
from mmcompile.patterns.policy import choose_patterns  # noqa: E402


def main():
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("ulysses", "tp"), default="ulysses")
    p.add_argument("--tokens", type=int, default=131072 if cuda else 1024)
    p.add_argument("--heads", default="28/4" if cuda else "8/4", help="query heads / KV heads")
    p.add_argument("--head-dim", type=int, default=128 if cuda else 64)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--no-check", action="store_true", help="skip the comparison with one process")
    args = p.parse_args()

    rank, world, device = init_from_torchrun()
    heads_q, heads_kv = (int(x) for x in args.heads.split("/"))
    dtype = torch.bfloat16 if cuda else torch.float32  # bf16 tl.dot is wrong in the interpreter
    block = DEFAULT_BLOCK if cuda else (64, 64)  # small tiles keep the interpreter quick
    layout = standard_layout("video", args.tokens, frame_hw=(16, 16) if cuda else (8, 8))
    q, k, v, _ = planted_qkv(layout, heads_q, heads_kv, args.head_dim, device, dtype, seed=0)
    ctx = forward_context(layout, args.tokens, 1, device, *block)  # whole sequence, on every rank

    if args.mode == "ulysses":
        mine = [sequence_shard(t, world, rank).contiguous() for t in (q, k, v)]
        out, patterns = ulysses_attention(*mine, ctx, density=args.density, return_patterns=True)
    else:
        shard = head_shard(heads_q, heads_kv, world, rank)
        mine = [q[:, shard.q].contiguous(), k[:, shard.kv].contiguous(), v[:, shard.kv].contiguous()]
        out, patterns = tensor_parallel_attention(*mine, ctx, density=args.density, return_patterns=True)
    patterns = gather_patterns(patterns)

    parts = [torch.empty_like(out) for _ in range(world)] if rank == 0 and not args.no_check else None
    if not args.no_check:
        dist.gather(out, parts, dst=0)
    if rank == 0:
        kinds = Counter("/".join(f"{m}:{type(x).__name__}" for m, x in h.intra) for h in patterns)
        print(f"{args.mode} over {world} ranks ({dist.get_backend()}), {args.tokens} tokens, "
              f"heads {heads_q}/{heads_kv}: patterns {dict(kinds)}")
        if parts is not None:
            whole = torch.cat(parts, dim=2 if args.mode == "ulysses" else 1)
            single = layer_attention(q, k, v, ctx, choose_patterns(q, k, ctx, density=args.density)).out
            print(f"largest difference to one process: {(whole.float() - single.float()).abs().max().item():.3g}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
