"""Grid against Vertical-Slash on planted grid heads with periodic slashes: density at equal recall.

Usage: python benchmarks/grid_vs_vs.py [--tokens 131072] [--heads 28/4] [--frames 16]
                                       [--targets 0.9,0.95] [--estimate video|last] [--kernel] [--out FILE]

On the standard video layout, grid heads are planted with periodic same-patch attention
(``planted_qkv(periodic_frames=...)``): keys at query - k * frame stride, k = 1, 2, ... VS covers
each such offset with its own key block (one block per frame); Grid's residue-major permutation
makes them the key slots just before the query's slot, so a few blocks cover many frames
(method.md 1.4, "Grid is 2-3x faster than VS"). For each planted grid head, a ladder of Grid sizes
(``local_frames``) and of VS sizes (columns x slash blocks) is indexed through the real path
(``build_layer_indexes`` with a ``forward_context``); recall and density are measured as
``benchmarks/fidelity.py`` does, on sampled video rows. The table gives, per recall target, each
family's least density (and key blocks visited per query block) reaching it, mean over heads.

Estimation rows: the standard layout ends with 512 text tokens, where a planted grid head shows
neither lines nor periodic slashes, so by default both families are estimated from the last 64
*video* queries (what a Q-Boundary head does for its video rows; ``--estimate last`` keeps the
plain last rows). Kernel outputs (for the output error) are computed for every ladder step on a
GPU; on CPU (the Triton interpreter is slow) only with ``--kernel``, and then only for the winners.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

if not torch.cuda.is_available():  # before any kernel module is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(__file__))

from common import environment  # noqa: E402
from mmcompile.patterns import forward_context  # noqa: E402
from mmcompile.patterns.fidelity import head_fidelity, index_density, index_row_mask, sample_rows  # noqa: E402
from mmcompile.patterns.context import ForwardContext  # noqa: E402
from mmcompile.patterns.estimates import Estimates  # noqa: E402
from mmcompile.patterns.launch import attend  # noqa: E402
from mmcompile.patterns.layer_index import build_layer_indexes  # noqa: E402
from mmcompile.patterns.layout import VIDEO  # noqa: E402
from mmcompile.patterns.planted import planted_qkv, standard_layout  # noqa: E402
from mmcompile.patterns.specs import Grid, HeadPattern, VerticalSlash  # noqa: E402

GRID_BLOCKS = (0, 1, 2, 4, 8, 16, 32)  # local_frames in key blocks (block_n slots of one residue class)
VS_COLUMNS = (128, 256, 512, 1024, 2048)
VS_BLOCKS = (2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def ladders(block_n: int, grid_blocks=GRID_BLOCKS, vs_columns=VS_COLUMNS, vs_blocks=VS_BLOCKS) -> dict:
    """family -> patterns, cheapest first. Grid keeps the planted 64 sink tokens as columns."""
    return {"Grid": [Grid(stride_kind="frame", local_frames=b * block_n, sink=64) for b in grid_blocks],
            "VS": [VerticalSlash(vertical=c, slash_blocks=r) for c in vs_columns for r in vs_blocks]}


@dataclasses.dataclass
class Setup:
    """The planted grid heads as a multi-head problem (each with its own K/V head), the context and rows."""
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    heads: list  # planted head ids
    ctx: ForwardContext
    rows: torch.Tensor
    estimates: Estimates


def setup(tokens, heads_q, heads_kv, head_dim, device, dtype, block, frames=16.0, rows=256, seed=0,
          estimate="video") -> Setup:
    layout = standard_layout("video", tokens)
    q, k, v, kinds = planted_qkv(layout, heads_q, heads_kv, head_dim, device, dtype, seed=seed, periodic_frames=frames)
    heads = [h for h, kind in enumerate(kinds) if kind == "grid"]
    kv = [h // (heads_q // heads_kv) for h in heads]  # GQA unrolled: same attention, one group per head
    q, k, v = q[:, heads].contiguous(), k[:, kv].contiguous(), v[:, kv].contiguous()
    ctx = forward_context(layout, tokens, 1, device, *block)
    if estimate == "video":
        ctx = dataclasses.replace(ctx, last_rows={**ctx.last_rows, "*": ctx.last_rows["video"]})
    picked = sample_rows(tokens, rows, device)
    picked = picked[layout.modality[0].to(device)[picked] == VIDEO]
    return Setup(q, k, v, heads, ctx, picked, Estimates(q, k, ctx, head_dim ** -0.5))


def measure(s: Setup, pattern, kernel: bool) -> dict:
    """Per head (tensors [H]): recall, density, key blocks per query block, and (kernel only) rel_err."""
    n = s.ctx.n
    (ids, index), = build_layer_indexes(s.q, s.k, [HeadPattern("none", (("*", pattern),))] * len(s.heads),
                                        s.ctx, estimates=s.estimates)
    masks = index_row_mask(index, s.rows, n)
    out = attend(s.q, s.k, s.v, [(ids, index)]) if kernel else torch.zeros_like(s.q)  # placeholder: recall only
    fid = head_fidelity(s.q, s.k, s.v, out, masks, s.rows)
    density = index_density(index, n)
    tiles = density * n * (n + 1) / 2 / (index.block_m * index.block_n) / index.num_query_blocks
    return dict(recall=fid["recall"], density=density, blocks=tiles, rel_err=fid["rel_err"] if kernel else None)


def sweep(s: Setup, kernel: bool, families: dict | None = None) -> dict:
    """family -> [(pattern, measure(...))] over its ladder (``ladders`` unless given)."""
    families = families or ladders(s.ctx.block_n)
    return {family: [(p, measure(s, p, kernel)) for p in ladder] for family, ladder in families.items()}


def cheapest(results: list, target: float) -> list:
    """Per head: the position in ``results`` of the least-density step reaching ``target``, or None."""
    heads = results[0][1]["recall"].shape[0]
    best = []
    for h in range(heads):
        reaching = [(m["density"][h].item(), i) for i, (_, m) in enumerate(results) if m["recall"][h].item() >= target]
        best.append(min(reaching)[1] if reaching else None)
    return best


def summary(s: Setup, results: dict, targets, winners_kernel: bool) -> list[str]:
    """The table: per target and family, heads reaching it and the mean over those heads of the
    least density, blocks per query block and recall there; then the VS / Grid density ratio.
    ``winners_kernel``: run the kernel for winning steps measured without it."""
    lines = [f"{'target':>6s} {'family':6s} {'reached':>7s} {'density':>8s} {'blocks/qblk':>11s} {'recall':>7s} "
             f"{'rel err':>8s}  sizes"]
    for target in targets:
        mean_density = {}
        for family, res in results.items():
            best = cheapest(res, target)
            got = [(h, i) for h, i in enumerate(best) if i is not None]
            if not got:
                lines.append(f"{target:6.2f} {family:6s} {0:>4d}/{len(best):<2d} {'-':>8s}")
                continue
            for i in sorted({i for _, i in got}):
                if winners_kernel and res[i][1]["rel_err"] is None:
                    res[i] = (res[i][0], measure(s, res[i][0], kernel=True))
            pick = (lambda key: torch.tensor([res[i][1][key][h].item() if res[i][1][key] is not None
                                              else float("nan") for h, i in got]).mean().item())
            mean_density[family] = pick("density") if len(got) == len(best) else None
            sizes = sorted({_size(res[i][0]) for _, i in got})
            err = pick("rel_err")
            lines.append(f"{target:6.2f} {family:6s} {len(got):>4d}/{len(best):<2d} {pick('density'):8.4f} "
                         f"{pick('blocks'):11.1f} {pick('recall'):7.4f} {'-' if err != err else f'{err:.4f}':>8s}  "
                         f"{', '.join(sizes)}")
        if mean_density.get("Grid") and mean_density.get("VS"):
            ratio = mean_density["VS"] / mean_density["Grid"]
            lines.append(f"{target:6.2f} VS/Grid density ratio at equal recall: {ratio:.2f}x")
    return lines


def ladder_lines(results: dict) -> list[str]:
    lines = [f"{'family':6s} {'size':>14s} {'recall':>7s} {'density':>8s} {'blocks/qblk':>11s}  (mean over heads)"]
    for family, res in results.items():
        for p, m in res:
            lines.append(f"{family:6s} {_size(p):>14s} {m['recall'].mean().item():7.4f} "
                         f"{m['density'].mean().item():8.4f} {m['blocks'].mean().item():11.1f}")
    return lines


def _size(p) -> str:
    return f"lf={p.local_frames}" if isinstance(p, Grid) else f"C={p.vertical},R={p.slash_blocks}"


def main():
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=131072 if cuda else 16384)
    parser.add_argument("--heads", default="28/4" if cuda else "8/2")
    parser.add_argument("--head-dim", type=int, default=128 if cuda else 64)
    parser.add_argument("--frames", type=float, default=16.0, help="periodic attention width in frames")
    parser.add_argument("--targets", default="0.9,0.95")
    parser.add_argument("--estimate", default="video", choices=("video", "last"),
                        help="estimation rows: the last video queries, or the plain last rows")
    parser.add_argument("--block", default="128x64" if cuda else "64x64", help="query x key block")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kernel", action="store_true", help="CPU: run the kernel for the winners (slow)")
    parser.add_argument("--out", help="also write the table (and the whole ladder) to this file")
    args = parser.parse_args()
    start = time.perf_counter()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    block = tuple(int(x) for x in args.block.split("x"))
    heads_q, heads_kv = (int(x) for x in args.heads.split("/"))
    s = setup(args.tokens, heads_q, heads_kv, args.head_dim, device, dtype, block, args.frames, args.rows,
              args.seed, args.estimate)
    results = sweep(s, kernel=cuda)
    env = environment()
    header = [f"grid_vs_vs: video layout, {args.tokens} tokens, heads {args.heads} ({len(s.heads)} planted grid heads "
              f"{s.heads}), head_dim {args.head_dim}, {str(dtype)[6:]}, blocks {block[0]}x{block[1]}, periodic "
              f"{args.frames:g} frames, estimated from the {args.estimate} rows, {s.rows.numel()} video rows",
              f"device {env['gpu']}, torch {env['torch']}, triton {env['triton']}"]
    table = header + summary(s, results, [float(t) for t in args.targets.split(",")], args.kernel)
    print("\n".join(table))
    print(f"({time.perf_counter() - start:.1f} s)")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(table + [""] + ladder_lines(results)) + "\n")


if __name__ == "__main__":
    main()
