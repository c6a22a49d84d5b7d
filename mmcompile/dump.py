"""``mminference dump``: the patterns the default policy picks on planted inputs, as pictures.

Usage: mminference dump [--tokens 8192] [--layout video|mixed|text] [--heads 8/2] [--density 0.1]
                        [--out mminference_dump]

Writes, for one layer of planted-structure inputs on the standard layout, one PNG per sparse head
(``mmcompile.debug``: visited blocks in the order the kernel walks them) and ``patterns.md`` (per
head: planted kind, chosen pattern per query modality, density). The layer runs whole (``layer_attention``:
estimation, choice, index, kernel), as the op runs it.
"""

from __future__ import annotations

import argparse
import os

import torch


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="mminference dump", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--layout", default="video", choices=("video", "mixed", "text"))
    parser.add_argument("--heads", default="8/2", help="query/key-value heads")
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--out", default="mminference_dump")
    args = parser.parse_args(argv)
    print("\n".join(dump(args.tokens, args.layout, args.heads, args.density, args.out)))


def dump(tokens: int, layout_kind: str, heads: str, density: float, out: str) -> list[str]:
    """Writes the pictures and the table; returns the lines of the table."""
    from mmcompile.debug import write_mask_pictures
    from mmcompile.patterns import forward_context, layer_attention
    from mmcompile.patterns.planted import planted_qkv, standard_layout

    device = "cuda" if torch.cuda.is_available() else "cpu"
    heads_q, heads_kv = (int(x) for x in heads.split("/"))
    layout = standard_layout(layout_kind, tokens)
    n = layout.length
    q, k, v, kinds = planted_qkv(layout, heads_q, heads_kv, 64, device)
    ctx = forward_context(layout, n, 1, device)
    result = layer_attention(q, k, v, ctx, density=density)
    patterns, density_of = result.patterns, result.head_density.tolist()
    paths = write_mask_pictures(result.indexes, n, out)
    lines = [f"# {layout_kind} layout, {n} tokens, heads {heads}, budget {density}", "",
             "| head | planted | chosen | density | picture |", "|---|---|---|---|---|"]
    for h, pattern in enumerate(patterns):
        chosen = "; ".join(f"{m}: {p!r}" for m, p in pattern.intra)
        picture = ", ".join(os.path.basename(p) for p in paths
                            if os.path.basename(p).startswith(f"layer_head{h:02d}")) or "(dense)"  # one per launch
        lines.append(f"| {h} | {kinds[h]} | {pattern.inter}, {chosen} | {density_of[h]:.3f} | {picture} |")
    with open(os.path.join(out, "patterns.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines
