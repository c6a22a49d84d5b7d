"""Shared pieces of the GPU benchmarks: environment record, timing, density, FLOP counts, baselines."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel


def environment() -> dict:
    """GPU, driver, versions and date: recorded with every number."""
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        driver = "unknown"
    return dict(
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        driver=driver, torch=torch.__version__, triton=triton.__version__,
        cuda=torch.version.cuda, python=platform.python_version(),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def bench_ms(fn, long_call: bool = False) -> dict:
    """Median time in ms with CUDA events (``triton.testing.do_bench``); calls over ~100 ms use a
    fixed small repetition count and keep every sample."""
    if long_call:
        fn()
        torch.cuda.synchronize()
        samples = []
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end))
        return dict(ms=sorted(samples)[len(samples) // 2], samples=samples)
    return dict(ms=triton.testing.do_bench(fn, warmup=100, rep=400, return_mode="median"))


def is_long(fn) -> bool:
    """A single timed call to decide how to time ``fn``."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) > 100


def timed(fn) -> dict:
    return bench_ms(fn, long_call=is_long(fn))


def causal_flops(n: int, heads: int, head_dim: int) -> float:
    """Dense causal attention FLOPs (BENCHMARKING.md): 2 * N^2 * D per head."""
    return 2.0 * n * n * head_dim * heads


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def sdpa_flash(q, k, v):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def sdpa_default(q, k, v):
    """SDPA as HF calls it; on the H100 the default pick is cuDNN."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def dense_rows_of(q, k, v, rows: torch.Tensor, scale: float) -> torch.Tensor:
    """float32 [Hq, R, D]: dense causal attention of ``rows`` (batch 0), every query head."""
    group, n = q.shape[1] // k.shape[1], q.shape[2]
    scores = (q[0, :, rows].float() @ k[0].float().repeat_interleave(group, 0).transpose(-1, -2)) * scale
    scores = scores.masked_fill(torch.arange(n, device=q.device)[None, :] > rows[:, None], float("-inf"))
    return torch.softmax(scores, -1) @ v[0].float().repeat_interleave(group, 0)


def modality_rows(modality: torch.Tensor, rows: int) -> dict:
    """{modality id: int64 [<= rows]}: rows spread over the later half of each modality's rows of
    ``modality`` [N] (a question's rows are a sliver of a pooled sample)."""
    picks = {}
    for code in sorted(modality.unique().tolist()):
        pos = torch.nonzero(modality == code).flatten()
        pos = pos[len(pos) // 2:]
        picks[code] = pos[torch.linspace(0, len(pos) - 1, min(rows, len(pos)), device=pos.device).round().long()]
    return picks


def write_json(path: str, payload) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=str)
