"""What the first choice keeps on the rows it was estimated from and on held-out rows: per head
and query modality, the recall and output error of the built index (the layer's own launch
groups, ``fidelity.layer_row_masks``, their output as ``fidelity.head_fidelity`` derives it from
the masks) against dense float32 attention, on the estimation rows
(``ctx.last_rows``) and on the held-out check's rows (``ctx.check_rows``). A pattern that fits the
last rows alone shows as the gap between the two; on the GPU the check then sends those rows dense.

It found the sink run (BENCHMARKS.md, "A run of sinks judged as a run"): the lighter sinks of a run were
left to one far offset that crosses the run from the estimation rows only.

Usage: python benchmarks/heldout_probe.py [--tokens 131072] [--layout video|mixed]
                                         [--family grid-all --seed 1] [--heads 28/4] [--bf16]
(no ``--family``: the op's planted input, ``planted_qkv``; with it: that family of
``patterns/families.py`` on ``family_layout(layout)``). CPU or GPU, no kernel: index building and
masks only (about 1 min at 128K with 28 heads on 2 cores).
"""

from __future__ import annotations

import argparse

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--layout", default="video")
    parser.add_argument("--family", default="", help="a planted family (patterns/families.py); default: planted_qkv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heads", default="28/4")
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--bf16", action="store_true", help="choose and index on bf16 q, k (as the op runs)")
    args = parser.parse_args()
    from mmcompile.patterns import forward_context
    from mmcompile.patterns.check import error_tolerance
    from mmcompile.patterns.fidelity import head_fidelity, layer_row_masks
    from mmcompile.patterns.layer import choose_layer, head_density
    from mmcompile.patterns.layer_index import build_layer_indexes

    device = "cuda" if torch.cuda.is_available() else "cpu"
    heads_q, heads_kv = (int(x) for x in args.heads.split("/"))
    n, scale = args.tokens, 128 ** -0.5
    if args.family:
        from mmcompile.patterns.families import family_layout, family_qkv
        layout = family_layout(args.layout, n, args.seed)
        q, k, v, kinds = family_qkv(args.family, layout, heads_q, heads_kv, 128, device, torch.float32, args.seed)
    else:
        from mmcompile.patterns.planted import planted_qkv, standard_layout
        layout = standard_layout(args.layout, n)
        q, k, v, kinds = planted_qkv(layout, heads_q, heads_kv, 128, device, torch.float32, seed=args.seed)
    ctx = forward_context(layout, n, 1, device)
    if args.bf16:  # the op's inputs; the measure below stays float32 on the rounded values
        q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    estimates, patterns, _ = choose_layer(q, k, ctx, density=0.1, scale=scale)
    indexes = build_layer_indexes(q, k, patterns, ctx, scale, estimates=estimates)
    density = head_density(indexes, heads_q, n, q.device)
    q, k, v = q.float(), k.float(), v.float()
    tolerance = error_tolerance(args.target)
    misses, gaps = 0, []
    for m in ctx.row_sets():
        found = {}
        for name, (pos, valid) in (("est", ctx.last_rows[m][:2]), ("held", ctx.check_rows[m])):
            rows = pos[0][valid[0]]
            fid = head_fidelity(q, k, v, None, layer_row_masks(indexes, rows, n, heads_q), rows, scale)
            found[name] = list(zip(fid["recall"].tolist(), fid["rel_err"].tolist()))
        print(f"rows {m}:")
        for h in range(heads_q):
            (er, ee), (hr, he) = found["est"][h], found["held"][h]
            miss = hr < args.target or he > tolerance
            misses += miss
            gaps.append(er - hr)
            print(f"  h{h:2d} {kinds[h][:14]:14s} {str(patterns[h].pattern_for(m))[:60]:60s} est {er:.3f}/{ee:.3f} "
                  f"held {hr:.3f}/{he:.3f}{'  MISS' if miss else ''}")
    print(f"{misses} head row sets miss on held-out rows (recall < {args.target} or error > {tolerance:.3f}); "
          f"estimation minus held-out recall: mean {sum(gaps) / len(gaps):+.4f}, largest {max(gaps):+.4f}; "
          f"first choice's density: mean {density.mean().item():.4f} "
          f"(heads {' '.join(f'{x:.3f}' for x in density.tolist())})")


if __name__ == "__main__":
    main()
