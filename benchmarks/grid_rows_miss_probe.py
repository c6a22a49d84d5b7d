"""Where a head's video rows lose their output error, by key distance, for two fixed video
patterns (VS(256, 8) and Grid(4 frames, band 256); text rows A-shape(128, 128)) of one planted head
(``planted_qkv``; default the boundary kind: sink, local band, lines on video rows) on 96 video rows
of the later half: per distance bucket the mass and the mass missed, the mass on text keys, and the
error with the missed keys of one range restored. Then the rows whose band is not fully kept.

Usage (CPU: the interpreter): python benchmarks/grid_rows_miss_probe.py [--tokens 32768] [--layout mixed]
"""

from __future__ import annotations

import argparse
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before mmcompile imports a kernel

from mmcompile.patterns import forward_context, layer_attention  # noqa: E402
from mmcompile.patterns.fidelity import layer_row_masks  # noqa: E402
from mmcompile.patterns.layout import VIDEO  # noqa: E402
from mmcompile.patterns.planted import planted_qkv, standard_layout  # noqa: E402
from mmcompile.patterns.specs import AShape, Grid, HeadPattern, VerticalSlash  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--layout", default="mixed", choices=("video", "mixed"))
    ap.add_argument("--kind", default="boundary")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = args.tokens
    layout = standard_layout(args.layout, n)
    q, k, v, _ = planted_qkv(layout, 1, 1, 128, device, torch.float32, kinds=[args.kind])
    ctx = forward_context(layout, n, 1, device)
    video = layout.modality[0].to(device) == VIDEO
    rows = torch.nonzero(video).flatten()
    rows = rows[rows > n // 2][::97][:96]
    scores = (q[0, 0, rows] @ k[0, 0].T) * 128 ** -0.5
    probs = torch.softmax(scores.masked_fill(torch.arange(n, device=device)[None] > rows[:, None], float("-inf")), -1)
    dense = probs @ v[0, 0]
    dist = rows[:, None] - torch.arange(n, device=device)[None]
    candidates = (("VS(256, 8)", VerticalSlash(256, 8)), ("Grid(4 frames, band 256)", Grid(local_frames=4, band=256)))
    for name, pattern in candidates:
        head = HeadPattern("q-boundary", (("text", AShape(128, 128)), ("video", pattern)))
        result = layer_attention(q, k, v, ctx, [head])
        kept = layer_row_masks(result.indexes, rows, n, 1)[0]
        out = result.out[0, 0, rows]
        missed = probs * ~kept
        print(f"{name}: error {float((out - dense).norm() / dense.norm()):.4f}, missed mass "
              f"{float(missed.sum(-1).mean()):.4f}")
        for lo, hi in ((0, 64), (64, 256), (256, 1024), (1024, 4096), (4096, n)):
            bucket = (dist >= lo) & (dist < hi)
            print(f"  distance [{lo}, {hi}): mass {float((probs * bucket).sum(-1).mean()):.4f}, missed "
                  f"{float((missed * bucket).sum(-1).mean()):.4f}")
        text = ~video[None].expand_as(probs)
        print(f"  text keys: mass {float((probs * text).sum(-1).mean()):.4f}, "
              f"missed {float((missed * text).sum(-1).mean()):.4f}")
        for lo, hi in ((0, 256), (256, 4096), (4096, n)):
            restored = probs * (kept | ((dist >= lo) & (dist < hi)))
            err = ((restored / restored.sum(-1, keepdim=True)) @ v[0, 0] - dense).norm() / dense.norm()
            print(f"  missed keys at distance [{lo}, {hi}) restored: error {float(err):.4f}")
        if isinstance(pattern, Grid):
            short = [int(r) for i, r in enumerate(rows.tolist())
                     if not kept[i, max((r // ctx.block_m) * ctx.block_m - pattern.band, 0):r + 1].all()]
            print(f"  rows whose band is not all kept: {short}")


if __name__ == "__main__":
    main()
