"""Exactness at 1M tokens on a slice of rows (issue 14): the op's dense path and its sparse kernel
against float32 attention of the same mask, with SDPA flash's error as the same-precision yardstick.

Usage: python benchmarks/long_exactness.py [--tokens 1048576] [--heads 28/4] [--rows 64] [--local 16384]
                                           [--out DIR]

Fresh ``randn`` q/k/v (bf16, D=128, batch 1). Three outputs of the whole layer, compared on sampled
rows (the last 64 and random ones from the second half: where 32-bit offsets would overflow first):
  * dense:  ``torch.ops.mminference.prefill_attention`` with ``force_dense`` (what every dense call
            and all-dense layer runs: SDPA, cuDNN on Hopper), against float32 causal attention;
  * sparse: ``layer_attention`` with a fixed A-shape (sink 128 + ``--local``): the Triton kernel
            at this length, against float32 attention restricted to the keys its index lists
            (``fidelity.layer_row_masks``): exact means equal to that masked softmax;
  * flash:  SDPA's flash backend, the yardstick (flash-attention's test rule: a kernel may be at
            most about twice as wrong as PyTorch in the same precision).
Prints max abs and relative error per output and the ratio to flash's; writes
DIR/long_exactness_<tokens>.json. Without CUDA it is a smoke test of the script itself (float32 in
Triton's interpreter, SDPA's math backend as yardstick): ``--tokens 4096 --heads 4/1 --local 512``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

sys.path.insert(0, os.path.dirname(__file__))
from common import environment, sdpa_flash, write_json  # noqa: E402


def masked_reference(q, k, v, rows, masks, scale):
    """float32 [Hq, R, D]: attention of ``rows`` over the keys ``masks`` (bool [Hq, R, N]) allows,
    one KV group at a time (a 1M-wide fp32 score row per head and row)."""
    heads_q, group = q.shape[1], q.shape[1] // k.shape[1]
    out = torch.empty(heads_q, rows.numel(), q.shape[-1], dtype=torch.float32, device=q.device)
    for g in range(k.shape[1]):
        heads = slice(g * group, (g + 1) * group)
        scores = (q[0, heads][:, rows].float() @ k[0, g].float().T) * scale
        probs = torch.softmax(scores.masked_fill(~masks[heads], float("-inf")), -1)
        out[heads] = probs @ v[0, g].float()
        del scores, probs
    return out


def errors(got, ref) -> dict:
    diff = (got.float() - ref).abs()
    return dict(max_abs=diff.max().item(), rel=(diff.norm() / ref.norm()).item())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1048576)
    parser.add_argument("--heads", default="28/4")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--local", type=int, default=16384)
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    args = parser.parse_args()
    import mmcompile.ops  # noqa: F401  (registers torch.ops.mminference)
    from mmcompile.patterns import AShape, HeadPattern, forward_context, layer_attention
    from mmcompile.patterns.fidelity import layer_row_masks, sample_rows
    from mmcompile.runtime.forward_state import ForwardState, forward_scope

    n, (heads_q, heads_kv) = args.tokens, (int(x) for x in args.heads.split("/"))
    device, dtype = ("cuda", torch.bfloat16) if CUDA else ("cpu", torch.float32)  # bf16 tl.dot: wrong interpreted
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, h, n, 128, device=device, dtype=dtype, generator=g)
               for h in (heads_q, heads_kv, heads_kv))
    scale = 128 ** -0.5
    rows = sample_rows(n, args.rows, device)
    causal = (torch.arange(n, device=device)[None, :] <= rows[:, None]).expand(heads_q, -1, -1)
    results = dict(env=environment(), tokens=n, heads=args.heads, rows=rows.numel(), local=args.local)

    with torch.inference_mode(), forward_scope(ForwardState()):
        dense = torch.ops.mminference.prefill_attention(q, k, v, None, None, 0, scale, force_dense=True)
    ref = masked_reference(q, k, v, rows, causal, scale)
    results["dense"] = errors(dense[0][:, rows], ref)
    del dense
    yardstick = sdpa_flash(q, k, v) if CUDA else torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, enable_gqa=True)
    results["flash"] = errors(yardstick[0][:, rows], ref)

    ctx = forward_context(None, n, 1, q.device)
    with torch.inference_mode():
        result = layer_attention(q, k, v, ctx, [HeadPattern("none", (("*", AShape(128, args.local)),))] * heads_q,
                                 scale=scale)
    masks = layer_row_masks(result.indexes, rows, n, heads_q)
    results["sparse"] = errors(result.out[0][:, rows], masked_reference(q, k, v, rows, masks, scale))
    results["sparse_density"] = result.head_density.mean().item()
    write_json(os.path.join(args.out, f"long_exactness_{n}.json"), results)
    print(results["env"])
    print("=== table ===")
    for name in ("dense", "sparse", "flash"):
        e = results[name]
        print(f"{n} tokens {args.heads} heads, {rows.numel()} rows | {name}: max abs {e['max_abs']:.2e}, "
              f"rel {e['rel']:.2e} ({e['rel'] / results['flash']['rel']:.2f}x flash's)")


if __name__ == "__main__":
    main()
