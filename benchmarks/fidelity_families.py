"""Fidelity of the project's default path on independent planted structure families (BENCHMARKING.md).

Usage: python benchmarks/fidelity_families.py [--tokens 131072,524288] [--seeds 1,2,3,4]
           [--families grid-all,...] [--layout mixed] [--heads 28/4] [--density 0.1] [--out results.json]
           [--plan plan.json [--plan-sizes online|plan]]

For each family x seed x length: ``mmcompile.patterns.families`` builds Q/K/V whose dense attention
shows that family's structure with per-head random parameters; the default path (online policy,
index, kernel: ``run_default_path``, the one place that calls the project) runs on them; recall,
output error and density are measured on sampled rows against dense float32 attention. Prints per
family mean recall, worst-5%-heads recall, output relative error, density and the recall the
policy predicted, worst family first, and writes every head's numbers as JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import torch

if not torch.cuda.is_available():  # the kernels run in Triton's interpreter: set before any kernel module loads
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from common import modality_rows  # noqa: E402
from mmcompile.patterns.families import FAMILIES, LAYOUTS, family_layout, family_qkv  # noqa: E402


def run_default_path(q, k, v, layout, options: dict):
    """The project's default path on one input: (out [1, Hq, N, D], groups, predicted [Hq],
    chosen pattern names [Hq], density [Hq]). ``groups``: [(head ids, SparseIndex or None for dense)].
    ``options``: density (cap), recall (target, 0: no check), block (query, key tile), plan (a
    plan layer's head patterns, or absent) and plan_sizes ("online": the plan's types sized for
    this input, as the op's default; "plan": the patterns as searched). The only function that
    knows the project's API (``layer_attention``, the op's composition)."""
    from mmcompile.patterns import forward_context, layer_attention
    from mmcompile.patterns.layer import plan_keywords

    ctx = forward_context(layout, q.shape[2], 1, q.device, *options["block"])
    result = layer_attention(q, k, v, ctx, density=options["density"], recall=options["recall"] or None,
                             **plan_keywords(options.get("plan"), options.get("plan_sizes", "online")))
    predicted = None if result.head_recall is None else result.head_recall.tolist()
    names = ["/".join(f"{m}:{type(p).__name__}" for m, p in pat.intra) for pat in result.patterns]
    return result.out, result.indexes, predicted, names, result.head_density.tolist()


def measure(q, k, v, out, groups, rows):
    from mmcompile.patterns.fidelity import head_fidelity, layer_row_masks

    masks = layer_row_masks(groups, rows, q.shape[2], q.shape[1])
    fid = head_fidelity(q, k, v, out, masks, rows)
    return fid["recall"].tolist(), fid["rel_err"].tolist()


def main():
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="131072" if cuda else "8192", help="comma-separated lengths")
    ap.add_argument("--seeds", default="1,2,3,4")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--layout", default="mixed", choices=LAYOUTS)
    ap.add_argument("--heads", default="28/4" if cuda else "4/1")
    ap.add_argument("--head-dim", type=int, default=128 if cuda else 64)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--recall", type=float, default=0.95, help="the op's recall target (0: no check)")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--early-rows", action="store_true",
                    help="sample rows from N/8 to N/2 (the default sample sees the later half; the op's check, every part)")
    ap.add_argument("--by-modality", action="store_true",
                    help="also measure up to --rows rows of each modality's later half apart: each head's "
                    "worst modality's error (a question's rows are a sliver of the pooled sample)")
    ap.add_argument("--plan", default=None, help="a plan searched with `mminference search standard --source "
                    "families`: family i runs the patterns of the plan's layer i (the online policy otherwise)")
    ap.add_argument("--plan-sizes", default="online", choices=("online", "plan"),
                    help="online: the plan fixes each head's pattern type, the input its size (the op's "
                    "default); plan: the plan's patterns as searched, budgets included")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not cuda:
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)  # bf16 tl.dot is wrong in the interpreter
    heads_q, heads_kv = (int(x) for x in args.heads.split("/"))
    options = dict(density=args.density, recall=args.recall, block=(128, 64) if cuda else (64, 64),
                   plan_sizes=args.plan_sizes)
    from mmcompile.patterns.fidelity import sample_rows
    from mmcompile.plans import load_plan
    plan = load_plan(args.plan) if args.plan else None
    results, start = [], time.perf_counter()
    for n in (int(x) for x in args.tokens.split(",")):
        rows = sample_rows(n, args.rows, device, early=args.early_rows)
        for seed in (int(x) for x in args.seeds.split(",")):
            layout = family_layout(args.layout, n, seed)
            for fam in args.families.split(","):
                q, k, v, kinds = family_qkv(fam, layout, heads_q, heads_kv, args.head_dim, device, dtype, seed)
                if plan is not None:
                    options["plan"] = plan.layers[FAMILIES.index(fam)]
                out, groups, predicted, names, density = run_default_path(q, k, v, layout, options)
                recall, err = measure(q, k, v, out, groups, rows)
                worst = [0.0] * heads_q
                if args.by_modality:
                    for part in modality_rows(layout.modality[0].to(device), args.rows).values():
                        worst = [max(w, e) for w, e in zip(worst, measure(q, k, v, out, groups, part)[1])]
                for h in range(heads_q):
                    results.append(dict(family=fam, kind=kinds[h], tokens=n, seed=seed, head=h, chosen=names[h],
                                        recall=recall[h], rel_err=err[h], density=density[h],
                                        predicted=None if predicted is None else predicted[h],
                                        modality_err=worst[h] if args.by_modality else None))
                del q, k, v, out, groups
    table = summarize(results)
    print(f"layout={args.layout} tokens={args.tokens} heads={args.heads} seeds={args.seeds} budget={args.density} "
          f"recall target={args.recall or 'off'} plan={args.plan or 'online'} "
          f"rows={'early' if args.early_rows else 'late'} "
          f"{f'plan_sizes={args.plan_sizes} ' if args.plan else ''}"
          f"device={device} torch={torch.__version__} ({time.perf_counter() - start:.0f} s)")
    by_modality = f" {'mod err':>8s} {'mod max':>8s}" if args.by_modality else ""
    print(f"{'family':22s} {'heads':>5s} {'recall':>7s} {'worst5%':>7s} {'rel err':>8s} {'max err':>8s} "
          f"{'density':>8s} {'predict':>7s}{by_modality}  chosen")
    for row in table:
        pred = f"{row['predicted']:7.4f}" if row["predicted"] is not None else "      -"
        mod = f" {row['modality_err']:8.4f} {row['modality_max']:8.4f}" if args.by_modality else ""
        print(f"{row['family']:22s} {row['heads']:5d} {row['recall']:7.4f} {row['worst5']:7.4f} {row['rel_err']:8.4f} "
              f"{row['max_err']:8.4f} {row['density']:8.4f} {pred}{mod}  {row['chosen'][:60]}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(args=vars(args), families=table, heads=results), f, indent=1)


def summarize(results):
    """Per family (structured heads; the stray unstructured heads form their own row), worst first.
    ``max_err``: the worst head's output error (a mean hides a head that misses a band or a line);
    ``modality_err`` / ``modality_max`` (``--by-modality``): the mean and worst of each head's worst
    modality's error."""
    by = collections.defaultdict(list)
    for r in results:
        by[r["family"] if r["kind"] != "unstructured" else "unstructured"].append(r)
    table = []
    for fam, rs in by.items():
        rec = sorted(r["recall"] for r in rs)
        preds = [r["predicted"] for r in rs if r["predicted"] is not None]
        chosen = collections.Counter(r["chosen"] for r in rs).most_common(3)
        table.append(dict(family=fam, heads=len(rs), recall=sum(rec) / len(rec),
                          worst5=sum(rec[:max(1, len(rec) // 20)]) / max(1, len(rec) // 20),
                          rel_err=sum(r["rel_err"] for r in rs) / len(rs), max_err=max(r["rel_err"] for r in rs),
                          density=sum(r["density"] for r in rs) / len(rs),
                          predicted=sum(preds) / len(preds) if preds else None,
                          **_modality_columns(rs),
                          chosen=", ".join(f"{c} x{m}" for c, m in chosen)))
    return sorted(table, key=lambda r: r["recall"])


def _modality_columns(rs) -> dict:
    worst = [r["modality_err"] for r in rs if r.get("modality_err") is not None]
    return dict(modality_err=sum(worst) / len(worst), modality_max=max(worst)) if worst else {}


if __name__ == "__main__":
    main()
