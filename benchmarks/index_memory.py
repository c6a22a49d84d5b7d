"""Peak memory above q/k/v of what the op does before its kernel (``patterns.layer.prepare_layer``:
estimation, the head choice, index building), per part, and how it grows with the length.

Usage: python benchmarks/index_memory.py [--tokens 32768,65536,131072] [--heads 28/4] [--device cpu]
       [--layout video] [--plan online|given|both] [--tile 1] [--out index_memory.json]

``--tile T`` plants heads/T query and KV heads and repeats each T times (the planted generator holds
fp32 copies of Q: 28 heads at 1M need ~30 GB of host memory).

On CUDA the peak is ``torch.cuda.max_memory_allocated`` above what was allocated before the call.
On a CPU it is replayed from the allocations ``torch.profiler`` records (``profile_memory=True``),
with each part's peak above what was live when the part began (parts nest: a part's peak includes
its callees'). A CPU measures the CPU paths: PyTorch estimation and column compaction instead of
their Triton kernels, whose temporaries are the same or smaller (the kernels allocate only their
outputs), so it bounds the GPU's. "index" is what the returned indexes hold, "estimate" the line
scores the layer keeps (both are in the peak).
"""

from __future__ import annotations

import argparse
import bisect
import functools
import json
import os
import time
from contextlib import contextmanager

import torch
from torch.profiler import ProfilerActivity, profile, record_function

PARTS = [("estimate", "line_scores"), ("estimate", "column_slash"), ("policy", "choose_with_fallbacks"),
         ("policy", "_choose_one"), ("intra", "vertical_slash_sets"), ("intra", "grid_sets"),
         ("layer", "build_layer_indexes"), ("layer", "_plain_index"), ("layer", "_grid_index"),
         ("layer", "build_index"), ("index_builder", "_fill")]  # (module, name) as the caller looks it up
GIB = 2 ** 30


@contextmanager
def labelled(parts=PARTS):
    """Wraps ``mmcompile.patterns.<module>.<name>`` in ``record_function("part:<name>")`` for the
    duration (modules that imported a name directly keep the unwrapped one)."""
    import importlib
    saved = []
    for module_name, name in parts:
        module = importlib.import_module(f"mmcompile.patterns.{module_name}")
        fn = getattr(module, name)

        def wrapper(*args, _fn=fn, _name=name, **kwargs):
            with record_function(f"part:{_name}"):
                return _fn(*args, **kwargs)
        setattr(module, name, functools.wraps(fn)(wrapper))
        saved.append((module, name, fn))
    try:
        yield
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


def cpu_peak(fn):
    """(result, peak bytes above the start, {part: peak bytes above its start}) of ``fn()`` on the
    CPU, from the profiler's allocation records (frees of older tensors count negative)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = prof.profiler.kineto_results.events()
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    times, live, total = [t for t, _ in memory], [], 0
    for _, nbytes in memory:
        total += nbytes
        live.append(total)
    parts = {}
    for e in events:
        if e.name().startswith("part:"):
            lo, hi = bisect.bisect_left(times, e.start_ns()), bisect.bisect_right(times, e.end_ns())
            base = live[lo - 1] if lo > 0 else 0
            name = e.name()[5:]
            parts[name] = max(parts.get(name, 0), max(live[lo:hi], default=base) - base)
    return result, max(live, default=0), parts


def cuda_peak(fn):
    """(result, peak bytes above the start, {}) of ``fn()`` on the current CUDA device."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_allocated() - base, {}


def peak_above(fn, device):
    return cuda_peak(fn) if torch.device(device).type == "cuda" else cpu_peak(fn)


def index_bytes(indexes) -> int:
    """Bytes the launch groups' indexes hold (orders included)."""
    total = 0
    for _, index in indexes:
        if index is not None:
            total += sum(t.numel() * t.element_size() for t in index.tensors() if isinstance(t, torch.Tensor))
    return total


def estimate_bytes(estimates) -> int:
    """Bytes of the line scores the layer's ``Estimates`` keeps."""
    total = 0
    for value in estimates._cache.values():
        tensors = [value] if isinstance(value, torch.Tensor) else [value.vertical, value.slash, value.lse]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def measure(q, k, ctx, patterns=None, device="cpu"):
    """One ``prepare_layer`` call: a dict of GiB (peak, per part, index, estimate) and the patterns."""
    from mmcompile.patterns.layer import prepare_layer

    start = time.perf_counter()
    with labelled():
        (estimates, chosen, _, indexes), peak, parts = peak_above(lambda: prepare_layer(q, k, ctx, patterns), device)
    row = dict(seconds=time.perf_counter() - start, peak=peak / GIB, index=index_bytes(indexes) / GIB,
               estimate=estimate_bytes(estimates) / GIB, parts={p: b / GIB for p, b in parts.items()})
    return row, chosen


def main():
    from mmcompile.patterns import forward_context
    from mmcompile.patterns.planted import planted_qkv, standard_layout

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="32768,65536,131072")
    parser.add_argument("--heads", default="28/4")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layout", default="video")
    parser.add_argument("--plan", default="both", choices=["online", "given", "both"])
    parser.add_argument("--tile", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    heads_q, heads_kv = (int(x) for x in args.heads.split("/"))
    dtype = torch.bfloat16
    print(f"torch {torch.__version__}, device {args.device}, layout {args.layout}, heads {heads_q}/{heads_kv}, "
          f"D=128, {dtype}, TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")
    rows = []
    for n in (int(t) for t in args.tokens.split(",")):
        layout = standard_layout(args.layout, n)
        q, k, _, _ = planted_qkv(layout, heads_q // args.tile, heads_kv // args.tile, 128, args.device, dtype, seed=0)
        if args.tile > 1:  # each planted KV group repeated: [g0, g0, g1, g1, ...] keeps GQA's grouping
            q = q.view(1, heads_kv // args.tile, 1, -1, *q.shape[2:]).expand(-1, -1, args.tile, -1, -1, -1)
            q, k = q.reshape(1, heads_q, *q.shape[-2:]), k.repeat_interleave(args.tile, 1)
        ctx = forward_context(layout, n, 1, args.device, 128, 64)
        online, patterns = measure(q, k, ctx, None, args.device)
        plans = {"online": online}
        if args.plan in ("given", "both"):
            plans["given"] = measure(q, k, ctx, patterns, args.device)[0]
        for plan, row in plans.items():
            if args.plan != "both" and plan != args.plan:
                continue
            row.update(tokens=n, plan=plan, heads=args.heads, tile=args.tile, device=args.device)
            rows.append(row)
            parts = ", ".join(f"{p} {b:.3f}" for p, b in sorted(row["parts"].items(), key=lambda x: -x[1]))
            print(f"tokens {n} plan {plan}: peak {row['peak']:.3f} GiB above q/k/v (index {row['index']:.3f}, "
                  f"estimate {row['estimate']:.3f}; {row['seconds']:.1f} s) | parts: {parts}", flush=True)
        del q, k
    for plan in ("online", "given"):
        got = [r for r in rows if r["plan"] == plan]
        for a, b in zip(got, got[1:]):
            print(f"{plan}: x{b['tokens'] / a['tokens']:.0f} tokens -> peak x{b['peak'] / a['peak']:.2f}, "
                  f"index x{b['index'] / max(a['index'], 1e-12):.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
