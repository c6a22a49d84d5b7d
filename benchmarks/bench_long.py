"""Time to first token at 512K-1M tokens with the KV cache kept (what ``generate`` needs), issue 14.

Usage: python benchmarks/bench_long.py --tokens 1048576 [--layers 28] [--local 16384] [--no-eager]
                                      [--eager-reps 0] [--seq-chunk 65536] [--dense-layers 1,2] [--out DIR]

The standard-shape language model (``bench_e2e.build_model``, random weights, bf16, batch 1) is fed
``inputs_embeds`` with ``use_cache=True``; the prefill's DynamicCache stays alive until the time is
taken, so peak memory includes it. Runs, each with its peak memory:
  * eager HF SDPA, whole; an out-of-memory error is recorded (with torch's message) instead of a time;
  * ``backend="mminference"``, fixed A-shape budget (sink 128 + ``--local``; random weights have no
    structure, so a recall-driven policy would run dense), whole; its density is printed;
  * the backend's dense path (``force_dense``: SDPA attention, the chunked MLP) on ``--dense-layers``
    layers: the per-layer slope and intercept extrapolate a dense prefill of ``--layers`` layers
    where eager does not fit ("extrapolated" in the output).
One call per run after the first (the first includes compilation); ``--eager-reps 0`` times eager's
first call (nothing to compile: a 28-layer eager prefill at 512K takes minutes). ``--seq-chunk``:
the backend's ``seq_chunk`` option; the chunking pass unrolls N / seq_chunk pieces per MLP and
norm, and Inductor's compile time grows with that count (about 14 s per piece of a 28-layer model
on the H200: 64K pieces at 1M keep the compile near 4 minutes). Prints one dict per run and a
table last; writes DIR/bench_long_<tokens>.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_e2e import build_model  # noqa: E402
from common import environment  # noqa: E402


def prefill(module, lm_head, embeds, position_ids) -> float:
    """Seconds of one prefill and its last-token logits, the cache kept until it returns."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        out = module(inputs_embeds=embeds, position_ids=position_ids, use_cache=True)
        lm_head(out.last_hidden_state[:, -1:])
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del out
    return seconds


def run(name, module, lm_head, embeds, position_ids, reps):
    """{name, first_call_s, seconds (median of reps), peak_gib} or {name, error, peak_gib} on OOM."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        first = prefill(module, lm_head, embeds, position_ids)
        samples = [prefill(module, lm_head, embeds, position_ids) for _ in range(reps)]
    except torch.cuda.OutOfMemoryError as e:
        gc.collect()
        torch.cuda.empty_cache()
        return dict(name=name, error=f"out of memory: {str(e).splitlines()[0][:160]}",
                    peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    samples = samples or [first]
    return dict(name=name, first_call_s=first, seconds=sorted(samples)[len(samples) // 2],
                peak_gib=torch.cuda.max_memory_allocated() / 2**30)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1048576)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--local", type=int, default=16384)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--eager-reps", type=int, default=None, help="reps of the eager run (default: --reps)")
    parser.add_argument("--seq-chunk", type=int, default=32768, help="the backend's seq_chunk option")
    parser.add_argument("--no-eager", action="store_true")
    parser.add_argument("--dense-layers", default="1,2", help="layer counts of the dense runs ('' skips them)")
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    args = parser.parse_args()
    import mmcompile.report as report

    env = environment()
    print(env, flush=True)
    n = args.tokens
    g = torch.Generator(device="cuda").manual_seed(0)
    embeds = torch.randn(1, n, 3584, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    position_ids = torch.arange(n, device="cuda")[None, None].expand(3, 1, n)
    results = dict(env=env, args=vars(args), runs=[])

    def keep(row):
        results["runs"].append(row)
        print(row, flush=True)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"bench_long_{n}.json"), "w") as f:
            json.dump(results, f, indent=1)

    model = build_model(args.layers)
    lm, head = model.model.language_model, model.lm_head
    if not args.no_eager:
        eager_reps = args.reps if args.eager_reps is None else args.eager_reps
        keep(run(f"eager HF SDPA, {args.layers} layers", lm, head, embeds, position_ids, eager_reps))
    options = dict(policy="a-shape", sink=128, local=args.local, min_sparse_len=16384, seq_chunk=args.seq_chunk)
    row = run(f"mminference a-shape sink 128 + local {args.local}, {args.layers} layers",
                 torch.compile(lm, backend="mminference", options=options), head, embeds, position_ids, args.reps)
    stats = report.last_report().graphs[-1].stats if report.last_report().graphs else None
    if stats is not None:
        row.update(sparse_calls=stats.sparse_calls, dense_calls=stats.dense_calls,
                   mean_density=stats.mean_sparse_density())
    keep(row)
    torch._dynamo.reset()
    del model, lm, head
    gc.collect()
    torch.cuda.empty_cache()

    dense = {}
    for layers in (int(x) for x in args.dense_layers.split(",") if x):
        small = build_model(layers)
        compiled = torch.compile(small.model.language_model, backend="mminference",
                                 options=dict(force_dense=True, seq_chunk=args.seq_chunk))
        row = run(f"mminference force_dense, {layers} layers", compiled, small.lm_head, embeds, position_ids,
                     args.reps)
        keep(row)
        if "seconds" in row:
            dense[layers] = row["seconds"]
        torch._dynamo.reset()
        del small, compiled
        gc.collect()
        torch.cuda.empty_cache()
    if len(dense) >= 2:
        (l1, t1), (l2, t2) = sorted(dense.items())[:2]
        per_layer = (t2 - t1) / (l2 - l1)
        keep(dict(name=f"dense prefill, {args.layers} layers (extrapolated from {l1} and {l2} layers)",
                  seconds=t1 + per_layer * (args.layers - l1), per_layer_s=per_layer))
    print("=== table ===")
    for r in results["runs"]:
        what = f"{r['seconds']:.2f} s" if "seconds" in r else r.get("error", "")
        peak = f", peak {r['peak_gib']:.1f} GiB" if "peak_gib" in r else ""
        density = f", density {r['mean_density']:.4f}" if r.get("mean_density") is not None else ""
        print(f"{n} tokens | {r['name']}: {what}{peak}{density}")


if __name__ == "__main__":
    main()
