"""Built-in demo: the sparse kernel on a synthetic video layout against dense attention, then
generate() of a transformers LLaVA checkpoint folder through the backend (``demo_model.py``).

The layout is the standard one (BENCHMARKING.md): a text prefix, frames of ``frame`` tokens, a
question. Q/K carry planted grid structure: one token per frame (the grid line at a fixed phase)
attracts every query, plus a local preference, so dense attention is concentrated where the grid
index looks. It prints the kernel's error against the reference of the same mask, the recall
(dense attention mass inside the mask), the output error against dense attention, and on a GPU the
times against SDPA flash and SDPA default (cuDNN). No downloads. Other libraries' warnings and
progress bars are silenced here (the demo only), so its first screen is its own output.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import warnings

import torch


def planted_video_qkv(n: int, heads_q: int, heads_kv: int, head_dim: int, frame: int, phase: int,
                      device, dtype, seed: int = 0):
    """Q, K, V whose attention has grid lines (keys at ``phase`` of each frame) and local bands."""
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(1, heads_q, n, head_dim, generator=g, device=device) * 0.5
    k = torch.randn(1, heads_kv, n, head_dim, generator=g, device=device) * 0.5
    v = torch.randn(1, heads_kv, n, head_dim, generator=g, device=device)
    direction = torch.randn(head_dim, generator=g, device=device)
    direction = direction / direction.norm()
    boost = (10.0 * head_dim ** 0.5) ** 0.5  # a planted key scores ~10 above the rest
    q += boost * direction
    k[:, :, phase::frame] += boost * direction  # grid lines: every query looks at them
    k[:, :, :64] += boost * direction  # attention sink
    return q.to(dtype), k.to(dtype), v.to(dtype)


def run(n: int, heads_q: int, heads_kv: int, frame: int, local_blocks: int) -> None:
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    head_dim, phase = (128 if cuda else 64), 37 % frame
    print(f"device={device} dtype={dtype} frame={frame} tokens, grid lines at phase {phase}")
    # The float references materialise N x N masks: check at a length that fits, time at full length.
    check_n = min(n, 8192)
    group = heads_q // heads_kv
    _check(check_n, group, 1, head_dim, frame, phase, local_blocks, device, dtype)
    if cuda:
        q, k, v = planted_video_qkv(n, heads_q, heads_kv, head_dim, frame, phase, device, dtype)
        _print_times(q, k, v, _grid(n, heads_q, frame, phase, local_blocks, device))


def _grid(n, heads, frame, phase, local_blocks, device):
    from mmcompile.kernels.index_factories import grid_index

    return grid_index(1, heads, n, frame, phase, local_blocks, device=device)


def _check(n, heads_q, heads_kv, head_dim, frame, phase, local_blocks, device, dtype) -> None:
    from mmcompile.kernels import dense_attention_forward, index_to_mask, sparse_attention_forward
    from mmcompile.kernels.reference import masked_attention

    q, k, v = planted_video_qkv(n, heads_q, heads_kv, head_dim, frame, phase, device, dtype)
    index = _grid(n, heads_q, frame, phase, local_blocks, device)
    start = time.perf_counter()
    out, _ = sparse_attention_forward(q, k, v, index, check_values=True)
    print(f"check at {n} tokens, heads {heads_q}/{heads_kv}: sparse kernel ran in "
          f"{time.perf_counter() - start:.2f} s (first call, includes compile)")
    mask = index_to_mask(index, n, n)
    causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    qf, kf, vf = q.float(), k.float(), v.float()
    ref_same_mask, _ = masked_attention(qf, kf, vf, mask)
    dense, dense_lse = masked_attention(qf, kf, vf, causal[None, None].expand_as(mask))
    density = mask.sum().item() / causal.sum().item() / heads_q
    recall = _recall(qf, kf, mask, dense_lse, heads_q // heads_kv)
    print(f"density {density:.3f} of the causal area, recall {recall:.4f} of the dense attention mass")
    print(f"kernel vs reference on the same mask: relative error {_rel(out, ref_same_mask):.2e}")
    print(f"sparse vs dense attention:            relative error {_rel(out, dense):.2e}")
    dense_out, _ = dense_attention_forward(q, k, v)
    print(f"dense path vs dense reference:        relative error {_rel(dense_out, dense):.2e}")


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _recall(q, k, mask, lse, group) -> float:
    scores = q @ k.repeat_interleave(group, 1).transpose(-1, -2) / q.shape[-1] ** 0.5
    probs = torch.exp(scores - lse[..., None])
    return (probs * mask).sum(-1).mean().item()


def _print_times(q, k, v, index) -> None:
    import torch.nn.functional as F
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from mmcompile.kernels import sparse_attention_forward

    def flash():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    times = {
        "mminference sparse kernel": lambda: sparse_attention_forward(q, k, v, index),
        "SDPA flash": flash,
        "SDPA default (cuDNN)": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
    }
    for name, fn in times.items():
        ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        print(f"{q.shape[2]} tokens, heads {q.shape[1]}/{k.shape[1]}: {name:28s} {ms:9.2f} ms")


def main(argv=None) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="mminference demo", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=131072 if cuda else 2304)
    parser.add_argument("--heads", default="28/4" if cuda else "2/1", help="query/key-value heads")
    parser.add_argument("--frame", type=int, default=256 if cuda else 64, help="tokens per frame")
    parser.add_argument("--local-blocks", type=int, default=16 if cuda else 2)
    parser.add_argument("--kernel-only", action="store_true", help="skip the compiled Qwen2.5-VL part")
    args = parser.parse_args(argv)
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("no CUDA device: run with TRITON_INTERPRET=1 (the README's demo command does)")
    heads_q, heads_kv = (int(x) for x in args.heads.split("/"))
    with _quiet_libraries():
        run(args.tokens, heads_q, heads_kv, args.frame, args.local_blocks)
        if not args.kernel_only:
            from mmcompile import demo_model

            demo_model.run()


@contextlib.contextmanager
def _quiet_libraries():
    """Hide other libraries' warnings (transformers' config notes, Dynamo's graph-break reports,
    progress bars) for the demo; mminference's own warnings still show."""
    import logging

    import transformers

    loggers = {name: logging.getLogger(name).level for name in ("torch._dynamo", "torch._inductor")}
    verbosity = transformers.logging.get_verbosity()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", message="mminference")
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        for name in loggers:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            transformers.logging.set_verbosity(verbosity)
            transformers.logging.enable_progress_bar()
            for name, level in loggers.items():
                logging.getLogger(name).setLevel(level)


if __name__ == "__main__":
    main()
