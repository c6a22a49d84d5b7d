"""Where a layer's Grid heads miss: the dense mass outside their launches' masks, by key class.

On grid-temporal (mixed layout, seed 2, 32K, 4/1 heads, head dim 128) the online choice runs as
chosen (no held-out check); on 128 random video rows, per Grid head (0-2), the missed mass of
  own frame             keys less than a frame stride back,
  same patch earlier    video keys a multiple of the stride back,
  4 neighbours earlier  video keys a multiple of the stride back +-1 or +-the frame width,
  other                 the rest (wider neighbourhoods, other modalities),
and the output error as built and with each class added back. CPU: the interpreter, ~5 min.

    python benchmarks/grid_miss_probe.py
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before mmcompile imports a kernel

from mmcompile.patterns.families import family_layout, family_qkv  # noqa: E402
from mmcompile.patterns.fidelity import layer_row_masks  # noqa: E402
from mmcompile.patterns.context import forward_context  # noqa: E402
from mmcompile.patterns.layer import choose_layer, layer_attention  # noqa: E402
from mmcompile.patterns.layout import VIDEO  # noqa: E402


def main(n: int = 32768, seed: int = 2):
    layout = family_layout("mixed", n, seed)
    q, k, v, _ = family_qkv("grid-temporal", layout, 4, 1, 128, "cpu", torch.float32, seed)
    ctx = forward_context(layout, n, 1, "cpu", 64, 64)
    _, patterns, _ = choose_layer(q, k, ctx, density=0.1)
    result = layer_attention(q, k, v, ctx, patterns)
    video = (layout.modality[0] == VIDEO).nonzero()[:, 0]
    rows = video[torch.randperm(video.numel(), generator=torch.Generator().manual_seed(0))[:128]].sort().values
    masks = layer_row_masks(result.indexes, rows, n, 4)
    stride = int(ctx.frame_stride[0])
    width = next(int(w) for h, w in zip(layout.frame_h[0], layout.frame_w[0]) if int(h) * int(w) == stride)
    back = rows[:, None] - torch.arange(n)[None, :]
    video_key, residue = (layout.modality[0] == VIDEO)[None, :], back % stride
    earlier = (back >= stride) & video_key
    classes = {"own frame": (back >= 0) & (back < stride),
               "same patch earlier": earlier & (residue == 0),
               "4 neighbours earlier": earlier & ((residue == 1) | (residue == stride - 1) | (residue == width) |
                                                  (residue == stride - width))}
    print(f"stride {stride}, frame width {width}")
    for h in range(3):
        probs = (q[0, h, rows] @ k[0, 0].T * 128 ** -0.5).masked_fill(back < 0, float("-inf")).softmax(-1)
        missed = probs * ~masks[h]
        mass = {name: float((missed * m).sum(-1).mean()) for name, m in classes.items()}
        mass["other"] = float(missed.sum(-1).mean()) - sum(mass.values())
        dense = probs @ v[0, 0]

        def error(mask):
            kept = probs * mask
            return float(((kept / kept.sum(-1, keepdim=True)) @ v[0, 0] - dense).norm() / dense.norm())

        print(f"head {h}: missed " + ", ".join(f"{c} {x:.4f}" for c, x in mass.items())
              + f" | error as built {error(masks[h]):.4f}, with the class added back "
              + ", ".join(f"{c} {error(masks[h] | m):.4f}" for c, m in classes.items()), flush=True)


if __name__ == "__main__":
    main()
