"""Why is torch.compile (Inductor) 3x slower than eager on the language model at 128K (BENCHMARKS.md)?

Usage: python benchmarks/probe_inductor_sdpa.py [--tokens 131072] [--model-layers 4]

Times causal GQA SDPA as HF calls it under Dynamo (``is_causal=True``, ``enable_gqa=True``, no mask),
eager and compiled with Inductor, and prints which GPU kernels each one runs; with
``--model-layers`` also the language model of ``bench_e2e.py`` with that many layers.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton
from torch.profiler import ProfilerActivity, profile


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=128 ** -0.5)


def hf_like(q_rows, k_rows, v_rows, cos, sin):
    """As HF's attention gets them: projections viewed [B, N, H, D], transposed, RoPE applied."""
    q, k, v = (t.transpose(1, 2) for t in (q_rows, k_rows, v_rows))
    half = q.shape[-1] // 2

    def rope(x):
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin
    return sdpa(rope(q), rope(k), v)


def kernels(fn):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = sorted((e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA),
                  key=lambda e: -getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0)))
    return [(e.key[:90], getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0)) / 1e3) for e in rows[:4]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--model-layers", type=int, default=0)
    args = parser.parse_args()
    n = args.tokens
    q = torch.randn(1, 28, n, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 4, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    rows = [t.transpose(1, 2).contiguous() for t in (q, k, v)]  # [B, N, H, D]
    cos, sin = (torch.randn(1, 1, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    compiled, compiled_hf = torch.compile(sdpa), torch.compile(hf_like)
    runs = (("eager, contiguous", lambda: sdpa(q, k, v)), ("inductor, contiguous", lambda: compiled(q, k, v)),
            ("eager, HF layout + RoPE", lambda: hf_like(*rows, cos, sin)),
            ("inductor, HF layout + RoPE", lambda: compiled_hf(*rows, cos, sin)))
    for name, fn in runs:
        ms = triton.testing.do_bench(fn, warmup=3, rep=20, return_mode="median")
        print(f"{name}: {ms:.1f} ms; top kernels (ms): {kernels(fn)}")
    if args.model_layers:
        model_kernels(n, args.model_layers)


def model_kernels(n, layers):
    import os
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    from bench_e2e import build_model

    lm = build_model(layers).model.language_model
    embeds = torch.randn(1, n, 3584, device="cuda", dtype=torch.bfloat16) * 0.02
    position_ids = torch.arange(n, device="cuda")[None, None].expand(3, 1, n)

    def forward(module):
        def run():
            with torch.no_grad():
                return module(inputs_embeds=embeds, position_ids=position_ids, use_cache=False).last_hidden_state
        return run
    for name, fn in (("model eager", forward(lm)), ("model inductor", forward(torch.compile(lm)))):
        fn()
        ms = triton.testing.do_bench(fn, warmup=1, rep=5, return_mode="median")
        print(f"{name} ({layers} layers): {ms:.0f} ms; top kernels (ms): {kernels(fn)}")


if __name__ == "__main__":
    main()
