"""Pictures of what the sparse kernel computes: one PNG per head of the visited (query block, key
block) map, in slot space (after the head's permutation, which is what the kernel walks).

White: a listed key block; grey: the diagonal block; light grey: a block holding a listed column;
black: skipped. Written with zlib only (no imaging library needed).
"""

from __future__ import annotations

import os
import struct
import zlib

import torch

from mmcompile.kernels import SparseIndex, span_stretches

LISTED, DIAGONAL, COLUMN = 255, 160, 90


def block_map(index: SparseIndex, n_k: int, head: int, batch: int = 0) -> torch.Tensor:
    """uint8 [M, num_key_blocks]: the visit map of one head (see module docstring)."""
    bm, bn = index.block_m, index.block_n
    num_m, nkb = index.block_count.shape[2], -(-n_k // bn)
    picture = torch.zeros(num_m, nkb + 1, dtype=torch.uint8)
    m = torch.arange(num_m)
    counts = index.block_count[batch, head].cpu().long()
    if index.column_row is None:
        cols = index.column_index[batch, head].cpu().long()
        col_listed = torch.arange(cols.shape[-1]) < index.column_count[batch, head].cpu().long()[:, None]
        picture.scatter_(1, torch.where(col_listed, cols // bn, nkb).clamp(0, nkb), COLUMN)
    else:  # per shared row the key blocks of its columns, then each query block's row
        rows = index.column_index[batch, head].cpu().long()
        by_row = torch.zeros(rows.shape[0], nkb + 1, dtype=torch.uint8)
        by_row.scatter_(1, torch.where(rows < n_k, rows // bn, nkb).clamp(0, nkb), COLUMN)
        picture = by_row[index.column_row[batch, head].cpu().long()]
        if index.k_order is None:  # without an order, later keys are future: never visited
            picture[torch.arange(nkb + 1)[None, :] * bn >= (m * bm)[:, None]] = 0
    offsets = index.block_offset[batch, head].cpu().long()
    listed = torch.arange(offsets.shape[-1]) < counts[:, None]
    for part in (offsets // bn, (offsets + bn - 1) // bn):  # an unaligned block touches two
        picture.scatter_(1, torch.where(listed, part, nkb).clamp(0, nkb), LISTED)
    if index.span is not None:  # the key blocks its span touches, outside the diagonal block
        key = torch.arange(nkb + 1)[None, :] * bn
        for lo, hi in span_stretches(index.span, bm, n_k):
            lo, hi = lo[batch, head].cpu(), hi[batch, head].cpu()
            picture[(key + bn > lo[:, None]) & (key < hi[:, None])] = LISTED
    diag = torch.arange(nkb)[None, :]
    in_diag = (diag >= (m * bm // bn)[:, None]) & (diag < -(-((m + 1) * bm) // bn)[:, None])
    picture[:, :nkb][in_diag] = DIAGONAL
    return picture[:, :nkb]


def png_bytes(gray: torch.Tensor, max_side: int = 1024) -> bytes:
    """A grayscale PNG of a uint8 [H, W] map, max-pooled so no side exceeds ``max_side``."""
    h, w = gray.shape
    step = max(1, -(-max(h, w) // max_side))
    if step > 1:
        padded = torch.nn.functional.pad(gray[None, None].float(), (0, (-w) % step, 0, (-h) % step))
        gray = torch.nn.functional.max_pool2d(padded, step)[0, 0].to(torch.uint8)
    h, w = gray.shape
    rows = b"".join(b"\x00" + bytes(row) for row in gray.tolist())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def write_mask_pictures(indexes, n_k: int, out_dir: str, prefix: str = "layer") -> list[str]:
    """One PNG per sparse head and launch of ``indexes`` ([(query head ids, SparseIndex or None for
    dense)]): ``<prefix>_head<h>.png`` for a head's first launch, ``<prefix>_head<h>_<i>.png`` for
    its i-th (a grid over some rows after the original-order launch, a grid after its band, the
    check's launch over rows that missed), each with that launch's query blocks as rows; replaces
    the pictures an earlier call wrote under ``prefix``; returns paths."""
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):
        if name.startswith(f"{prefix}_head") and name.endswith(".png"):
            os.remove(os.path.join(out_dir, name))
    paths, launches = [], {}
    for head_ids, index in indexes:
        for local, head in enumerate(head_ids):
            if index is None:
                continue  # dense heads: every causal block
            launches[head] = launches.get(head, 0) + 1
            later = f"_{launches[head]}" if launches[head] > 1 else ""
            path = os.path.join(out_dir, f"{prefix}_head{head:02d}{later}.png")
            with open(path, "wb") as f:
                f.write(png_bytes(block_map(index, n_k, local)))
            paths.append(path)
    return paths
