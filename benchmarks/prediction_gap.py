"""How far the policy's predicted recall is from the recall of the index it then builds, on the
estimation rows themselves (issue 11, "honest estimates"), per pattern family chosen, over the
planted structure families (``mmcompile.patterns.families``).

Usage: python benchmarks/prediction_gap.py [--tokens 8192] [--layout mixed|video] [--heads 8/2]
                                           [--seed 1] [--device cpu|cuda]

For every family and row set: the policy's tables (``policy.choice_tables``: the predicted recall
of each head's chosen pattern), the built indexes (``layer_index.build_layer_indexes``), and the exact
recall of those indexes on the estimation rows (the rows' dense float32 softmax summed over the
keys each row visits, ``fidelity.layer_row_masks``). Prints predicted minus exact per chosen
family (mean, largest over-prediction, largest under-prediction) and the worst heads. Grid is a
lower bound by design; A-shape and VS should be exact where a query block holds one modality and
never over where it holds several (it then visits both modalities' sets).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main():
    from mmcompile.patterns import forward_context, policy
    from mmcompile.patterns.estimates import Estimates
    from mmcompile.patterns.layer_index import build_layer_indexes
    from mmcompile.patterns.estimate import last_query_probs
    from mmcompile.patterns.families import FAMILIES, family_layout, family_qkv
    from mmcompile.patterns.fidelity import layer_row_masks
    from mmcompile.patterns.specs import Dense

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--layout", default="mixed")
    parser.add_argument("--heads", default="8/2")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    heads_q, heads_kv = (int(x) for x in args.heads.split("/"))
    n, d = args.tokens, 64 if args.device == "cpu" else 128
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    gaps = []
    for family in FAMILIES:
        layout = family_layout(args.layout, n, seed=args.seed)
        q, k, _ = family_qkv(family, layout, heads_q, heads_kv, d, seed=args.seed, device=args.device,
                             dtype=dtype)[:3]
        scale = d ** -0.5
        ctx = forward_context(layout, n, 1, args.device, 128, 64)
        estimates = Estimates(q, k, ctx, scale)
        picks = policy.read_tables(policy.choice_tables(estimates, ctx, 0.1, policy.TARGET), ctx)
        patterns, _ = policy.patterns_from_tables(picks, ctx, policy.MIN_RECALL, 0.1)
        indexes = build_layer_indexes(q, k, patterns, ctx, scale, estimates)
        for name in ctx.row_sets():
            pos, valid = ctx.last_rows[name][:2]
            rows = pos[0][valid[0]]
            masks = layer_row_masks(indexes, rows, n, heads_q)
            probs = last_query_probs(q, k, rows[None], torch.ones_like(rows[None], dtype=torch.bool), scale,
                                     ctx.key_pad)[0]
            exact = (probs * masks).sum(-1).mean(-1).tolist()
            for h, chosen in enumerate(picks[name][1]):
                if all(isinstance(p, Dense) for _, p in patterns[h].intra):
                    continue  # predicted under min_recall: the layer runs it dense
                gaps.append((type(chosen).__name__, picks[name][0][h] - exact[h], family, name, h))
    print(f"{args.layout} {n} tokens, {args.heads} heads, seed {args.seed}, {args.device}: predicted - exact "
          f"recall on the estimation rows, per chosen family")
    by_kind = collections.defaultdict(list)
    for kind, gap, *_ in gaps:
        by_kind[kind].append(gap)
    for kind, values in sorted(by_kind.items()):
        t = torch.tensor(values)
        print(f"{kind:14s} rows {len(values):4d}  mean {t.mean():+.4f}  most over {t.max():+.4f}  "
              f"most under {t.min():+.4f}")
    for kind, gap, family, name, h in sorted(gaps, key=lambda g: -g[1])[:5]:
        print(f"  over {gap:+.4f}: {kind}, {family}, rows {name}, head {h}")


if __name__ == "__main__":
    main()
