"""What the held-out check and its repairs cost beside the patterns they end with, on the op's
planted input: is the layer's time in the patterns it needs (dense heads, dense rows) or in getting
there (a check, retries, a second check, a separate launch for the rows that missed)?

Usage: python benchmarks/check_cost.py [--tokens 131072] [--layout video|mixed] [--reps 10] [--heads 28/4]
                                      [--plan PLAN.json]

Runs of ``layer_attention`` on one input (the same estimate, choice and kernels as the op):
  checked  the default: first choice, check, fallbacks, dense rows or heads (recall 0.95);
  final    the patterns ``checked`` ended with, given as fixed patterns: no check, and a row set it
           sent dense runs as a Dense set inside its head's launch (not in a launch of its own);
  one-stage  ``checked`` with each head's first fallback only (the family at the cap, not then
           Grid: the tree before 12-07's Grid stage), by wrapping ``layer.choose_layer``;
  first    the first choice alone, no check (what the op cost before the check existed);
  plan     with ``--plan``: the plan's layer 0 as the op runs it by default (its types sized for the
           input, ``plan_sizes="online"``), checked: what knowing each head's type up front saves.
Each with its time (median of ``--reps`` after warm calls), density and output error against dense
on 256 sampled rows per head (worst head, and the worst head's modality); then how many heads
ended dense, with dense rows, or with a fallback.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import dense_rows_of, environment, timed  # noqa: E402


def head_errors(out, q, k, v, rows, scale):
    """fp32 [Hq]: per head, ||out - dense|| / ||dense|| over ``rows`` (dense in float32)."""
    dense = dense_rows_of(q, k, v, rows, scale)
    diff = (out[0, :, rows].float() - dense).square().sum((-1, -2))
    return (diff / dense.square().sum((-1, -2))).sqrt()


def first_stage_only(layer, run):
    """``run()`` with every head's fallbacks cut to the first (``layer.choose_layer`` wrapped)."""
    choose = layer.choose_layer

    def cut(*args, **kwargs):
        estimates, patterns, fallbacks = choose(*args, **kwargs)
        return estimates, patterns, {h: stages[:1] for h, stages in fallbacks.items()}

    layer.choose_layer = cut
    try:
        return run()
    finally:
        layer.choose_layer = choose


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--layout", default="video", choices=("video", "mixed"))
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--heads", default="28/4", help="query/KV heads")
    parser.add_argument("--plan", default="", help="a plan file (`mminference search standard --source planted "
                        "--layers 1`): its layer 0, checked, as a fifth run")
    args = parser.parse_args()
    from mmcompile.patterns import Dense, forward_context, layer, layer_attention
    from mmcompile.patterns.fidelity import sample_rows
    from mmcompile.patterns.planted import planted_qkv, standard_layout

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n, scale = args.tokens, 128 ** -0.5
    layout = standard_layout(args.layout, n)
    heads_q, heads_kv = map(int, args.heads.split("/"))
    q, k, v, _ = planted_qkv(layout, heads_q, heads_kv, 128, device, dtype)
    ctx = forward_context(layout, n, 1, device)
    rows = sample_rows(n, 256, device)
    checked = layer_attention(q, k, v, ctx, density=0.1, scale=scale, recall=0.95)
    runs = {"checked": lambda: layer_attention(q, k, v, ctx, density=0.1, scale=scale, recall=0.95),
            "final": lambda: layer_attention(q, k, v, ctx, checked.patterns, scale=scale),
            "one-stage": lambda: first_stage_only(layer, lambda: layer_attention(q, k, v, ctx, density=0.1, scale=scale,
                                                                                recall=0.95)),
            "first": lambda: layer_attention(q, k, v, ctx, density=0.1, scale=scale)}
    if args.plan:
        from mmcompile.plans import load_plan
        plan = load_plan(args.plan).for_call(0, heads_q, heads_kv, q.shape[-1]).layers[0]
        runs["plan"] = lambda: layer_attention(q, k, v, ctx, density=0.1, scale=scale, recall=0.95,
                                               **layer.plan_keywords(plan, "online"))
    print(environment())
    lines = []
    with torch.inference_mode():
        for name, run in runs.items():
            result = run()
            ms = timed(run)["ms"] if device == "cuda" else float("nan")
            errors = head_errors(result.out, q, k, v, rows, scale)
            worst = int(errors.argmax())
            lines.append(f"{name:8s} {ms:8.2f} ms  density {float(result.head_density.mean()):.3f}  "
                         f"worst head err {float(errors[worst]):.4f} (h{worst})  mean err {float(errors.mean()):.4f}")
    heads = checked.patterns
    whole = sum(all(isinstance(p, Dense) for _, p in head.intra) for head in heads)
    some = sum(any(isinstance(p, Dense) for _, p in head.intra) for head in heads) - whole
    print(f"{args.layout}, {n} tokens: {whole} heads dense, {some} with dense rows; final patterns:")
    for h, head in enumerate(heads):
        print(f"  h{h:2d} " + " ".join(f"{m}:{type(p).__name__}" for m, p in head.intra))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
