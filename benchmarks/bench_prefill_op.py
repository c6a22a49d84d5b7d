"""The whole prefill op as a rewritten graph calls it (layout from an annotation, online policy),
against SDPA flash and SDPA default (cuDNN) in the same process, on planted-structure inputs.

Usage: python benchmarks/bench_prefill_op.py [--tokens 131072] [--layout video|mixed] [--heads 28/4]
                                             [--plan PLAN.json [--plan-sizes online|plan]]
                                             [--out benchmarks/results/prefill_op.json]

Runs with whichever mmcompile is importable: this checkout's ``torch.ops.mminference.prefill_attention``
(options as arguments) or, for a before/after comparison, an older checkout's (options through a
registered config key). Prints one line: op ms, both baselines, speedups, density of the call,
recall and output error of the op's output on sampled rows against dense float32 attention.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import (dense_rows_of, environment, modality_rows, rel_error, sdpa_default, sdpa_flash,  # noqa: E402
                    timed, write_json)


def op_call(q, k, v, scale, recall: float, plan: str = "", plan_sizes: str = "online"):
    """(callable, stats, grad mode to run it in) for this checkout's op or an older one's (which
    crashed under inference mode: issue 10)."""
    import mmcompile

    try:
        import mmcompile.ops  # noqa: F401
        from mmcompile.runtime import track
    except ImportError:  # before the run-time move: options in a registry under a config key
        from mmcompile.prefill_op import RuntimeConfig, register_runtime_config
        config = RuntimeConfig(min_sparse_len=1024, policy="online", density=0.1)
        register_runtime_config("bench", config)
        return (lambda: torch.ops.mminference.prefill_attention(q, k, v, None, 0, scale, "bench")), config.stats, \
            torch.no_grad
    stats = track("bench")
    print("mmcompile at", os.path.dirname(mmcompile.__file__))
    extra = {}
    if plan:  # the op takes one layer's patterns (what the rewrite pass passes): layer 0's
        from mmcompile.plans import layer_arg, load_plan
        extra = dict(plan=layer_arg(load_plan(plan).for_call(0, q.shape[1], k.shape[1], q.shape[-1]).layers[0]),
                     plan_sizes=plan_sizes)
    return (lambda: torch.ops.mminference.prefill_attention(q, k, v, None, None, 0, scale, min_sparse_len=1024,
                                                            policy="online", density=0.1, recall=recall,
                                                            tag="bench", **extra)), stats, \
        torch.inference_mode


def error_by_modality(q, k, v, out, modality: torch.Tensor, scale: float, rows: int) -> dict:
    """{modality name: the op's relative output error on up to ``rows`` rows of that modality,
    spread over its later half}: the pooled error of sampled rows is mostly video rows and hides
    a question whose rows are off (BENCHMARKS.md, "The output-error check on the GPU")."""
    from mmcompile.patterns.layout import MODALITY_NAMES

    return {MODALITY_NAMES.get(code, str(code)): rel_error(out[0, :, pick].float(),
                                                           dense_rows_of(q, k, v, pick, scale))
            for code, pick in modality_rows(modality, rows).items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--layout", default="video", choices=("video", "mixed"))
    parser.add_argument("--heads", default="28/4")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--recall", type=float, default=0.95, help="the op's recall target (this checkout only)")
    parser.add_argument("--periodic-frames", type=float, default=0.0,
                        help="planted grid heads also attend to the same patch in earlier frames (what Grid is for)")
    parser.add_argument("--probs-mib", type=int, default=0,
                        help="A/B of the estimation's head chunks: line_scores_kernel.MAX_PROBS_BYTES in MiB (0: as is)")
    parser.add_argument("--plan", default="", help="a plan file (its layer 0 serves the call: `mminference search "
                        "standard --source planted --layers 1 --seed 1`)")
    parser.add_argument("--plan-sizes", default="online", choices=("online", "plan"))
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.probs_mib:
        from mmcompile.patterns import line_scores_kernel
        line_scores_kernel.MAX_PROBS_BYTES = args.probs_mib << 20
    from mmcompile.annotate import modality
    from mmcompile.patterns.fidelity import sample_rows
    from mmcompile.patterns.planted import planted_qkv, standard_layout

    heads_q, heads_kv = (int(x) for x in args.heads.split("/"))
    layout = standard_layout(args.layout, args.tokens)
    q, k, v, _ = planted_qkv(layout, heads_q, heads_kv, 128, "cuda", torch.bfloat16, seed=0,
                             periodic_frames=args.periodic_frames)
    scale = 128 ** -0.5
    fn, stats, grad_mode = op_call(q, k, v, scale, args.recall, args.plan, args.plan_sizes)
    with grad_mode(), modality(layout=layout):
        out = fn()
        op = timed(fn)
    cudnn, flash = timed(lambda: sdpa_default(q, k, v)), timed(lambda: sdpa_flash(q, k, v))
    rows = sample_rows(args.tokens, args.rows, "cuda")
    err = rel_error(out[0, :, rows].float(), dense_rows_of(q, k, v, rows, scale))
    by_modality = error_by_modality(q, k, v, out, layout.modality[0].to("cuda"), scale, args.rows)
    record = stats.records[-1]
    result = dict(env=environment(), tokens=args.tokens, layout=args.layout, heads=args.heads,
                  op_ms=op["ms"], cudnn_ms=cudnn["ms"], flash_ms=flash["ms"], density=record.density,
                  path=record.path, rel_err_sampled_rows=err, rel_err_by_modality=by_modality,
                  recall_target=args.recall,
                  predicted_recall=getattr(record, "predicted_recall", None))
    kinds = collections.Counter("/".join(f"{m}:{type(p).__name__}" for m, p in head.intra)
                                for head in getattr(record, "patterns", None) or ())
    result["patterns"] = dict(kinds)
    result.update(probs_mib=args.probs_mib or None, plan=args.plan or None,
                  plan_sizes=args.plan_sizes if args.plan else None)
    print(f"{args.layout}{' periodic ' + str(args.periodic_frames) if args.periodic_frames else ''} {args.tokens} "
          f"{'probs ' + str(args.probs_mib) + ' MiB ' if args.probs_mib else ''}"
          f"{'plan ' + args.plan_sizes + ' ' if args.plan else ''}"
          f"{args.heads} recall target {args.recall}: op {op['ms']:.2f} ms ({record.path}, density "
          f"{record.density:.3f}, rel err {err:.4f}, by modality "
          f"{ {m: round(e, 4) for m, e in by_modality.items()} }) | "
          f"cuDNN {cudnn['ms']:.2f} ms (x{cudnn['ms'] / op['ms']:.2f}) | "
          f"flash {flash['ms']:.2f} ms (x{flash['ms'] / op['ms']:.2f}) | {dict(kinds)}")
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
