"""What each stage of the held-out check's repairs achieves: per head whose rows missed, the first
check's recall and output error on those rows, what each fallback stage (the family at the cap,
then Grid) made of them, and how the head ended (passed at a stage, dense rows, dense whole).

The question it answers: which stages are worth their recompute and host sync (issue 11's speed:
on the H100 at 128K the repairs cost half the layer, ``check_cost.py``)? A stage that never turns a
miss into a pass from where the first check left a head is time spent for nothing.

Usage: python benchmarks/stage_outcomes.py [--tokens 8192] [--seeds 0,1,2,3,4] [--layout mixed]
           [--families grid-all,...] [--heads 4/1] [--stage-pairs 0] [--out results.json]

Runs ``layer_attention`` (recall 0.95, density 0.1) on every family x seed, recording every
``check.held_out_check`` and every recompute (``check._recompute``) by wrapping them; prints one line
per head that missed, then per stage how many heads it was tried on and how many it turned to a pass.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import torch

if not torch.cuda.is_available():  # the kernels run in Triton's interpreter: set before any kernel module loads
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mmcompile.patterns.families import FAMILIES, LAYOUTS, family_layout, family_qkv  # noqa: E402


def recorded(check, run):
    """``run()`` with every held-out check and recompute of ``check`` recorded:
    ([{head: [(row set, recall, error)] of its failing sets}], [{head: pattern tried}])."""
    checks, trials = [], []
    held_out, recompute = check.held_out_check, check._recompute

    def held_out_logged(out, lse, v, estimates, ctx, indexes, recall):
        head_recall, head_error, failing = held_out(out, lse, v, estimates, ctx, indexes, recall)
        sets = ctx.row_sets()
        checks.append({h: [(m, float(head_recall[h, sets.index(m)]), float(head_error[h, sets.index(m)]))
                           for m in rows] for h, rows in failing.items()})
        return head_recall, head_error, failing

    def recompute_logged(q, k, v, out, lse, estimates, ctx, patterns, indexes, trial, scale):
        trials.append(dict(trial))
        return recompute(q, k, v, out, lse, estimates, ctx, patterns, indexes, trial, scale)

    check.held_out_check, check._recompute = held_out_logged, recompute_logged
    try:
        return run(), checks, trials
    finally:
        check.held_out_check, check._recompute = held_out, recompute


def head_stories(checks, trials, final_patterns) -> list[dict]:
    """Per head that failed the first check: its first misses, then per stage tried ("cap": its
    family grown to the cap, "grid": Grid on the rows that missed) whether it still failed after
    it, and its final pattern names. Check i precedes trial i, check i + 1 follows it."""
    from mmcompile.patterns.specs import Grid

    stories = []
    for h, misses in (checks[0] if checks else {}).items():  # no check: every head ran dense from the start
        stages = []
        for i, trial in enumerate(trials):
            if h in trial:
                after = checks[i + 1].get(h, [])
                grid = any(isinstance(trial[h].pattern_for(m), Grid) for m, _, _ in checks[i][h])
                stages.append(dict(stage="grid" if grid else "cap", pattern=_names(trial[h]), passed=not after,
                                   misses=after))
        stories.append(dict(head=h, misses=misses, stages=stages, final=_names(final_patterns[h])))
    return stories


def _misses(misses) -> str:
    return ",".join(f"{m} {r:.3f}/{e:.3f}" for m, r, e in misses)


def _short(names: str) -> str:
    return names.replace("VerticalSlash", "VS").replace("AShape", "A").replace("Dense", "D")


def _names(head) -> str:
    return "/".join(f"{m}:{type(p).__name__}" for m, p in head.intra)


def main():
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=131072 if cuda else 8192)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--layout", default="mixed", choices=LAYOUTS)
    ap.add_argument("--heads", default="28/4" if cuda else "4/1")
    ap.add_argument("--stage-pairs", type=float, default=0.0,
                    help="check.STAGE_PAIRS for this run (0, the default here: every stage is tried, to see what it "
                    "achieves; the op's own value skips stages that cannot pay for themselves)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not cuda:
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    from mmcompile.patterns import check, forward_context, layer_attention

    check.STAGE_PAIRS = args.stage_pairs  # this process only: what each stage would do, tried

    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    head_dim, block = (128, (128, 64)) if cuda else (64, (64, 64))
    heads_q, heads_kv = (int(x) for x in args.heads.split("/"))
    results, n = [], args.tokens
    for seed in (int(s) for s in args.seeds.split(",")):
        layout = family_layout(args.layout, n, seed)
        ctx = forward_context(layout, n, 1, device, *block)
        for fam in args.families.split(","):
            q, k, v, kinds = family_qkv(fam, layout, heads_q, heads_kv, head_dim, device, dtype, seed)
            result, checks, trials = recorded(check, lambda: layer_attention(q, k, v, ctx, density=0.1, recall=0.95))
            for story in head_stories(checks, trials, result.patterns):
                story.update(family=fam, seed=seed, kind=kinds[story["head"]])
                results.append(story)
                tried = " ".join(f"[{s['stage']} {_short(s['pattern'])}: {_misses(s['misses']) or 'pass'}]"
                                 for s in story["stages"])
                print(f"{fam:20s} s{seed} h{story['head']} {story['kind'][:14]:14s} first {_misses(story['misses'])} "
                      f"-> {tried or '(no stage)'} => {_short(story['final'])}", flush=True)
    print(f"--- {args.layout}, {n} tokens, seeds {args.seeds}, heads {args.heads}: per stage, heads tried / turned to a pass")
    tally = collections.Counter()
    for story in results:
        for s in story["stages"]:
            tally[s["stage"], "tried"] += 1
            tally[s["stage"], "passed"] += s["passed"]
    for stage in ("cap", "grid"):
        print(f"stage {stage}: tried {tally[stage, 'tried']}, passed {tally[stage, 'passed']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(args=vars(args), heads=results), f, indent=1)


if __name__ == "__main__":
    main()
