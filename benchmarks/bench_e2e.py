"""Time to first token of the Qwen2.5-VL language model (random weights): eager HF SDPA, torch.compile
with Inductor, and backend="mminference" (issue 4).

Usage: python benchmarks/bench_e2e.py [--tokens 131072] [--layers 28] [--out DIR] [--local 6144[,1024...]]
                                    [--no-force-dense] [--no-inductor]

The standard shape (BENCHMARKING.md): hidden 3584, 28 layers, 28 query / 4 KV heads, D=128, bf16,
batch 1, ``logits_to_keep=1``. The language model is fed ``inputs_embeds`` (the vision tower is not
timed). Random weights have no attention structure, so a recall-driven policy would go dense: the
sparse runs use the fixed A-shape budget (``policy="a-shape"``: sink 128 + ``--local``, one
compile per value), which is <= 10% of the causal area at 128K; its output is compared to eager's (not expected to match: the
comparison says how far a sparse mask moves random-weight logits), and force_dense to eager.
Compile time (first call) is reported for Inductor and for the backend.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import environment  # noqa: E402


def build_model(layers: int):
    import transformers as tf

    cfg = tf.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=layers,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=262144,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24])),
        vision_config=dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=3584),
        attn_implementation="sdpa")
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = tf.Qwen2_5_VLForConditionalGeneration(cfg).eval()
    torch.set_default_dtype(torch.float32)
    return model


def timed_call(fn, reps: int = 2):
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    samples = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return out, first, samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--local", default="6144", help="local window(s), comma-separated")
    parser.add_argument("--min-sparse-len", type=int, default=16384)
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    parser.add_argument("--no-force-dense", action="store_true", help="skip the force_dense run")
    parser.add_argument("--no-inductor", action="store_true", help="skip the torch.compile (Inductor) run")
    parser.add_argument("--default-options", action="store_true",
                        help="also the backend with its default options (online policy, recall target 0.95): "
                             "on random weights it must go dense at no more than 2%% over eager")
    parser.add_argument("--reps", type=int, default=2, help="timed calls after the first")
    args = parser.parse_args()
    env = environment()
    print(env, flush=True)
    results = dict(env=env, args=vars(args), runs=[])
    model = build_model(args.layers)
    lm = model.model.language_model
    n = args.tokens
    g = torch.Generator(device="cuda").manual_seed(0)
    embeds = torch.randn(1, n, 3584, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    position_ids = torch.arange(n, device="cuda")[None, None].expand(3, 1, n)

    def forward(module):
        def run():
            with torch.no_grad():
                hidden = module(inputs_embeds=embeds, position_ids=position_ids, use_cache=False).last_hidden_state
                return model.lm_head(hidden[:, -1:])
        return run

    def record(name, fn, ref=None):
        torch.cuda.reset_peak_memory_stats()
        out, first, samples = timed_call(fn, args.reps)
        row = dict(name=name, first_call_s=first, samples_s=samples, median_s=sorted(samples)[len(samples) // 2],
                   peak_gib=torch.cuda.max_memory_allocated() / 2**30)
        if ref is not None:
            row["logits_rel_err_vs_eager"] = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        results["runs"].append(row)
        print(row, flush=True)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "e2e.json"), "w") as f:
            json.dump(results, f, indent=1)
        return out

    eager = record("eager HF SDPA", forward(lm))
    import mmcompile.report as report

    def backend_stats():
        stats = report.last_report().graphs[-1].stats if report.last_report().graphs else None
        if stats is not None:
            results["runs"][-1].update(sparse_calls=stats.sparse_calls, dense_calls=stats.dense_calls,
                                       mean_density=stats.mean_sparse_density())
            print({"sparse_calls": stats.sparse_calls, "dense_calls": stats.dense_calls,
                   "mean_density": stats.mean_sparse_density()}, flush=True)

    if args.default_options:
        record("mminference (default options)", forward(torch.compile(lm, backend="mminference")), eager)
        backend_stats()
        torch._dynamo.reset()
    for local in (int(x) for x in args.local.split(",") if x):
        options = dict(policy="a-shape", sink=128, local=local, min_sparse_len=args.min_sparse_len)
        record(f"mminference (a-shape sink 128 + local {local})",
               forward(torch.compile(lm, backend="mminference", options=options)), eager)
        backend_stats()
        torch._dynamo.reset()
    if not args.no_inductor:
        record("torch.compile inductor", forward(torch.compile(lm)), eager)
        torch._dynamo.reset()
    if not args.no_force_dense:
        record("mminference force_dense", forward(torch.compile(lm, backend="mminference",
                                                                options=dict(force_dense=True))), eager)


if __name__ == "__main__":
    main()
