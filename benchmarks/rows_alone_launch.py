"""What the held-out check's rows-alone launch costs (``rows_alone.dense_rows_index``: the rows of one
modality against every causal key, one program per query block and head scanning all keys), beside
SDPA cuDNN on whole heads (what a head sent dense costs) and SDPA on the question segment alone with
a lower-right causal mask (a candidate for contiguous rows), all on the standard video layout.

Usage: python benchmarks/rows_alone_launch.py [--tokens 131072] [--heads 12]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import environment, timed  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--heads", type=int, default=12, help="query heads whose text rows run dense")
    args = parser.parse_args()
    from torch.nn.attention.bias import causal_lower_right

    from mmcompile.kernels import sparse_attention_forward
    from mmcompile.patterns import forward_context
    from mmcompile.patterns.rows_alone import dense_rows_index
    from mmcompile.patterns.planted import standard_layout

    n, heads = args.tokens, args.heads
    layout = standard_layout("video", n)
    ctx = forward_context(layout, n, 1, "cuda")
    q = torch.randn(1, heads, n, 128, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    out, lse = torch.zeros_like(q), torch.zeros(1, heads, n, device="cuda")
    ids = torch.arange(heads, device="cuda", dtype=torch.int32)
    index = dense_rows_index(heads, "text", ctx)
    rows = int(index.q_order.shape[-1])
    launch = timed(lambda: sparse_attention_forward(q, k, v, index, 128 ** -0.5, head_ids=ids, out=out, lse=lse))
    whole = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q[:, :1], k[:, :1], v[:, :1],
                                                                           is_causal=True))
    tail = 512  # the question: the layout's last 512 rows
    bias = causal_lower_right(tail, n)
    question = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q[:, :, -tail:], k, v, attn_mask=bias))
    print(environment())
    print(f"{n} tokens, {heads} heads, {rows} text rows: rows-alone launch {launch['ms']:.3f} ms | SDPA one whole "
          f"head {whole['ms']:.3f} ms | SDPA lower-right, the last {tail} rows of {heads} heads {question['ms']:.3f} ms")


if __name__ == "__main__":
    main()
