"""Fidelity and speed of the whole sparse op on planted-structure inputs (issue 3).

Usage: python benchmarks/fidelity.py [--tokens 131072] [--layout video|mixed|text] [--density 0.1]
                                    [--heads 28/4] [--out DIR]

Builds the standard layout (BENCHMARKING.md), plants structure per head, chooses patterns with the
default policy, runs layer_attention, and prints per-head-kind recall, output error, cosine and
density on sampled rows against dense float32 attention. On a GPU it also times the whole op
(estimation + index + kernel) and its parts against SDPA flash, SDPA default (cuDNN) and compiled
FlexAttention on exactly the element mask of the layer's indexes (``flex_baseline.flex_for_layer``;
its mask build is timed apart and not included).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

from mmcompile.patterns import forward_context, layer_attention  # noqa: E402
from mmcompile.patterns.launch import attend  # noqa: E402
from mmcompile.patterns.layer_index import build_layer_indexes  # noqa: E402
from mmcompile.patterns.fidelity import head_fidelity, layer_row_masks, sample_rows  # noqa: E402
from mmcompile.patterns.planted import planted_qkv, standard_layout  # noqa: E402
from mmcompile.patterns.policy import choose_patterns  # noqa: E402


PROFILE = False
FLEX = True
RECALL = 0.95


def run(args):
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    heads_q, heads_kv = (int(x) for x in args.heads.split("/"))
    layout = standard_layout(args.layout, args.tokens)
    q, k, v, kinds = planted_qkv(layout, heads_q, heads_kv, args.head_dim, device, dtype, seed=args.seed,
                                  periodic_frames=args.periodic_frames)
    block = (128, 64) if cuda else (64, 64)
    ctx = forward_context(layout, args.tokens, 1, device, *block)
    result = layer_attention(q, k, v, ctx, density=args.density, recall=args.recall or None)  # as the op runs it
    out, groups, patterns, density = result.out, result.indexes, result.patterns, result.head_density
    rows = sample_rows(args.tokens, args.rows, device)
    masks = layer_row_masks(groups, rows, args.tokens, heads_q)
    fid = head_fidelity(q, k, v, out, masks, rows)
    by_kind = collections.defaultdict(list)
    for h in range(heads_q):
        chosen = "/".join(f"{m}:{type(p).__name__}" if m != "*" else type(p).__name__
                          for m, p in patterns[h].intra)
        by_kind[kinds[h]].append((chosen, fid["recall"][h].item(), fid["rel_err"][h].item(),
                                  fid["cosine"][h].item(), density[h].item()))
    print(f"layout={args.layout} tokens={args.tokens} heads={args.heads} budget={args.density} device={device}")
    print(f"{'planted':15s} {'chosen':40s} {'recall':>7s} {'rel err':>8s} {'cosine':>7s} {'density':>8s}")
    for kind, items in by_kind.items():
        chosen = ",".join(sorted({c for c, *_ in items}))
        mean = [sum(x[i] for x in items) / len(items) for i in range(1, 5)]
        print(f"{kind:15s} {chosen[:40]:40s} {mean[0]:7.4f} {mean[1]:8.4f} {mean[2]:7.4f} {mean[3]:8.4f}")
    recall = fid["recall"].sort().values
    worst = recall[: max(1, heads_q // 20)].mean().item()
    print(f"ALL mean recall {recall.mean().item():.4f}, worst 5% heads {worst:.4f}, "
          f"mean rel err {fid['rel_err'].mean().item():.4f}, mean density {density.mean().item():.4f}")
    if cuda:
        time_op(q, k, v, ctx, patterns)


def time_op(q, k, v, ctx, patterns):
    import torch.nn.functional as F
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")

    def flash():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def policy_and_op():  # what a layer does without a plan: shared estimates, choice, index, verify, kernel
        return layer_attention(q, k, v, ctx, recall=RECALL).out

    cudnn = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    with_policy = bench(policy_and_op)
    whole = bench(lambda: layer_attention(q, k, v, ctx, patterns).out)
    index_ms = bench(lambda: build_layer_indexes(q, k, patterns, ctx))
    indexes = build_layer_indexes(q, k, patterns, ctx)
    kernel_ms = bench(lambda: attend(q, k, v, indexes))
    choose = bench(lambda: choose_patterns(q, k, ctx))
    fl = bench(flash)
    print(f"parts: estimate+index {index_ms:.2f} ms, kernel {kernel_ms:.2f} ms; "
          f"policy+estimate+index+kernel {with_policy:.2f} ms (x cuDNN {cudnn / with_policy:.2f})")
    if PROFILE:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            build_layer_indexes(q, k, patterns, ctx)
            choose_patterns(q, k, ctx)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=40))
    print(f"whole op (estimate+index+kernel) {whole:.2f} ms | policy choice {choose:.2f} ms | "
          f"SDPA flash {fl:.2f} ms | SDPA cuDNN {cudnn:.2f} ms | x cuDNN {cudnn / whole:.2f} | x flash {fl / whole:.2f}")
    if FLEX:
        time_flex(q, k, v, indexes, whole, kernel_ms)


def time_flex(q, k, v, indexes, whole, kernel_ms):
    """Compiled flex on the same element mask as ``indexes``; a failure (e.g. out of memory) is
    printed, not raised, so the numbers above stay."""
    import triton
    from flex_baseline import flex_for_layer
    try:
        start = time.perf_counter()
        call, build_ms, flex_density = flex_for_layer(q, k, v, indexes, q.shape[2])
        call()  # compiles
        torch.cuda.synchronize()
        setup_s = time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        call()
        end.record()
        torch.cuda.synchronize()
        once = begin.elapsed_time(end)
        # Calls over ~100 ms: a few repetitions, every sample printed (BENCHMARKING.md).
        samples = triton.testing.do_bench(call, warmup=50, rep=max(300, 5 * once), return_mode="all")
        flex = statistics.median(samples)
    except Exception as e:  # noqa: BLE001  (report, do not hide, a flex failure)
        print(f"flex (same mask) failed: {type(e).__name__}: {str(e)[:300]}")
        return
    finally:
        torch.cuda.empty_cache()
    shown = f" (samples {', '.join(f'{x:.1f}' for x in samples)})" if flex > 100 else ""
    print(f"flex (same mask) {flex:.2f} ms{shown} | whole op / flex = {whole / flex:.3f}x (x flex {flex / whole:.2f}) "
          f"| kernel / flex = {kernel_ms / flex:.3f}x | flex visits {flex_density:.1%} of the causal blocks "
          f"(full + partial, 128x128; partial blocks evaluate the mask_mod per element) | "
          f"flex mask build {build_ms:.0f} ms, not included (setup with compiles {setup_s:.0f} s)")


def main():
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=131072 if cuda else 4096)
    parser.add_argument("--layout", default="video", choices=("video", "mixed", "text"))
    parser.add_argument("--heads", default="28/4" if cuda else "8/2")
    parser.add_argument("--head-dim", type=int, default=128 if cuda else 64)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--recall", type=float, default=0.95, help="the op's recall target (0: no check)")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--periodic-frames", type=float, default=0.0,
                        help="planted grid heads also attend to the same patch in earlier frames (what Grid is for)")
    parser.add_argument("--profile", action="store_true", help="profile index building and the policy")
    parser.add_argument("--no-flex", action="store_true", help="skip compiled flex on the same mask")
    args = parser.parse_args()
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    global PROFILE, FLEX, RECALL
    PROFILE, FLEX, RECALL = args.profile, not args.no_flex, args.recall or None
    start = time.perf_counter()
    run(args)
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
