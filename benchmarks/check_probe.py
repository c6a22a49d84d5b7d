"""Why the op runs heads (or rows) dense: each held-out check of one call of the op on the planted
input (``planted_qkv``, seed 0, 28/4 heads, D=128) printed per head and row set (recall, output
error, the sets that fail, the launches), the check's Triton dense rows against a PyTorch pass, then
each head's final pattern and its output error on 256 sampled rows against float32 attention.

Usage: python benchmarks/check_probe.py [--tokens 131072] [--layout video|mixed] [--no-error-bound]
                                       [--kinds boundary,vertical-slash,grid,a-shape --kv-heads 1]
(``--no-error-bound``: a second call with the output-error bound lifted, recall alone judging;
``--kinds``: those planted query heads instead of the standard 28, sharing ``--kv-heads``).
"""

from __future__ import annotations

import argparse
import collections

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--layout", default="video", choices=("video", "mixed"))
    parser.add_argument("--no-error-bound", action="store_true")
    parser.add_argument("--kinds", default="", help="comma-separated planted head kinds (default: the standard 28)")
    parser.add_argument("--kv-heads", type=int, default=4)
    args = parser.parse_args()
    import mmcompile.ops  # noqa: F401
    from mmcompile.annotate import modality
    from mmcompile.patterns import check as held_out, verify
    from mmcompile.patterns.fidelity import sample_rows
    from mmcompile.patterns.planted import planted_qkv, standard_layout
    from mmcompile.runtime import track

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n, scale = args.tokens, 128 ** -0.5
    layout = standard_layout(args.layout, n)
    kinds = args.kinds.split(",") if args.kinds else None
    heads_q = len(kinds) if kinds else 28
    q, k, v, kinds = planted_qkv(layout, heads_q, args.kv_heads, 128, device,
                                 torch.bfloat16 if device == "cuda" else torch.float32, kinds=kinds)
    group = heads_q // args.kv_heads
    original = held_out.held_out_check

    def check(out, lse, v_, estimates, ctx, indexes, recall):
        head_recall, head_error, failing = original(out, lse, v_, estimates, ctx, indexes, recall)
        pos, valid = ctx.held_out
        lse_kernel, out_kernel = estimates.held_out_dense(v_)
        lse_torch, out_torch = verify.dense_rows(q, k, v_, pos, valid, scale, ctx.key_pad, use_kernel=False)
        seen = valid[:, None, :].expand_as(lse_kernel)
        print(f"check ({ctx.row_sets()}): dense rows kernel vs PyTorch: lse max diff "
              f"{float((lse_kernel - lse_torch).abs()[seen].max()):.3g}, out rel "
              f"{float((out_kernel - out_torch).norm() / out_torch.norm()):.3g}")
        launches = collections.defaultdict(list)
        for ids, index in indexes:
            for h in ids:
                launches[h].append("dense" if index is None else "near" if index.near_keys is not None else "sparse")
        for h in range(head_recall.shape[0]):
            print(f"  h{h:2d} {kinds[h]:14s} recall {[round(x, 3) for x in head_recall[h].tolist()]} error "
                  f"{[round(x, 3) for x in head_error[h].tolist()]} fails {failing.get(h, [])} {launches[h]}")
        return head_recall, head_error, failing

    held_out.held_out_check = check

    def call(title):
        print(f"=== {title}")
        stats = track("check-probe")
        with torch.inference_mode(), modality(layout=layout):
            out = torch.ops.mminference.prefill_attention(q, k, v, None, None, 0, scale, min_sparse_len=1024,
                                                          policy="online", density=0.1, recall=0.95, tag="check-probe")
        record = stats.records[-1]
        rows = sample_rows(n, 256, device)
        scores = (q[0, :, rows].float() @ k[0].float().repeat_interleave(group, 0).transpose(-1, -2)) * scale
        scores = scores.masked_fill(torch.arange(n, device=device)[None, :] > rows[:, None], float("-inf"))
        dense = torch.softmax(scores, -1) @ v[0].float().repeat_interleave(group, 0)
        error = ((out[0, :, rows].float() - dense).square().sum((-1, -2)) / dense.square().sum((-1, -2))).sqrt()
        print(f"=== {title}: density {record.density:.3f}")
        for h, head in enumerate(record.patterns):
            pattern = "/".join(f"{m}:{type(p).__name__}" for m, p in head.intra)
            print(f"  h{h:2d} {kinds[h]:14s} error {float(error[h]):.4f} {pattern}")

    call("default")
    if args.no_error_bound:
        held_out.error_tolerance = lambda recall: float("inf")
        call("output-error bound lifted")


if __name__ == "__main__":
    main()
