"""Grid with and without its band on one family's video rows, the online choice fixed.

The online policy chooses one layer's patterns (no held-out check), then the layer runs them as
chosen and again with every Grid's ``band`` set to each value given, and prints per head the
recall, output error and density on 128 random video rows (the harness's default rows, the later
half, can miss a video that sits early in a mixed layout). Usage (CPU: the interpreter):

    python benchmarks/grid_band_probe.py --family grid-temporal --layout mixed --seed 2 --bands 256,1024
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before mmcompile imports a kernel

from mmcompile.patterns.families import family_layout, family_qkv  # noqa: E402
from mmcompile.patterns.fidelity import head_fidelity, layer_row_masks  # noqa: E402
from mmcompile.patterns.context import forward_context  # noqa: E402
from mmcompile.patterns.layer import choose_layer, layer_attention  # noqa: E402
from mmcompile.patterns.layout import VIDEO  # noqa: E402
from mmcompile.patterns.specs import Grid, HeadPattern  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="grid-temporal")
    ap.add_argument("--layout", default="mixed")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--bands", default="256,1024")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    n = args.tokens
    layout = family_layout(args.layout, n, args.seed)
    q, k, v, kinds = family_qkv(args.family, layout, 4, 1, 128, device, dtype, args.seed)
    ctx = forward_context(layout, n, 1, device, *((128, 64) if cuda else (64, 64)))
    _, patterns, _ = choose_layer(q, k, ctx, density=0.1)
    video = (layout.modality[0] == VIDEO).nonzero()[:, 0].to(device)
    g = torch.Generator().manual_seed(0)
    rows = video[torch.randperm(video.numel(), generator=g)[:128].to(device)].sort().values
    print(f"{args.family} {args.layout} seed {args.seed} N={n}: frame stride {ctx.frame_stride.tolist()}, "
          f"video rows {int(video.min())}-{int(video.max())}")
    for h, p in enumerate(patterns):
        print(f"head {h}: " + ", ".join(f"{m}: {x}" for m, x in p.intra))
    for band in [None] + [int(b) for b in args.bands.split(",")]:
        pats = patterns if band is None else [
            HeadPattern(p.inter, tuple((m, dataclasses.replace(x, band=band) if isinstance(x, Grid) else x)
                                       for m, x in p.intra)) for p in patterns]
        res = layer_attention(q, k, v, ctx, pats)
        fid = head_fidelity(q, k, v, res.out, layer_row_masks(res.indexes, rows, n, 4), rows)
        show = lambda t: " ".join(f"{x:.4f}" for x in t.tolist())  # noqa: E731
        print(f"{'as chosen' if band is None else f'band {band}':10s} recall {show(fid['recall'])}  "
              f"err {show(fid['rel_err'])}  density {show(res.head_density)}", flush=True)


if __name__ == "__main__":
    main()
