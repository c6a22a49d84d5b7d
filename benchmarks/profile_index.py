"""Where estimation and index building spend their time: wall time per part, and per part the
host (CPU) time against the GPU time, on the planted 128K video input of ``fidelity.py``; then
their peak memory above q/k/v, as the op runs them (``layer.prepare_layer``: estimate, head
choice, indexes) and with the plan given (estimate, indexes).

Usage: python benchmarks/profile_index.py [--tokens 131072] [--layout video|mixed] [--memory-only]
       [--device cuda|cpu]   (``--device cpu`` implies ``--memory-only``: ``benchmarks/index_memory.py``)

A part whose CPU time exceeds its GPU time is launch-bound (fewer, larger ops help); the other way
round it is memory- or compute-bound (less traffic helps).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from mmcompile.patterns import (estimate, forward_context, index_builder, index_columns, intra, launch, layer, layer_index,
                                policy, verify)
from mmcompile.patterns.planted import planted_qkv, standard_layout
from mmcompile.patterns.policy import choose_patterns

PARTS = [(estimate, "line_scores"), (estimate, "column_slash"), (intra, "vertical_slash_sets"),
         (intra, "a_shape_sets"), (intra, "grid_sets"), (index_builder, "_dedup_compact"),
         (index_builder, "_fill"), (index_columns, "per_block_columns"), (index_columns, "shared_counts"),
         (layer_index, "build_index"), (launch, "attend"), (policy, "_choose_one"),
         (policy, "_a_shape"), (policy, "_vertical_slash"), (policy, "_grid"), (intra, "column_scores"),
         (policy, "choose_with_fallbacks"), (estimate, "dense_row_lse"), (verify, "held_out_recall"),
         (launch, "sdpa_heads")]


def _labelled(module, name):
    fn = getattr(module, name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(f"part:{name}"):
            return fn(*args, **kwargs)
    setattr(module, name, wrapper)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--layout", default="video")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory lines")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    layout = standard_layout(args.layout, args.tokens)
    q, k, v, _ = planted_qkv(layout, 28, 4, 128, args.device, torch.bfloat16, seed=0)
    ctx = forward_context(layout, args.tokens, 1, args.device, 128, 64)
    patterns = choose_patterns(q, k, ctx)
    if args.memory_only or args.device != "cuda":
        _memory(q, k, ctx, patterns, args)
        return
    _profile(q, k, v, ctx, patterns)
    _memory(q, k, ctx, patterns, args)
    _whole_op(q, k, v, ctx, patterns)


def _memory(q, k, ctx, patterns, args):
    """Peak above q/k/v (which exist before): the op's path with the choice, then with the plan given."""
    from index_memory import peak_above

    layer.prepare_layer(q, k, ctx)  # warm: kernels compiled, caches and library workspaces made
    for label, plan in (("", None), (", plan given", patterns)):
        _, peak, _ = peak_above(lambda: layer.prepare_layer(q, k, ctx, plan), args.device)
        what = "estimate + index" if plan is not None else "estimate + policy + index, as the op runs them"
        print(f"index building peak memory above q/k/v{label}: {peak / 2**30:.2f} GiB ({what}; "
              f"tokens {args.tokens}, 28/4 heads, {args.device})", flush=True)


def _profile(q, k, v, ctx, patterns):
    import triton
    bench = functools.partial(triton.testing.do_bench, warmup=25, rep=200, return_mode="median")
    wall = {"build_layer_indexes": bench(lambda: layer_index.build_layer_indexes(q, k, patterns, ctx)),
            "choose_patterns": bench(lambda: choose_patterns(q, k, ctx)),
            "prepare_layer (estimate + policy + index)": bench(lambda: layer.prepare_layer(q, k, ctx))}
    for module, name in PARTS:
        _labelled(module, name)
    for _ in range(3):
        layer_index.build_layer_indexes(q, k, patterns, ctx)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function("part:WHOLE build_layer_indexes"):
            layer_index.build_layer_indexes(q, k, patterns, ctx)
        torch.cuda.synchronize()
        with record_function("part:WHOLE policy"):
            policy.choose_with_fallbacks(q, k, ctx)
        torch.cuda.synchronize()
        with record_function("part:WHOLE layer_attention, online, recall 0.95 (as the op runs it)"):
            layer.layer_attention(q, k, v, ctx, recall=0.95)
        torch.cuda.synchronize()
    events = prof.key_averages()
    print(events.table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=50))
    print(events.table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=50))
    launches = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    print(f"GPU kernels launched: {launches}")
    print(f"{'part':40s} {'calls':>6s} {'CPU ms':>8s} {'GPU ms':>8s}")
    for e in events:
        if e.key.startswith("part:"):
            gpu = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0))
            print(f"{e.key[5:]:40s} {e.count:6d} {e.cpu_time_total / 1e3:8.2f} {gpu / 1e3:8.2f}")
    for name, ms in wall.items():
        print(f"wall {name}: {ms:.2f} ms")


def _whole_op(q, k, v, ctx, patterns):
    layer.layer_attention(q, k, v, ctx, patterns).out  # the whole op once more (checks the kernel at this size)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    layer.layer_attention(q, k, v, ctx, patterns).out
    end.record()
    torch.cuda.synchronize()
    print(f"whole op (plan given): {start.elapsed_time(end):.1f} ms, one call; peak memory "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB in all")


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # index_memory
    main()
